// The one `session ended` log line each session writes (pino, info, from the session's child logger):
// what operators read of a session after the fact. A real gateway logs into an array here.
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { loadSpeech } from '../../src/sim/speech.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';
import { gatewayForTest, isState, metricValue, poll, Resources, sync, type TestClient, type TestGateway } from '../support/gateway.ts';

const speech = loadSpeech();

const res = new Resources();
afterEach(() => res.dispose());

type LogLine = Record<string, any>;

/** A real gateway, as gatewayForTest starts one, whose logger writes every line, parsed, into `lines`. */
async function loggedGateway(env: Record<string, string> = {}): Promise<{ gw: TestGateway; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const gw = await gatewayForTest(env, logger);
  res.add(() => gw.stop());
  return { gw, lines };
}

const sessionEnds = (lines: LogLine[]) => lines.filter((l) => l.msg === 'session ended');

/** Waits (bounded) for `n` session ended lines and returns them. */
async function ends(lines: LogLine[], n = 1): Promise<LogLine[]> {
  await poll(
    async () => sessionEnds(lines).length,
    (count) => count >= n,
    3000,
  );
  return sessionEnds(lines);
}

/**
 * A voice service that answers a text with a reply it holds mid-way (tts start, a sentence start and
 * `held` packets, no tts stop), and answers an abort with the reply's tts stop.
 */
async function holdingUpstream(held: number): Promise<string> {
  return fakeUpstream(res, (ws: WebSocket, m) => {
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'abort') sendJson(ws, { type: 'tts', state: 'stop' });
    else if (m.type === 'listen' && m.state === 'detect') {
      const first = speech.sentences[0]!;
      sendJson(ws, { type: 'stt', text: m.text });
      sendJson(ws, { type: 'tts', state: 'start' });
      sendJson(ws, { type: 'tts', state: 'sentence_start', text: first.text });
      for (const packet of first.packets.slice(0, held)) ws.send(packet);
    }
  });
}

async function heldReplyUnderWay(client: TestClient, frames: number): Promise<void> {
  client.send({ type: 'text', text: 'Tell me a story' });
  await client.until((r) => r.binary.length >= frames);
}

