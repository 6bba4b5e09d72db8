import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import type { SessionOptions, Simulator } from '../../src/sim/simulator.ts';
import { fakeUpstream, SERVER_HELLO, sendJson, sendSpeechReply } from '../support/fake-upstream.ts';
import {
  closedPort,
  hasMetric,
  httpGet,
  isError,
  isState,
  metricSum,
  metricValue,
  poll,
  Resources,
  sync,
  type TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { RawClient } from '../support/raw-client.ts';

const speech = loadSpeech();
/** Eight packets a sentence: a whole reply is 24 frames. */
const shortSpeech: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 8) })) };
const SHORT_FRAMES = 24;

const res = new Resources();
const raws: RawClient[] = [];
afterEach(async () => {
  for (const raw of raws.splice(0)) raw.destroy();
  await res.dispose();
});

async function scrape(port: number): Promise<string> {
  const { status, body } = await httpGet(port, '/metrics');
  expect(status).toBe(200);
  return body;
}

describe('metrics and HTTP routes', () => {
  it('counts one whole reply to one client, and the session when it ends', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const client = await res.client(gw.url);
    await client.hello();
    await client.textReply('Count this');
    const n = sim.replyFrames();
    const during = await scrape(gw.port);

    expect(client.received.binary).toHaveLength(n);
    expect(metricValue(during, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(n);
    expect(metricValue(during, 'voicegw_upstream_frames_total')).toBe(n);
    expect(metricValue(during, 'voicegw_frame_latency_seconds_count')).toBe(n);
    expect(metricValue(during, 'voicegw_sessions_active')).toBe(1);
    expect(metricValue(during, 'voicegw_client_messages_total', 'type="text"')).toBe(1);
    expect(metricValue(during, 'voicegw_client_messages_total', 'type="hello"')).toBe(1);
    expect(metricValue(during, 'voicegw_time_to_first_audio_seconds_count')).toBe(1);
    expect(metricValue(during, 'voicegw_upstream_connect_seconds_count')).toBe(1);
    expect(metricValue(during, 'voicegw_decode_errors_total')).toBe(0);
    // Absent or zero: no frame failed to go out.
    expect(metricSum(during, 'voicegw_send_failures_total')).toBe(0);
    expect(metricSum(during, 'voicegw_frames_dropped_total')).toBe(0);

    client.close();
    await client.closed;
    const after = await poll(
      () => scrape(gw.port),
      (text) => metricValue(text, 'voicegw_sessions_active') === 0,
    );
    expect(metricValue(after, 'voicegw_sessions_active')).toBe(0);
    expect(metricValue(after, 'voicegw_sessions_total', 'outcome="normal"')).toBe(1);
    expect(metricSum(after, 'voicegw_sessions_total')).toBe(1);
    expect(metricValue(after, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(n);
  });

  it('counts frames under the negotiated codec and transport', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const [json, opus] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await json.hello({ downlink: { transport: 'json' } });
    await opus.hello({ downlink: { codec: 'opus' } });
    await Promise.all([json.textReply('a'), opus.textReply('b')]);
    const text = await scrape(gw.port);

    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="json"')).toBe(sim.replyFrames());
    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="opus",transport="binary"')).toBe(sim.replyFrames());
    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(0);
    expect(metricValue(text, 'voicegw_upstream_frames_total')).toBe(2 * sim.replyFrames());
  });

  it('counts one not_json bad message after one non-JSON text frame', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    client.send('{definitely not json');
    await client.next(isError('bad_message'));
    const text = await scrape(gw.port);

    expect(metricValue(text, 'voicegw_bad_messages_total', 'reason="not_json"')).toBe(1);
    expect(metricSum(text, 'voicegw_bad_messages_total')).toBe(1);
  });

  it('serves the Prometheus text format with the process metrics', async () => {
    const gw = await res.gateway();
    const response = await fetch(`http://127.0.0.1:${gw.port}/metrics`);
    const text = await response.text();

    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(hasMetric(text, 'voicegw_process_cpu_user_seconds_total')).toBe(true);
    expect(hasMetric(text, 'voicegw_process_resident_memory_bytes')).toBe(true);
    expect(hasMetric(text, 'voicegw_nodejs_eventloop_lag_seconds')).toBe(true);
    expect(text).toContain('# TYPE voicegw_frame_latency_seconds histogram');
    // Never a per-session label.
    expect(text).not.toMatch(/session_?id=/i);
  });

  it('answers /healthz with 200 "ok", /readyz with 200 and an unknown path with 404', async () => {
    const gw = await res.gateway();

    expect(await httpGet(gw.port, '/healthz')).toEqual({ status: 200, body: 'ok' });
    expect((await httpGet(gw.port, '/readyz')).status).toBe(200);
    expect((await httpGet(gw.port, '/no/such/path')).status).toBe(404);
    expect((await httpGet(gw.port, '/v1/voice')).status).not.toBe(200);
  });
});

/** The gateway's own registry, read as a scrape would; it answers after the gateway has stopped too. */
function metricsWhen(gw: TestGateway, test: (text: string) => boolean = () => true): Promise<string> {
  return poll(() => gw.scrape(), test, 3000);
}

const ended = (text: string) => metricValue(text, 'voicegw_sessions_active') === 0;
const replies = (text: string, outcome: string) => metricValue(text, 'voicegw_replies_total', `outcome="${outcome}"`);
const closes = (text: string, code: string) => metricValue(text, 'voicegw_client_closes_total', `code="${code}"`);
const reconnects = (text: string, outcome: string) => metricValue(text, 'voicegw_upstream_reconnects_total', `outcome="${outcome}"`);

/** Every sample line of one metric (no histogram suffixes): its series. */
function series(text: string, name: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

/**
 * A voice service that answers the first text with a reply it holds mid-way (tts start, a sentence
 * start and `held` packets, then nothing) for as long as a test needs, and answers an abort with the
 * reply's tts stop, as xiaozhi servers do. Every later text gets the whole short reply at once.
 */
async function holdingUpstream(held = 3): Promise<{ url: string; received: Record<string, unknown>[] }> {
  const received: Record<string, unknown>[] = [];
  let texts = 0;
  const url = await fakeUpstream(res, (ws: WebSocket, m) => {
    received.push(m);
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'abort') sendJson(ws, { type: 'tts', state: 'stop' });
    else if (m.type === 'listen' && m.state === 'detect') {
      if (texts++ > 0) return sendSpeechReply(ws, shortSpeech, m.text);
      const first = shortSpeech.sentences[0]!;
      sendJson(ws, { type: 'stt', text: m.text });
      sendJson(ws, { type: 'tts', state: 'start' });
      sendJson(ws, { type: 'tts', state: 'sentence_start', text: first.text });
      for (const packet of first.packets.slice(0, held)) ws.send(packet);
    }
  });
  return { url, received };
}

/** Asks for the held reply and resolves once its audio has arrived: the reply is under way. */
async function heldReplyUnderWay(client: TestClient, held = 3): Promise<void> {
  client.send({ type: 'text', text: 'Tell me a story' });
  await client.until((r) => r.binary.length >= held);
}

describe('replies by outcome', () => {
  it('counts each reply that plays to its tts stop as complete, with one duration each', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const client = await res.client(gw.url);
    await client.hello();
    await client.textReply('One');
    const one = await metricsWhen(gw);

    expect(replies(one, 'complete')).toBe(1);
    expect(metricSum(one, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(one, 'voicegw_reply_duration_seconds_count')).toBe(1);
    expect(metricValue(one, 'voicegw_reply_duration_seconds_sum')).toBeGreaterThan(0);
    expect(metricValue(one, 'voicegw_reply_duration_seconds_sum')).toBeLessThan(5);

    await client.textReply('Two');
    const two = await metricsWhen(gw);
    expect(replies(two, 'complete')).toBe(2);
    expect(metricSum(two, 'voicegw_replies_total')).toBe(2);
    expect(metricValue(two, 'voicegw_reply_duration_seconds_count')).toBe(2);
  });

  it('counts a reply the client aborts mid-reply as aborted, and its tts stop does not count it again', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    const at = client.received.json.length;
    client.send({ type: 'abort' });
    await client.next(isState('ready'), at);
    const aborted = await metricsWhen(gw);

    expect(replies(aborted, 'aborted')).toBe(1);
    expect(metricSum(aborted, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(aborted, 'voicegw_reply_duration_seconds_count')).toBe(1);

    // The next reply comes after the aborted one's tts stop on the one upstream socket.
    await client.textReply('Again');
    const after = await metricsWhen(gw);
    expect(replies(after, 'aborted')).toBe(1);
    expect(replies(after, 'complete')).toBe(1);
    expect(metricSum(after, 'voicegw_replies_total')).toBe(2);
    expect(metricValue(after, 'voicegw_reply_duration_seconds_count')).toBe(2);
  });

  it('measures a reply from its tts start to its end', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    const askedAt = performance.now();
    await heldReplyUnderWay(client);
    // The reply has started (its audio is here): let it run a measurable while before it ends.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const at = client.received.json.length;
    client.send({ type: 'abort' });
    await client.next(isState('ready'), at);
    const elapsed = (performance.now() - askedAt) / 1000;
    const text = await metricsWhen(gw);

    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(1);
    // From before its first audio arrived to after the abort left: at least the 300 ms between (a timer may fire 1 ms early).
    expect(metricValue(text, 'voicegw_reply_duration_seconds_sum')).toBeGreaterThanOrEqual(0.299);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_sum')).toBeLessThanOrEqual(elapsed);
  });

  it('counts a reply cut by text typed over it as aborted, and the reply to that text as complete', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    await client.textReply('Over it');
    const text = await metricsWhen(gw);

    expect(up.received.map((m) => m.type)).toEqual(['hello', 'listen', 'abort', 'listen']);
    expect(replies(text, 'aborted')).toBe(1);
    expect(replies(text, 'complete')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(2);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(2);
  });

  it('counts a reply cut by listen start (barge-in) as aborted', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    const at = client.received.json.length;
    client.send({ type: 'listen', state: 'start', mode: 'manual' });
    await client.next(isState('listening'), at);
    await sync(client, 'listening');
    const text = await metricsWhen(gw);

    expect(replies(text, 'aborted')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(1);
  });

  it('counts a reply the upstream drops mid-reply as upstream_lost, and the reconnect that then fails as failed', async () => {
    const sim = await res.simulator({ fault: { kind: 'close', afterFrames: 5 } });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_ATTEMPTS: '0' });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'text', text: 'Talk to me' });
    expect((await client.closed).code).toBe(4002);
    const text = await metricsWhen(gw, ended);

    expect(client.received.binary).toHaveLength(5);
    expect(replies(text, 'upstream_lost')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(1);
    expect(reconnects(text, 'failed')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_reconnects_total')).toBe(1);
    expect(closes(text, '4002')).toBe(1);
  });

  it('counts a reply still under way when the client closes as client_gone', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    client.close();
    await client.closed;
    const text = await metricsWhen(gw, ended);

    expect(replies(text, 'client_gone')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(1);
    expect(closes(text, '1000')).toBe(1);
  });

  it('counts a reply still under way when the gateway stops as shutdown', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    await gw.stop();
    expect((await client.closed).code).toBe(1001);
    const text = await metricsWhen(gw, ended);

    expect(replies(text, 'shutdown')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(1);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(1);
    expect(closes(text, '1001')).toBe(1);
  });

  it('counts a reply cut at the drain deadline as shutdown', async () => {
    const up = await holdingUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: up.url, DRAIN_DEADLINE_MS: '100' });
    const client = await res.client(gw.url);
    await client.hello();
    await heldReplyUnderWay(client);
    await gw.drain();
    expect((await client.closed).code).toBe(1001);
    const text = await metricsWhen(gw, ended);

    expect(replies(text, 'shutdown')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(1);
    expect(closes(text, '1001')).toBe(1);
  });

  it('counts no reply for a session that ends without one', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'mcp', payload: { tool: 'none' } });
    await sync(client, 'done');
    client.close();
    await client.closed;
    const text = await metricsWhen(gw, ended);

    expect(metricSum(text, 'voicegw_replies_total')).toBe(0);
    expect(metricValue(text, 'voicegw_reply_duration_seconds_count')).toBe(0);
  });
});

