import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import {
  closedPort,
  expectedReplyShape,
  httpGet,
  isError,
  isState,
  metricSum,
  metricValue,
  Resources,
  shapeOf,
  type TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';

const speech = loadSpeech();
const shortSpeech: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 8) })) };

const res = new Resources();
afterEach(() => res.dispose());



/** Sends hello and waits for the session to end; returns the close, the time it took and what came before it. */
async function helloUntilClosed(client: TestClient) {
  const started = performance.now();
  client.send({ type: 'hello' });
  const closed = await client.closed;
  return { ...closed, elapsedMs: performance.now() - started, json: client.received.json };
}

async function sessionOutcomes(gw: TestGateway, outcome: string): Promise<number> {
  return metricValue(await gw.scrape(), 'voicegw_sessions_total', `outcome="${outcome}"`);
}

describe('upstream failures', () => {
  it('sends upstream_unavailable and closes with 4002 when the upstream never answers the hello', async () => {
    const sim = await res.simulator({ answerHello: false });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_HELLO_TIMEOUT_MS: '300' });
    const client = await res.client(gw.url);
    const { code, elapsedMs, json } = await helloUntilClosed(client);

    expect(code).toBe(4002);
    expect(json).toEqual([{ type: 'error', code: 'upstream_unavailable', message: expect.any(String) }]);
    expect(elapsedMs).toBeGreaterThanOrEqual(250);
    expect(elapsedMs).toBeLessThan(3000);
    expect(sim.sessions).toHaveLength(1);
    expect(await sessionOutcomes(gw, 'upstream_unavailable')).toBe(1);
  });

  it('sends upstream_unavailable and closes with 4002 when the upstream refuses the connection', async () => {
    const port = await closedPort();
    const gw = await res.gateway({ UPSTREAM_URL: `ws://127.0.0.1:${port}/xiaozhi/v1/`, UPSTREAM_HELLO_TIMEOUT_MS: '5000' });
    const client = await res.client(gw.url);
    const { code, elapsedMs, json } = await helloUntilClosed(client);

    expect(code).toBe(4002);
    expect(json).toEqual([{ type: 'error', code: 'upstream_unavailable', message: expect.any(String) }]);
    // A refusal is known at once: the session does not wait for the hello timeout.
    expect(elapsedMs).toBeLessThan(3000);
  });

  it('sends upstream_unavailable and closes with 4002 when the upstream answers the upgrade with 404', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: `ws://127.0.0.1:${sim.port}/elsewhere/`, UPSTREAM_HELLO_TIMEOUT_MS: '5000' });
    const client = await res.client(gw.url);
    const { code, json } = await helloUntilClosed(client);

    expect(code).toBe(4002);
    expect(json).toEqual([{ type: 'error', code: 'upstream_unavailable', message: expect.any(String) }]);
  });

  it('sends upstream_unavailable and closes with 4002 when the upstream hello is not a websocket hello', async () => {
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') sendJson(ws, { ...SERVER_HELLO, transport: 'udp' });
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    const { code, json } = await helloUntilClosed(client);

    expect(code).toBe(4002);
    expect(json).toEqual([{ type: 'error', code: 'upstream_unavailable', message: expect.any(String) }]);
  });

  it('sends upstream_lost, then upstream_unavailable and close 4002, when the upstream closes an open session and reconnecting is off', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const client = await res.client(gw.url);
    await client.hello();
    const after = client.received.json.length;
    sim.sessions[0]!.close();
    const { code } = await client.closed;

    expect(code).toBe(4002);
    expect(client.received.json.slice(after)).toEqual([
      { type: 'error', code: 'upstream_lost', message: expect.any(String) },
      { type: 'state', state: 'reconnecting' },
      { type: 'error', code: 'upstream_unavailable', message: expect.any(String) },
    ]);
    expect(sim.sessions).toHaveLength(1);
    expect(await sessionOutcomes(gw, 'upstream_lost')).toBe(1);
  });

  it('sends upstream_lost after the audio already received when the upstream closes mid-reply', async () => {
    const sim = await res.simulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'text', text: 'Talk to me' });
    await client.until((r) => r.binary.length > 0);
    sim.sessions[0]!.close(1001);
    const { code } = await client.closed;

    expect(code).toBe(4002);
    const order = client.received.order;
    const lostAt = order.findIndex((m) => m !== 'audio' && m.type === 'error');
    expect(order[lostAt]).toEqual({ type: 'error', code: 'upstream_lost', message: expect.any(String) });
    expect(order.slice(lostAt).map(shapeOf)).toEqual(['error', 'state reconnecting', 'error']);
    expect(client.received.binary.length).toBeLessThan(sim.replyFrames());
  });

  it('reconnects after the upstream closes a session: upstream_lost, state reconnecting, state ready, under the same Device-Id', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_BASE_MS: '10' });
    const client = await res.client(gw.url);
    await client.hello();
    const after = client.received.json.length;
    sim.sessions[0]!.close();
    await client.next(isState('ready'), after);
    const reply = await client.textReply('Back again?');

    expect(client.received.json.slice(after, after + 3)).toEqual([
      { type: 'error', code: 'upstream_lost', message: expect.any(String) },
      { type: 'state', state: 'reconnecting' },
      { type: 'state', state: 'ready' },
    ]);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(sim.replyFrames());
    expect(sim.sessions).toHaveLength(2);
    expect(sim.sessions[1]!.headers['device-id']).toBe(sim.sessions[0]!.headers['device-id']);
    expect(client.received.json.filter((m) => m.type === 'hello')).toHaveLength(1);
  });

  it('gives up with upstream_unavailable and close 4002 when the upstream does not come back', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '2', UPSTREAM_RECONNECT_BASE_MS: '10' });
    const client = await res.client(gw.url);
    await client.hello();
    const after = client.received.json.length;
    await sim.close();
    const { code } = await client.closed;

    expect(code).toBe(4002);
    expect(client.received.json.slice(after)).toEqual([
      { type: 'error', code: 'upstream_lost', message: expect.any(String) },
      { type: 'state', state: 'reconnecting' },
      { type: 'error', code: 'upstream_unavailable', message: expect.any(String) },
    ]);
    expect(metricSum(await gw.scrape(), 'voicegw_upstream_errors_total')).toBe(3);
  });

  it('survives upstream garbage and still delivers a later valid reply from the same upstream', async () => {
    const sentence = speech.sentences[0]!;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') {
        sendJson(ws, SERVER_HELLO);
        ws.send('this is not JSON {');
        ws.send('[1,2,3]');
        ws.send('{"no":"type"}');
        sendJson(ws, { type: 'iot', commands: [{ name: 'lamp' }] });
        sendJson(ws, { type: 'system', command: 'reboot' });
        sendJson(ws, { type: 'alert', status: 'x', message: 'y' });
        sendJson(ws, { type: 'something_new', data: 1 });
        sendJson(ws, { type: 'stt', text: 42 });
        sendJson(ws, { type: 'tts', state: 'dance' });
      } else if (m.type === 'listen' && m.state === 'detect') {
        sendJson(ws, { type: 'stt', text: m.text, session_id: 'up-1' });
        sendJson(ws, { type: 'llm', text: '😊', emotion: 'happy', session_id: 'up-1' });
        sendJson(ws, { type: 'tts', state: 'start', session_id: 'up-1' });
        sendJson(ws, { type: 'tts', state: 'sentence_start', text: sentence.text, session_id: 'up-1' });
        for (const p of sentence.packets) ws.send(p);
        sendJson(ws, { type: 'tts', state: 'stop', session_id: 'up-1' });
      }
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    // The garbage came right after the upstream hello; a ping answered now was queued after all of it.
    client.send({ type: 'ping', id: 'sync' });
    await client.next((m) => m.type === 'pong');
    const reply = await client.textReply('Are you there?');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape([sentence]));
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(client.received.binary).toHaveLength(sentence.packets.length);
    expect(client.errors).toEqual([]);
    const metrics = await gw.scrape();
    // Not JSON, not an object, no type, and an stt without a string text; the unknown tts state is counted as unknown.
    expect(metricValue(metrics, 'voicegw_bad_messages_total', 'reason="upstream_invalid"')).toBe(4);
    expect(metricValue(metrics, 'voicegw_upstream_unknown_messages_total', 'type="iot"')).toBe(1);
    expect(metricValue(metrics, 'voicegw_upstream_unknown_messages_total', 'type="system"')).toBe(1);
    expect(metricValue(metrics, 'voicegw_upstream_unknown_messages_total', 'type="alert"')).toBe(1);
    expect(metricValue(metrics, 'voicegw_upstream_unknown_messages_total', 'type="unknown"')).toBe(2);
    expect((await httpGet(gw.port, '/healthz')).status).toBe(200);
  });

  it('survives an empty v1 binary message from the upstream and still delivers a later valid reply', async () => {
    const sentence = speech.sentences[0]!;
    let replies = 0;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
      else if (m.type === 'listen' && m.state === 'detect') {
        sendJson(ws, { type: 'stt', text: m.text });
        sendJson(ws, { type: 'tts', state: 'start' });
        sendJson(ws, { type: 'tts', state: 'sentence_start', text: sentence.text });
        // The first reply carries an empty binary message in the middle of its audio.
        const packets = replies++ === 0 ? [...sentence.packets.slice(0, 4), Buffer.alloc(0), ...sentence.packets.slice(4)] : sentence.packets;
        for (const p of packets) ws.send(p);
        sendJson(ws, { type: 'tts', state: 'stop' });
      }
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    const first = await client.textReply('one');
    const second = await client.textReply('two');

    expect(first.filter((m) => m !== 'audio').map(shapeOf)).toEqual(['state processing', 'user_text', 'state speaking', 'assistant_text', 'state ready']);
    // One frame per upstream message, the empty one a 60 ms concealment frame like the rest.
    expect(first.filter((m) => m === 'audio')).toHaveLength(sentence.packets.length + 1);
    expect(client.received.binary.slice(0, sentence.packets.length + 1).map((f) => f.length)).toEqual(Array(sentence.packets.length + 1).fill(2880));
    const metrics = (await httpGet(gw.port, '/metrics')).body;
    expect(metricValue(metrics, 'voicegw_concealed_frames_total')).toBe(1);
    expect(second.map(shapeOf)).toEqual(['state processing', 'user_text', 'state speaking', 'assistant_text', ...sentence.packets.map(() => 'audio'), 'state ready']);
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(client.errors).toEqual([]);
    expect((await httpGet(gw.port, '/healthz')).status).toBe(200);
  });

  it('keeps other sessions going when one session loses its upstream', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const [lost, kept] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await lost.hello();
    await kept.hello();
    sim.sessions[0]!.close();
    expect((await lost.closed).code).toBe(4002);
    const reply = await kept.textReply('Still here?');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(kept.received.json.some(isError('upstream_lost'))).toBe(false);
  });
});