describe('the session ended log line', () => {
  it("is written once, at info, from the session's own logger, with its outcome, close code, duration, replies, frames and playout counters", async () => {
    const sim = await res.simulator();
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: sim.url });
    const startedAt = performance.now();
    const client = await res.client(gw.url);
    const hello = await client.hello();
    await client.textReply('Log this');
    client.send({ type: 'playout', bufferedMs: 50, underruns: 1, playedMs: 500 });
    client.send({ type: 'playout', bufferedMs: 30, underruns: 2, playedMs: 1500 });
    await sync(client, 'reported');
    client.close();
    await client.closed;
    const [line, ...more] = await ends(lines);
    const elapsedMs = performance.now() - startedAt;
    const metrics = await gw.scrape();

    expect(more).toEqual([]);
    expect(client.received.binary).toHaveLength(sim.replyFrames());
    expect(line).toMatchObject({
      level: 30,
      msg: 'session ended',
      sessionId: hello.sessionId,
      outcome: 'normal',
      code: 1000,
      replies: 1,
      frames: { pushed: sim.replyFrames(), dropped: 0, failed: 0 },
      underruns: 2,
      playedMs: 1500,
    });
    expect(Number.isInteger(line!.durationMs)).toBe(true);
    expect(line!.durationMs).toBeGreaterThan(0);
    expect(line!.durationMs).toBeLessThanOrEqual(Math.ceil(elapsedMs));
    expect(line!.frames.pushed).toBe(metricValue(metrics, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"'));
  });

  it('counts an aborted reply as pushed what the client received and dropped the rest of what the upstream sent', async () => {
    const held = 20;
    const url = await holdingUpstream(held);
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    // Paced at the audio clock: most of the reply is still held by the gateway when the abort comes.
    await client.hello({ pacing: { mode: 'realtime', prebufferMs: 0 } });
    await heldReplyUnderWay(client, 1);
    const at = client.received.json.length;
    client.send({ type: 'abort' });
    await client.next(isState('ready'), at);
    await poll(
      () => gw.scrape(),
      (t) => metricValue(t, 'voicegw_upstream_frames_total') === held,
    );
    client.close();
    await client.closed;
    const [line, ...more] = await ends(lines);
    const metrics = await gw.scrape();

    expect(more).toEqual([]);
    const received = client.received.binary.length;
    expect(received).toBeLessThan(held);
    expect(line).toMatchObject({ outcome: 'normal', code: 1000, replies: 1, frames: { pushed: received, dropped: held - received, failed: 0 } });
    expect(line!.frames.dropped).toBe(metricValue(metrics, 'voicegw_frames_dropped_total', 'reason="aborted"'));
  });

  it('counts the audio a paced session still held when its client left as dropped', async () => {
    const held = 20;
    const url = await holdingUpstream(held);
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello({ pacing: { mode: 'realtime', prebufferMs: 0 } });
    await heldReplyUnderWay(client, 1);
    await poll(
      () => gw.scrape(),
      (t) => metricValue(t, 'voicegw_upstream_frames_total') === held,
    );
    client.close();
    await client.closed;
    const [line, ...more] = await ends(lines);
    const metrics = await gw.scrape();

    expect(more).toEqual([]);
    expect(line).toMatchObject({ outcome: 'normal', code: 1000, replies: 1, frames: { pushed: client.received.binary.length } });
    expect(line!.frames.pushed + line!.frames.dropped + line!.frames.failed).toBe(held);
    expect(line!.frames.dropped).toBeGreaterThan(0);
    expect(line!.frames.dropped).toBe(metricValue(metrics, 'voicegw_frames_dropped_total', 'reason="client_gone"'));
  });

  it('names a session ended by losing its upstream upstream_lost, with 4002 and the reply it cut', async () => {
    const sim = await res.simulator({ fault: { kind: 'close', afterFrames: 5 } });
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const client = await res.client(gw.url);
    const hello = await client.hello();
    client.send({ type: 'text', text: 'Talk to me' });
    expect((await client.closed).code).toBe(4002);
    const [line, ...more] = await ends(lines);

    expect(more).toEqual([]);
    expect(client.received.binary).toHaveLength(5);
    expect(line).toMatchObject({
      sessionId: hello.sessionId,
      outcome: 'upstream_lost',
      code: 4002,
      replies: 1,
      frames: { pushed: 5, dropped: 0, failed: 0 },
      underruns: 0,
      playedMs: 0,
    });
  });

  it('names a client that vanishes mid-reply client_gone, with 1006 and the reply it cut', async () => {
    const url = await holdingUpstream(3);
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client, 3);
    client.ws.terminate();
    await client.closed;
    const [line, ...more] = await ends(lines);

    expect(more).toEqual([]);
    expect(line).toMatchObject({ outcome: 'client_gone', code: 1006, replies: 1, frames: { pushed: 3, dropped: 0, failed: 0 } });
  });

  it('names a session the stopping gateway cuts mid-reply shutdown, with 1001', async () => {
    const url = await holdingUpstream(3);
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client, 3);
    await gw.stop();
    expect((await client.closed).code).toBe(1001);
    const [line, ...more] = await ends(lines);

    expect(more).toEqual([]);
    expect(line).toMatchObject({ outcome: 'shutdown', code: 1001, replies: 1, frames: { pushed: 3, dropped: 0, failed: 0 } });
  });

  it('names a session that never said hello hello_timeout, with 4001, no replies and no frames', async () => {
    const { gw, lines } = await loggedGateway({ HELLO_TIMEOUT_MS: '100' });
    const client = await res.client(gw.url);
    expect((await client.closed).code).toBe(4001);
    const [line, ...more] = await ends(lines);

    expect(more).toEqual([]);
    expect(line).toMatchObject({
      level: 30,
      sessionId: expect.any(String),
      outcome: 'hello_timeout',
      code: 4001,
      replies: 0,
      frames: { pushed: 0, dropped: 0, failed: 0 },
      underruns: 0,
      playedMs: 0,
    });
  });

  it('is written once per session, each under its own sessionId, and not again when the gateway stops', async () => {
    const sim = await res.simulator();
    const { gw, lines } = await loggedGateway({ UPSTREAM_URL: sim.url });
    const [a, b] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    const [helloA, helloB] = await Promise.all([a.hello(), b.hello()]);
    await Promise.all([a.textReply('First'), b.textReply('Second')]);
    await b.textReply('Third');
    a.close();
    b.close();
    await Promise.all([a.closed, b.closed]);
    const logged = await ends(lines, 2);
    await gw.stop();

    expect(sessionEnds(lines)).toHaveLength(2);
    const byId = new Map(logged.map((l) => [l.sessionId, l]));
    expect([...byId.keys()].sort()).toEqual([helloA.sessionId, helloB.sessionId].sort());
    expect(byId.get(helloA.sessionId)).toMatchObject({ replies: 1, frames: { pushed: a.received.binary.length } });
    expect(byId.get(helloB.sessionId)).toMatchObject({ replies: 2, frames: { pushed: b.received.binary.length } });
    expect(a.received.binary).toHaveLength(sim.replyFrames());
    expect(b.received.binary).toHaveLength(2 * sim.replyFrames());
  });
});