describe('upstream reconnects', () => {
  it('counts each episode that ends with the upstream back as recovered; a loss between replies cuts no reply', async () => {
    const fault = { kind: 'close', afterFrames: 5 } as const;
    const sim: Simulator = await res.simulator({
      sessionOptions: (s): SessionOptions => (sim.connectionsOf(s.headers['device-id'] ?? '') === 0 ? { fault } : {}),
    });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_BASE_MS: '10' });
    const client = await res.client(gw.url);
    await client.hello();
    const first = client.received.json.length;
    client.send({ type: 'text', text: 'Cut me off' });
    await client.next(isState('reconnecting'), first);
    await client.next(isState('ready'), client.received.json.findIndex(isState('reconnecting')));
    await client.textReply('Back again');
    const second = client.received.json.length;
    sim.sessions[1]!.close();
    await client.next(isState('reconnecting'), second);
    await client.next(isState('ready'), second + 2);
    const text = await metricsWhen(gw);

    expect(sim.sessions).toHaveLength(3);
    expect(reconnects(text, 'recovered')).toBe(2);
    expect(reconnects(text, 'failed')).toBe(0);
    expect(metricSum(text, 'voicegw_upstream_reconnects_total')).toBe(2);
    expect(replies(text, 'upstream_lost')).toBe(1);
    expect(replies(text, 'complete')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(2);
  });

  it('counts one failed episode however many attempts it took', async () => {
    const sim: Simulator = await res.simulator({
      sessionOptions: (s): SessionOptions => (sim.connectionsOf(s.headers['device-id'] ?? '') === 0 ? {} : { answerHello: false }),
    });
    const gw = await res.gateway({
      UPSTREAM_URL: sim.url,
      UPSTREAM_RECONNECT_ATTEMPTS: '3',
      UPSTREAM_RECONNECT_BASE_MS: '10',
      UPSTREAM_HELLO_TIMEOUT_MS: '100',
    });
    const client = await res.client(gw.url);
    await client.hello();
    sim.sessions[0]!.close();
    expect((await client.closed).code).toBe(4002);
    const text = await metricsWhen(gw, ended);

    expect(sim.sessions).toHaveLength(4);
    expect(reconnects(text, 'failed')).toBe(1);
    expect(reconnects(text, 'recovered')).toBe(0);
    expect(metricSum(text, 'voicegw_upstream_reconnects_total')).toBe(1);
    expect(metricSum(text, 'voicegw_replies_total')).toBe(0);
    expect(closes(text, '4002')).toBe(1);
  });

  it('counts an episode the client ends before reconnecting does as abandoned, once', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_BASE_MS: '60000', UPSTREAM_RECONNECT_MAX_MS: '60000' });
    const client = await res.client(gw.url);
    await client.hello();
    const at = client.received.json.length;
    sim.sessions[0]!.close();
    await client.next(isState('reconnecting'), at);
    client.close();
    await client.closed;
    const text = await metricsWhen(gw, ended);

    expect(reconnects(text, 'abandoned')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_reconnects_total')).toBe(1);
  });
});