describe('what clients are told of upstream failures', () => {
  /** Every word of the gateway's own a client saw: error messages and the close reason. */
  async function toldAfterHello(client: TestClient): Promise<string[]> {
    client.send({ type: 'hello' });
    const { reason } = await client.closed;
    return [...client.received.json.filter((m) => m.type === 'error').map((m) => String(m.message)), reason];
  }

  function expectNothingInternal(told: string[], ...secrets: string[]): void {
    const all = told.join('\n');
    expect(all).not.toMatch(/\d+\.\d+\.\d+\.\d+|localhost|:\d{2,5}\b|ws:\/\/|unexpected server response/i);
    expect(all).not.toMatch(/E[A-Z]{4,}/);
    for (const secret of secrets) expect(all).not.toContain(secret);
  }

  it('names neither the address nor the port of an upstream that refuses the connection', async () => {
    const port = await closedPort();
    const gw = await res.gateway({ UPSTREAM_URL: `ws://127.0.0.1:${port}/xiaozhi/v1/` });
    const told = await toldAfterHello(await res.client(gw.url));

    expect(told[0]).toBe('the voice service could not be reached');
    expectNothingInternal(told, String(port));
  });

  it('does not pass on the HTTP status or the words of an upstream that refuses the upgrade', async () => {
    const server = createServer((_req, response) => response.writeHead(401, { 'Content-Type': 'text/plain' }).end('token sk-live-0123 is revoked'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    res.add(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as AddressInfo).port;
    const gw = await res.gateway({ UPSTREAM_URL: `ws://127.0.0.1:${port}/xiaozhi/v1/` });
    const told = await toldAfterHello(await res.client(gw.url));

    expect(told[0]).toBe('the voice service could not be reached');
    expectNothingInternal(told, '401', 'sk-live-0123', String(port));
  });

  it("does not echo an upstream's first message when it is not a hello", async () => {
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') sendJson(ws, { type: 'welcome', secret: 'internal-build-7f3a on 10.1.2.3' });
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const told = await toldAfterHello(await res.client(gw.url));

    expect(told[0]).toBe('the voice service answered with something that is not a xiaozhi hello');
    expectNothingInternal(told, 'internal-build-7f3a', 'welcome');
  });

  it("does not pass on an upstream's close reason when it closes an open session", async () => {
    let upstream: WebSocket | undefined;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type !== 'hello') return;
      upstream = ws;
      sendJson(ws, SERVER_HELLO);
    });
    const gw = await res.gateway({ UPSTREAM_URL: url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const client = await res.client(gw.url);
    await client.hello();
    upstream!.close(4000, 'shard db-7 at 10.9.8.7 overloaded');
    const { reason } = await client.closed;
    const told = [...client.received.json.filter((m) => m.type === 'error').map((m) => String(m.message)), reason];

    expect(told).toEqual(['the voice service closed the connection: reconnecting', 'the voice service did not come back after 0 attempts', 'upstream lost']);
    expectNothingInternal(told, 'db-7', 'overloaded');
  });
});
