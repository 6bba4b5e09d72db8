import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { connect } from 'node:net';
import { expectedReplyShape, httpGet, isError, isState, metricValue, poll, Resources, shapeOf, upgradeStatus } from '../support/gateway.ts';
import { RawClient } from '../support/raw-client.ts';

const speech = loadSpeech();

const res = new Resources();
afterEach(() => res.dispose());

/** Sends a raw HTTP request and resolves with all the server answered before it closed or went quiet. */
function rawRequest(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString('latin1');
      // A complete answer: the head, and the body its Content-Length announces.
      const end = answer.indexOf('\r\n\r\n');
      const length = Number(/content-length: (\d+)/i.exec(answer)?.[1] ?? -1);
      if (end >= 0 && length >= 0 && answer.length >= end + 4 + length) {
        socket.destroy();
        resolve(answer);
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(answer));
    socket.write(request);
  });
}

/** A gateway in front of its own fast simulator. */
async function gatewayWithSimulator(env: Record<string, string> = {}) {
  const sim = await res.simulator();
  const gw = await res.gateway({ UPSTREAM_URL: sim.url, ...env });
  return { sim, gw };
}

describe('bad client input', () => {
  it.each([
    ['text that is not JSON', 'hello there', 'not_json'],
    ['a JSON array', '[1,2,3]', 'not_json'],
    ['a message without a type', '{"text":"hi"}', 'no_type'],
    ['an unknown type', '{"type":"dance","style":"waltz"}', 'unknown_type'],
    ['a text whose text is a number', '{"type":"text","text":5}', 'bad_field'],
    ['a listen with an unknown state', '{"type":"listen","state":"sing"}', 'bad_field'],
    ['an mcp whose payload is a string', '{"type":"mcp","payload":"x"}', 'bad_field'],
    // Deep enough that echoing it back in a pong would throw in JSON.stringify, yet under the frame limit.
    ['a ping whose id is nested 6000 levels deep', `{"type":"ping","id":${'{"a":'.repeat(6000)}1${'}'.repeat(6000)}}`, 'bad_field'],
  ])('answers %s with bad_message and the session still replies to a text afterwards', async (_name, frame, reason) => {
    const { sim, gw } = await gatewayWithSimulator();
    const client = await res.client(gw.url);
    await client.hello();
    const after = client.received.json.length;
    client.send(frame);
    const error = await client.next(isError('bad_message'), after);
    const reply = await client.textReply('Still there?');

    expect(error).toEqual({ type: 'error', code: 'bad_message', message: expect.any(String) });
    expect(client.received.json.slice(after, after + 1)).toEqual([error]);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(sim.replyFrames());
    const metrics = await gw.scrape();
    expect(metrics).toContain(`voicegw_bad_messages_total{reason="${reason}"} 1`);
  });

  it('answers a text before hello with hello_required and still accepts the hello', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    client.send({ type: 'text', text: 'too early' });
    await client.next(isError('hello_required'));
    const hello = await client.hello();

    expect(hello.type).toBe('hello');
    expect(client.received.json.map((m) => m.type)).toEqual(['error', 'hello', 'state']);
  });

  it('answers a binary frame before hello with hello_required and still accepts the hello', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    client.ws.send(speech.sentences[0]!.packets[0]!);
    await client.next(isError('hello_required'));
    await client.hello();

    expect(client.received.json.map((m) => m.type)).toEqual(['error', 'hello', 'state']);
    // Nothing of the early audio went upstream.
    expect(gw.simulator!.sessions[0]!.received.audio).toEqual([]);
  });

  it.each([
    ['one byte past 4 x MAX_FRAME_BYTES', 262_145, 1],
    ['of 1 MiB', 1024 * 1024, 1],
    ['of 300 kB sent as three fragments', 300_000, 3],
    ['of 1 MiB sent as 16 fragments', 1024 * 1024, 16],
  ])('closes with 1009 and counts too_large for a frame %s', async (_name, bytes, parts) => {
    const gw = await res.gateway();
    const client = await RawClient.connect(gw.port);
    res.add(() => client.destroy());
    client.send({ type: 'hello' });
    await client.until((r) => r.json.some(isState('ready')));
    client.sendFragmented(Buffer.alloc(bytes, 7), parts);
    await client.until((r) => r.close !== undefined);

    expect(client.received.close).toEqual({ code: 1009, reason: `frame of ${bytes} bytes is over the 65536-byte limit` });
    const metrics = await poll(
      () => gw.scrape(),
      (t) => metricValue(t, 'voicegw_sessions_total', 'outcome="too_large"') === 1,
    );
    expect(metricValue(metrics, 'voicegw_bad_messages_total', 'reason="too_large"')).toBe(1);
    expect(metricValue(metrics, 'voicegw_sessions_total', 'outcome="too_large"')).toBe(1);
  });

  it('counts too_large for a frame past the ceiling of 16 x MAX_FRAME_BYTES, where uWS cuts the connection at its header without reading it', async () => {
    const gw = await res.gateway();
    const client = await RawClient.connect(gw.port);
    res.add(() => client.destroy());
    client.send({ type: 'hello' });
    await client.until((r) => r.json.some(isState('ready')));
    client.sendBinary(Buffer.alloc(16 * 65536 + 1));
    await client.ended;

    expect(client.received.close).toBeUndefined();
    const metrics = await poll(
      () => gw.scrape(),
      (t) => metricValue(t, 'voicegw_sessions_total', 'outcome="too_large"') === 1,
    );
    expect(metricValue(metrics, 'voicegw_bad_messages_total', 'reason="too_large"')).toBe(1);
    expect(metricValue(metrics, 'voicegw_sessions_total', 'outcome="too_large"')).toBe(1);
  });

  it.each([
    ['names version 8', 'Sec-WebSocket-Version: 8\r\n', 426],
    ['names no version', '', 426],
    ['has a malformed key', 'Sec-WebSocket-Version: 13\r\n', 400, 'abc'],
  ])('refuses an upgrade that %s, before any session exists', async (_name, versionLine, status, key = 'dGhlIHNhbXBsZSBub25jZQ==') => {
    const gw = await res.gateway();
    const answer = await rawRequest(
      gw.port,
      `GET /v1/voice HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n${versionLine}\r\n`,
    );

    expect(answer.split('\r\n')[0]).toBe(`HTTP/1.1 ${status} ${status === 426 ? 'Upgrade Required' : 'Bad Request'}`);
    if (status === 426) expect(answer).toContain('Sec-WebSocket-Version: 13');
    expect(metricValue(await gw.scrape(), 'voicegw_sessions_active')).toBe(0);
  });

  it('answers a plain GET of the voice endpoint with 426 and the WebSocket version it speaks', async () => {
    const gw = await res.gateway();
    const answer = await rawRequest(gw.port, 'GET /v1/voice HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');

    expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 426 Upgrade Required');
    expect(answer).toContain('Sec-WebSocket-Version: 13');
  });

  it('closes with 1009 on a frame over MAX_FRAME_BYTES', async () => {
    const gw = await res.gateway({ MAX_FRAME_BYTES: '2048' });
    const client = await res.client(gw.url);
    await client.hello();
    client.ws.send(Buffer.alloc(4096));

    expect((await client.closed).code).toBe(1009);
    const metrics = (await httpGet(gw.port, '/metrics')).body;
    expect(metricValue(metrics, 'voicegw_bad_messages_total', 'reason="too_large"')).toBe(1);
  });

  it('accepts a frame of exactly MAX_FRAME_BYTES', async () => {
    const gw = await res.gateway({ MAX_FRAME_BYTES: '2048' });
    const client = await res.client(gw.url);
    await client.hello();
    const data = 'x'.repeat(2048 - '{"type":"mcp","payload":{"data":""}}'.length);
    client.send({ type: 'mcp', payload: { data } });
    client.send({ type: 'ping', id: 'after' });
    await client.next((m) => m.type === 'pong');

    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(gw.simulator!.sessions[0]!.received.json.find((m) => m.type === 'mcp')).toMatchObject({ payload: { data } });
  });

  it('closes with 4001 when no hello comes within HELLO_TIMEOUT_MS', async () => {
    const gw = await res.gateway({ HELLO_TIMEOUT_MS: '300' });
    const client = await res.client(gw.url);
    const started = performance.now();
    const { code } = await client.closed;

    expect(code).toBe(4001);
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
    expect(performance.now() - started).toBeLessThan(3000);
    expect(gw.simulator!.sessions).toHaveLength(0);
  });

  it('answers a second hello with bad_message and keeps the session', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    const first = await client.hello();
    const after = client.received.json.length;
    client.send({ type: 'hello' });
    await client.next(isError('bad_message'), after);
    client.send({ type: 'ping', id: 1 });
    await client.next((m) => m.type === 'pong', after);

    expect(client.received.json.slice(after).map((m) => m.type)).toEqual(['error', 'pong']);
    expect(client.received.json.filter((m) => m.type === 'hello')).toEqual([first]);
    expect(gw.simulator!.sessions).toHaveLength(1);
  });

  it("does not disturb another session's reply with bad input", async () => {
    const { sim, gw } = await gatewayWithSimulator({ HELLO_TIMEOUT_MS: '300' });
    const [good, bad, silent] = await Promise.all([res.client(gw.url), res.client(gw.url), res.client(gw.url)]);
    await Promise.all([good.hello(), bad.hello()]);
    const replying = good.textReply('Hello');
    bad.send('{oops');
    bad.send({ type: 'nope' });
    bad.send({ type: 'text' });
    bad.send({ type: 'hello' });
    bad.send({ type: 'abort', extra: true });
    bad.ws.send(Buffer.from([0xff, 0x00])); // code 3 with no frames: not an Opus packet
    // A third client never says hello and is closed with 4001 while the reply is under way.
    const [reply, silentClosed] = await Promise.all([replying, silent.closed]);

    expect(silentClosed.code).toBe(4001);
    expect(bad.received.json.filter((m) => m.type === 'error').map((m) => m.code)).toEqual(['bad_message', 'bad_message', 'bad_message', 'bad_message', 'bad_audio']);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(good.received.binary).toHaveLength(sim.replyFrames());
    expect(good.received.json.filter((m) => m.type === 'error')).toEqual([]);
  });
});