const playout = (bufferedMs: unknown, underruns: unknown, playedMs: unknown) => ({ type: 'playout', bufferedMs, underruns, playedMs });
const underruns = (text: string) => metricValue(text, 'voicegw_client_underruns_total');
const played = (text: string) => metricValue(text, 'voicegw_client_played_seconds_total');
const buffered = (text: string) => metricValue(text, 'voicegw_client_buffer_seconds_count');

describe('playout reports', () => {
  it('counts two playout reports as the deltas of their counters and two observations of the buffer', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    client.send(playout(120, 1, 500));
    await sync(client, 'first');
    const first = await metricsWhen(gw);
    client.send(playout(60, 3, 1250));
    await sync(client, 'second');
    const second = await metricsWhen(gw);

    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(underruns(first)).toBe(1);
    expect(played(first)).toBe(0.5);
    expect(buffered(first)).toBe(1);
    expect(underruns(second)).toBe(3);
    expect(played(second)).toBe(1.25);
    expect(buffered(second)).toBe(2);
    expect(metricValue(second, 'voicegw_client_buffer_seconds_sum')).toBeCloseTo(0.18, 9);
    expect(metricValue(second, 'voicegw_client_buffer_seconds_bucket', 'le="0.04"')).toBe(0);
    expect(metricValue(second, 'voicegw_client_buffer_seconds_bucket', 'le="0.06"')).toBe(1);
    expect(metricValue(second, 'voicegw_client_buffer_seconds_bucket', 'le="0.1"')).toBe(1);
    expect(metricValue(second, 'voicegw_client_buffer_seconds_bucket', 'le="0.12"')).toBe(2);
    expect(metricValue(second, 'voicegw_client_messages_total', 'type="playout"')).toBe(2);
    expect(metricSum(second, 'voicegw_bad_messages_total')).toBe(0);
  });

  it('answers a report whose counters go backwards or whose values are negative, non-finite, fractional or missing with bad_message, and counts nothing of it', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    client.send(playout(100, 2, 1000));
    const bad: unknown[] = [
      playout(50, 1, 1500), // underruns went back
      playout(50, 5, 999), // playedMs went back (underruns 5 must not stick)
      playout(-1, 2, 1000),
      playout(0, -1, 1000),
      playout(0, 2, -1),
      playout(0, 2.5, 1000),
      '{"type":"playout","bufferedMs":1e999,"underruns":2,"playedMs":1000}',
      '{"type":"playout","bufferedMs":0,"underruns":1e999,"playedMs":1000}',
      '{"type":"playout","bufferedMs":0,"underruns":2,"playedMs":1e999}',
      playout('5', 2, 1000),
      playout(0, null, 1000),
      { type: 'playout', bufferedMs: 0, underruns: 2 },
    ];
    const at = client.received.json.length;
    for (const report of bad) client.send(report);
    await sync(client, 'after the bad ones');
    const text = await metricsWhen(gw);

    const answers = client.received.json.slice(at);
    expect(answers.map((m) => (m.type === 'error' ? m.code : m.type))).toEqual([...bad.map(() => 'bad_message'), 'pong']);
    expect(metricValue(text, 'voicegw_bad_messages_total', 'reason="bad_field"')).toBe(bad.length);
    expect(metricSum(text, 'voicegw_bad_messages_total')).toBe(bad.length);
    expect(underruns(text)).toBe(2);
    expect(played(text)).toBe(1);
    expect(buffered(text)).toBe(1);
    expect(metricValue(text, 'voicegw_client_buffer_seconds_sum')).toBe(0.1);

    // Measured from the last report counted: 4 underruns is forward of 2, whatever the rejected ones said.
    client.send(playout(0, 4, 1000));
    await sync(client, 'after the good one');
    const good = await metricsWhen(gw);
    expect(client.received.json.slice(at).filter((m) => m.type === 'error')).toHaveLength(bad.length);
    expect(underruns(good)).toBe(4);
    expect(played(good)).toBe(1);
    expect(buffered(good)).toBe(2);
  });

  it("answers a report that claims more than the session's own clock allows with bad_message, and counts nothing of it", async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    const at = client.received.json.length;
    // A minute of audio played, or a million underruns, in a session a moment old.
    client.send(playout(0, 0, 60_000));
    client.send(playout(0, 1_000_000, 0));
    await sync(client, 'after the claims');
    const text = await metricsWhen(gw);

    expect(client.received.json.slice(at).map((m) => (m.type === 'error' ? m.message : m.type))).toEqual([
      'playout: playedMs is more audio than the session has lasted',
      'playout: more underruns than the session has had frames',
      'pong',
    ]);
    expect(underruns(text)).toBe(0);
    expect(played(text)).toBe(0);
    expect(buffered(text)).toBe(0);
  });

  it('never relays a playout report upstream', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const client = await res.client(gw.url);
    await client.hello();
    client.send(playout(80, 0, 0));
    client.send(playout(40, 1, 600));
    client.send({ type: 'mcp', payload: { after: 'the reports' } });
    const upstream = sim.sessions[0]!.received.json;
    await poll(
      async () => upstream,
      (json) => json.some((m) => m.type === 'mcp'),
    );
    await client.textReply('And during a reply');
    client.send(playout(200, 1, 1200));
    client.send({ type: 'mcp', payload: { after: 'the last report' } });
    await poll(
      async () => upstream,
      (json) => json.filter((m) => m.type === 'mcp').length === 2,
    );

    expect(upstream.filter((m) => m.type === 'mcp')).toHaveLength(2);
    expect(upstream.filter((m) => m.type === 'playout')).toEqual([]);
    expect(JSON.stringify(upstream)).not.toContain('bufferedMs');
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
  });

  it("answers a playout report before the client's hello with hello_required and counts nothing", async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    client.send(playout(100, 1, 500));
    const answer = await client.next((m) => m.type === 'error');
    const text = await metricsWhen(gw);

    expect(answer.code).toBe('hello_required');
    expect(underruns(text)).toBe(0);
    expect(played(text)).toBe(0);
    expect(buffered(text)).toBe(0);
    await client.hello();
  });

  it("answers a playout report between the client's hello and the gateway's with hello_required and counts nothing (docs/protocol.md)", async () => {
    let answer: (() => void) | undefined;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') answer = () => sendJson(ws, SERVER_HELLO);
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    client.send({ type: 'hello' });
    await poll(
      async () => answer,
      (a) => a !== undefined,
    );
    client.send(playout(100, 1, 500));
    await sync(client, 'before the gateway hello');
    const text = await metricsWhen(gw);

    expect(client.received.json.map((m) => (m.type === 'error' ? m.code : m.type))).toEqual(['hello_required', 'pong']);
    expect(underruns(text)).toBe(0);
    expect(played(text)).toBe(0);
    expect(buffered(text)).toBe(0);
    answer!();
    await client.next((m) => m.type === 'hello');
  });

  it('counts a playout report sent while the upstream is being reconnected', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_RECONNECT_BASE_MS: '60000', UPSTREAM_RECONNECT_MAX_MS: '60000' });
    const client = await res.client(gw.url);
    await client.hello();
    const at = client.received.json.length;
    sim.sessions[0]!.close();
    await client.next(isState('reconnecting'), at);
    client.send(playout(0, 7, 900));
    await sync(client, 'reconnecting');
    const text = await metricsWhen(gw);

    expect(client.received.json.slice(at).map((m) => (m.type === 'error' ? m.code : m.type === 'state' ? m.state : m.type))).toEqual([
      'upstream_lost',
      'reconnecting',
      'pong',
    ]);
    expect(underruns(text)).toBe(7);
    expect(played(text)).toBe(0.9);
    expect(buffered(text)).toBe(1);
  });
});

