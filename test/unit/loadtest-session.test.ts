// The load tool against a tiny gateway on a loopback port that is full: the sessions it turns away are
// counted as refused (with how long they waited to be told), not as failures, and the report's other
// figures are the admitted sessions'.
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { meetsSlo } from '../../src/cli/loadtest/capacity.ts';
import { runLoad, type LoadOptions } from '../../src/cli/loadtest/run.ts';

/** 60 ms of pcm16 at 24 kHz. */
const FRAME = Buffer.alloc(2880);

const servers: WebSocketServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.clients.forEach((c) => c.terminate());
    await new Promise((resolve) => s.close(resolve));
  }
});

/** Answers hello, and each `text` with a reply of 3 frames: what a gateway does for a session it admits. */
function serve(ws: WebSocket): void {
  const send = (m: object) => ws.send(JSON.stringify(m));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const m = JSON.parse(data.toString()) as { type: string };
    if (m.type === 'hello') {
      send({ type: 'hello', version: 1, sessionId: 's', downlink: { codec: 'pcm16', sampleRate: 24000, transport: 'binary' } });
      send({ type: 'state', state: 'ready' });
    } else if (m.type === 'text') {
      send({ type: 'state', state: 'speaking' });
      for (let i = 0; i < 3; i++) ws.send(FRAME, { binary: true });
      send({ type: 'state', state: 'ready' });
    }
  });
}

/** A gateway that admits `admit` connections (the tool's preflight is the first) and refuses the rest the way `refuse` says. */
async function gateway(admit: number, refuse: 'close' | 'http'): Promise<string> {
  let connections = 0;
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    // The upgrade itself refused with 503, as a balancer or a gateway that refuses early would.
    verifyClient: (_info, done) => done(refuse === 'close' || connections++ < admit, 503),
  });
  servers.push(wss);
  wss.on('connection', (ws) => {
    if (refuse === 'http' || connections++ < admit) return serve(ws);
    // As voicegw at capacity: the reason, then 1013.
    ws.send(JSON.stringify({ type: 'error', code: 'overloaded', message: 'the gateway is at capacity: try again later' }));
    ws.close(1013, 'at capacity');
  });
  await new Promise((resolve) => wss.once('listening', resolve));
  return `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/v1/voice`;
}

const options = (url: string): LoadOptions => ({
  url,
  sessions: 5,
  replies: 1,
  rampS: 0,
  text: 'hi',
  wav: undefined,
  uplinkCodec: 'opus',
  codec: 'pcm16',
  rate: 24000,
  transport: 'binary',
  pacing: 'none',
  prebufferMs: 0,
  buffersMs: [120],
  bargeIn: 0,
  slow: 0,
  token: undefined,
  timeoutS: 10,
  seed: 1,
});

describe('A load run against a gateway at capacity', () => {
  it('counts the sessions refused with error overloaded and close 1013 as refused, with their time to refusal', async () => {
    const report = await runLoad(options(await gateway(3, 'close')));
    expect(report.sessions).toMatchObject({ ok: 2, failed: 0, refused: 3, byClose: { '1000': 2, '1013': 3 }, byError: { overloaded: 3 } });
    expect(report.refusalMs.count).toBe(3);
    expect(report.refusalMs.max).toBeGreaterThan(0);
    expect(report.refusalMs.max).toBeLessThan(1000);
    expect(report.replies).toEqual({ complete: 2, cut: 0, aborted: 0 });
    expect(report.frames.received).toBe(6);
    // meetsSlo judges the admitted sessions.
    expect(meetsSlo(report, { refusals: 'allowed' }).ok).toBe(true);
    expect(meetsSlo(report).why).toContain(`${report.sessions.refused} sessions refused`);
  });

  it('counts an upgrade refused with HTTP 503 as refused too', async () => {
    const report = await runLoad(options(await gateway(3, 'http')));
    expect(report.sessions).toMatchObject({ ok: 2, failed: 0, refused: 3 });
    expect(report.refusalMs.count).toBe(3);
  });
});