describe('client authentication', () => {
  it('refuses an upgrade without a token with HTTP 401 when CLIENT_TOKENS is set', async () => {
    const gw = await res.gateway({ CLIENT_TOKENS: 'secret' });

    expect(await upgradeStatus(gw.url)).toBe(401);
    expect(await upgradeStatus(gw.url, { headers: { Authorization: 'Bearer wrong' } })).toBe(401);
    expect(await upgradeStatus(`${gw.url}?token=wrong`)).toBe(401);
    expect(metricValue(await gw.scrape(), 'voicegw_sessions_active')).toBe(0);
  });

  it('accepts a Bearer token in the Authorization header', async () => {
    const gw = await res.gateway({ CLIENT_TOKENS: 'secret' });
    const client = await res.client(gw.url, { headers: { Authorization: 'Bearer secret' } });

    expect((await client.hello()).type).toBe('hello');
  });

  it('accepts the token in the query string', async () => {
    const gw = await res.gateway({ CLIENT_TOKENS: 'other, secret' });
    const client = await res.client(`${gw.url}?token=secret`);

    expect((await client.hello()).type).toBe('hello');
  });
});

describe('capacity', () => {
  it('refuses a session beyond MAX_SESSIONS with overloaded and 1013, and is not ready until the first one closes', async () => {
    // One thread: with WORKERS=2 each worker admits its share, ceil(1 / 2) = 1, so two sessions fit.
    const gw = await res.gateway({ MAX_SESSIONS: '1', WORKERS: '1' });
    expect((await httpGet(gw.port, '/readyz')).status).toBe(200);
    const first = await res.client(gw.url);
    await first.hello();
    expect((await httpGet(gw.port, '/readyz')).status).toBe(503);

    const second = await res.client(gw.url);
    const { code } = await second.closed;
    expect(code).toBe(1013);
    expect(second.received.json).toEqual([{ type: 'error', code: 'overloaded', message: expect.any(String) }]);
    expect((await httpGet(gw.port, '/readyz')).status).toBe(503);

    first.close();
    await first.closed;
    const ready = await poll(() => httpGet(gw.port, '/readyz'), (r) => r.status === 200);
    expect(ready.status).toBe(200);

    const third = await res.client(gw.url);
    expect((await third.hello()).type).toBe('hello');
  });
});