describe('close codes', () => {
  it.each([
    ['1000', 'a close with 1000', (c: TestClient) => c.ws.close(1000)],
    ['1006', 'a cut connection', (c: TestClient) => c.ws.terminate()],
    ['other', 'a close with 1003', (c: TestClient) => c.ws.close(1003)],
    ['other', 'a close with 4000', (c: TestClient) => c.ws.close(4000)],
    ['other', 'a close with 4999', (c: TestClient) => c.ws.close(4999)],
  ] as const)('counts a session the client ends under code="%s" (%s)', async (label, _how, end) => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    end(client);
    await client.closed;
    const text = await metricsWhen(gw, ended);

    expect(closes(text, label)).toBe(1);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(1);
    expect(text).not.toMatch(/code="(1003|4000|4999)"/);
  });

  it('counts a frame over MAX_FRAME_BYTES under 1009', async () => {
    const gw = await res.gateway({ MAX_FRAME_BYTES: '2048' });
    const client = await res.client(gw.url);
    await client.hello();
    client.ws.send(Buffer.alloc(4096));
    expect((await client.closed).code).toBe(1009);
    const text = await metricsWhen(gw, ended);

    expect(closes(text, '1009')).toBe(1);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(1);
  });

  it('counts no hello in time under 4001', async () => {
    const gw = await res.gateway({ HELLO_TIMEOUT_MS: '100' });
    const client = await res.client(gw.url);
    expect((await client.closed).code).toBe(4001);
    const text = await metricsWhen(gw, ended);

    expect(closes(text, '4001')).toBe(1);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(1);
  });

  it('counts an unreachable upstream under 4002', async () => {
    const port = await closedPort();
    const gw = await res.gateway({ UPSTREAM_URL: `ws://127.0.0.1:${port}/xiaozhi/v1/` });
    const client = await res.client(gw.url);
    client.send({ type: 'hello' });
    expect((await client.closed).code).toBe(4002);
    const text = await metricsWhen(gw, ended);

    expect(closes(text, '4002')).toBe(1);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(1);
  });

  it('counts a session refused at capacity under 1013, once, beside the admitted one', async () => {
    // One thread: with WORKERS=2 each worker admits its share, ceil(1 / 2) = 1, so two sessions fit.
    const gw = await res.gateway({ MAX_SESSIONS: '1', WORKERS: '1' });
    const admitted = await res.client(gw.url);
    await admitted.hello();
    const refused = await res.client(gw.url);
    expect((await refused.closed).code).toBe(1013);
    const during = await metricsWhen(gw);
    admitted.close();
    await admitted.closed;
    const after = await metricsWhen(gw, ended);

    expect(closes(during, '1013')).toBe(1);
    expect(metricSum(during, 'voicegw_client_closes_total')).toBe(1);
    expect(metricValue(during, 'voicegw_sessions_total', 'outcome="refused"')).toBe(1);
    expect(closes(after, '1013')).toBe(1);
    expect(closes(after, '1000')).toBe(1);
    expect(metricSum(after, 'voicegw_client_closes_total')).toBe(2);
  });

  it('counts the sessions a stopping gateway ends under 1001', async () => {
    const gw = await res.gateway();
    const [a, b] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await Promise.all([a.hello(), b.hello()]);
    await gw.stop();
    expect((await a.closed).code).toBe(1001);
    expect((await b.closed).code).toBe(1001);
    const text = await metricsWhen(gw, ended);

    expect(closes(text, '1001')).toBe(2);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(2);
  });

  it('counts a client that stops reading, closed by the gateway, under 4003', async () => {
    const gw = await res.gateway({ SESSION_BUFFER_BYTES: String(16 * 1024), SOCKET_HIGH_WATER_BYTES: '16384' });
    const deaf = await RawClient.connect(gw.port);
    raws.push(deaf);
    deaf.send({ type: 'hello' });
    await deaf.until((r) => r.json.some(isState('ready')));
    deaf.pause();
    const ping = { type: 'ping', id: 'y'.repeat(250) };
    let text = await metricsWhen(gw);
    // The kernel's socket buffers take the first megabytes of pongs; the session's budget comes after.
    for (let batch = 1; batch <= 100 && !ended(text); batch++) {
      for (let i = 0; i < 1000; i++) deaf.send(ping);
      text = await metricsWhen(gw, (t) => metricValue(t, 'voicegw_client_messages_total', 'type="ping"') === batch * 1000 || ended(t));
    }
    deaf.resume();
    await deaf.ended;

    expect(deaf.received.close?.code).toBe(4003);
    expect(closes(text, '4003')).toBe(1);
    expect(metricSum(text, 'voicegw_client_closes_total')).toBe(1);
  });
});

describe('build, configuration and capacity', () => {
  const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

  it('states the running version and Node.js as voicegw_build_info 1', async () => {
    const gw = await res.gateway();
    const text = await scrape(gw.port);

    expect(series(text, 'voicegw_build_info')).toEqual([`voicegw_build_info{version="${version}",node="${process.version}"} 1`]);
  });

  it('states the limits in force as voicegw_config_info 1 and MAX_SESSIONS as voicegw_sessions_max', async () => {
    const gw = await res.gateway({ MAX_SESSIONS: '7', SLOW_CLIENT_POLICY: 'close', QUEUE_LIMIT_MS: '1500', SESSION_BUFFER_BYTES: '65536' });
    const text = await scrape(gw.port);

    expect(series(text, 'voicegw_config_info')).toEqual([
      'voicegw_config_info{max_sessions="7",slow_client_policy="close",queue_limit_ms="1500",session_buffer_bytes="65536"} 1',
    ]);
    expect(series(text, 'voicegw_sessions_max')).toEqual(['voicegw_sessions_max 7']);
  });

  it('states the default limits when none are configured', async () => {
    const gw = await res.gateway();
    const text = await scrape(gw.port);

    expect(series(text, 'voicegw_config_info')).toEqual([
      'voicegw_config_info{max_sessions="1000",slow_client_policy="drop-oldest",queue_limit_ms="5000",session_buffer_bytes="262144"} 1',
    ]);
    expect(series(text, 'voicegw_sessions_max')).toEqual(['voicegw_sessions_max 1000']);
  });
});

describe('bounded label values', () => {
  it('keeps 10,000 distinct unknown client message types in the one bad_messages{reason="unknown_type"} series', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    const before = await metricsWhen(gw);
    for (let i = 0; i < 10_000; i++) client.send({ type: `zz-client-${i}` });
    await sync(client, 'after the unknown types');
    const text = await metricsWhen(gw);

    expect(client.received.json.filter(isError('bad_message'))).toHaveLength(10_000);
    expect(series(text, 'voicegw_bad_messages_total')).toEqual(['voicegw_bad_messages_total{reason="unknown_type"} 10000']);
    expect(series(text, 'voicegw_client_messages_total')).toHaveLength(series(before, 'voicegw_client_messages_total').length + 1); // ping
    expect(text).not.toContain('zz-client-');
  });

  it('keeps 10,000 distinct unknown upstream message types in the one upstream_unknown_messages{type="unknown"} series', async () => {
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type !== 'hello') return;
      sendJson(ws, SERVER_HELLO);
      for (let i = 0; i < 10_000; i++) sendJson(ws, { type: `zz-upstream-${i}` });
      for (let i = 0; i < 1000; i++) sendJson(ws, { type: 'tts', state: `zz-state-${i}` });
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    const text = await metricsWhen(gw, (t) => metricValue(t, 'voicegw_upstream_unknown_messages_total', 'type="unknown"') >= 11_000);

    expect(series(text, 'voicegw_upstream_unknown_messages_total')).toEqual(['voicegw_upstream_unknown_messages_total{type="unknown"} 11000']);
    expect(text).not.toContain('zz-');
    await sync(client, 'still open');
  });
});
