import v8 from 'node:v8';
import vm from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import {
  expectAccountingAfterEnd,
  expectedReplyShape,
  httpGet,
  isError,
  isState,
  metricSum,
  metricValue,
  poll,
  Resources,
  shapeOf,
  type TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { RawClient } from '../support/raw-client.ts';
import { fakeUpstream, SERVER_HELLO, sendJson, sendSpeechReply } from '../support/fake-upstream.ts';

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
const FRAME_MS = speech.frameMs;
/**
 * The slow client asks for 48 kHz PCM as json: about 7.7 kB a frame, so that the few MB the kernel buffers
 * on loopback (the gateway's send buffer and the client's receive buffer) fill within a few replies.
 */
const HEAVY_HELLO = { type: 'hello', downlink: { sampleRate: 48000, transport: 'json' } };
/** Messages a slow client's reply can leave in the queue: 8 of the reply's own and one `too_slow`. */
const MESSAGES_PER_REPLY = 9;

const res = new Resources();
const raws: RawClient[] = [];
afterEach(async () => {
  for (const raw of raws.splice(0)) raw.destroy();
  await res.dispose();
});

async function rawClient(gw: TestGateway): Promise<RawClient> {
  const raw = await RawClient.connect(gw.port);
  raws.push(raw);
  return raw;
}

/** Records when each message arrives: times[i] is the arrival of client.received.order[i]. */
function timed(client: TestClient): number[] {
  const times: number[] = [];
  client.ws.on('message', () => times.push(performance.now()));
  return times;
}

const scrape = (gw: TestGateway) => gw.scrape();

/** Scrapes until `test` holds (at most `timeoutMs`), or fails naming what it waited for. */
async function waitForMetrics(gw: TestGateway, what: string, test: (text: string) => boolean, timeoutMs = 10_000): Promise<string> {
  const text = await poll(() => scrape(gw), test, timeoutMs);
  if (!test(text)) throw new Error(`gave up waiting for ${what}`);
  return text;
}

/** Audio frames the gateway has taken from the upstream so far. */
const upstreamFrames = (text: string) => metricValue(text, 'voicegw_upstream_frames_total');

/**
 * upstream = pushed + dropped + failed, each summed over its labels: every frame the upstream sent ended
 * in exactly one of them.
 */
function accounting(text: string) {
  return {
    upstream: upstreamFrames(text),
    pushed: metricSum(text, 'voicegw_frames_pushed_total'),
    dropped: metricSum(text, 'voicegw_frames_dropped_total'),
    failed: metricSum(text, 'voicegw_send_failures_total'),
  };
}

/**
 * Time from a reply's `state speaking` to its last audio frame at the client, for the reply that starts
 * at `start` in the client's `received.order`.
 */
function speakingToLastFrameMs(client: TestClient, times: number[], start: number): number {
  const order = client.received.order;
  const speaking = order.findIndex((m, i) => i >= start && m !== 'audio' && m.type === 'state' && m.state === 'speaking');
  let last = -1;
  for (let i = speaking; i < order.length; i++) if (order[i] === 'audio') last = i;
  return times[last]! - times[speaking]!;
}

async function timedReply(client: TestClient, times: number[], text: string) {
  const start = client.received.order.length;
  const reply = await client.textReply(text);
  return { shape: reply.map(shapeOf), latencyMs: speakingToLastFrameMs(client, times, start) };
}

const median = (xs: number[]) => quantile(xs, 0.5);
function quantile(xs: number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/**
 * A full garbage collection, so that RSS compares what is live rather than how much garbage happened to
 * be waiting: the flag can be turned on at run time, and a new context then sees `gc`.
 */
v8.setFlagsFromString('--expose-gc');
const collectGarbage = vm.runInNewContext('gc') as () => void;

/** The gateway's resident memory as /metrics reports it (the gateway runs in this process). */
async function rssBytes(gw: TestGateway): Promise<number> {
  collectGarbage();
  return metricValue((await httpGet(gw.port, '/metrics')).body, 'voicegw_process_resident_memory_bytes');
}

/**
 * A xiaozhi upstream that answers each `listen detect` with the whole speech reply at once, then an `iot`
 * message. The gateway counts the `iot` (voicegw_upstream_unknown_messages_total) once it has handled
 * everything before it, `tts stop` included: a test can know that a reply is over at the gateway without
 * reading from the client.
 */
function burstUpstream(): Promise<string> {
  return fakeUpstream(res, (ws, m) => {
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'listen' && m.state === 'detect') sendSpeechReply(ws, speech, m.text, { after: { type: 'iot', commands: [] } });
  });
}

const repliesOver = (text: string) => metricValue(text, 'voicegw_upstream_unknown_messages_total', 'type="iot"');

describe('flow control', () => {
  it('keeps a healthy client whole and on time beside a client that stops reading, drops only the slow client’s oldest audio, and accounts for every frame', async () => {
    // No delay before `tts stop`: a reply is over at the simulator once its frames are counted, so that
    // the slow client's next text does not land on its tail (which the simulator would take as an abort).
    const sim = await res.simulator({ stopDelayMs: 0 });
    const queueLimitMs = 600;
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, SOCKET_HIGH_WATER_BYTES: '16384', QUEUE_LIMIT_MS: String(queueLimitMs) });
    const healthy = await res.client(gw.url);
    const times = timed(healthy);
    await healthy.hello();

    // Baseline: the healthy client alone.
    const baseline: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { shape, latencyMs } = await timedReply(healthy, times, `alone ${i}`);
      expect(shape).toEqual(expectedReplyShape(speech.sentences));
      baseline.push(latencyMs);
    }
    const rssBefore = await rssBytes(gw);

    // The slow client: hello, then it stops reading and keeps asking for replies until its audio is dropped.
    const slow = await rawClient(gw);
    slow.send(HEAVY_HELLO);
    await slow.until((r) => r.json.some(isState('ready')));
    slow.pause();
    let slowReplies = 0;
    const depths: number[] = [];
    for (;;) {
      const before = upstreamFrames(await scrape(gw));
      slow.send({ type: 'text', text: `slow ${++slowReplies}` });
      const text = await waitForMetrics(gw, `slow reply ${slowReplies}`, (t) => upstreamFrames(t) >= before + REPLY_FRAMES);
      depths.push(metricValue(text, 'voicegw_queue_depth_frames'));
      if (metricValue(text, 'voicegw_frames_dropped_total', 'reason="too_slow"') > 0) break;
      expect(slowReplies, 'replies before the slow client’s queue overflowed').toBeLessThan(12);
    }

    // Beside it: the healthy client and the slow one ask at the same time, a few times over.
    const beside: number[] = [];
    for (let i = 0; i < 5; i++) {
      const before = upstreamFrames(await scrape(gw));
      slow.send({ type: 'text', text: `slow ${++slowReplies}` });
      const { shape, latencyMs } = await timedReply(healthy, times, `beside ${i}`);
      expect(shape).toEqual(expectedReplyShape(speech.sentences));
      beside.push(latencyMs);
      const text = await waitForMetrics(gw, `slow reply ${slowReplies}`, (t) => upstreamFrames(t) >= before + 2 * REPLY_FRAMES);
      depths.push(metricValue(text, 'voicegw_queue_depth_frames'));
    }
    const rssAfter = await rssBytes(gw);
    const during = await scrape(gw);

    expect(healthy.received.binary).toHaveLength(10 * REPLY_FRAMES);
    expect(healthy.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(median(beside)).toBeLessThan(median(baseline) + 200);
    expect(Math.max(...beside)).toBeLessThan(Math.max(...baseline) + 300);
    // The slow session's queue: at most queueLimitMs of audio, plus its messages, which are never dropped.
    for (const [i, depth] of depths.entries()) {
      expect(depth, `queue depth after slow reply ${i + 1}`).toBeLessThanOrEqual(queueLimitMs / FRAME_MS + MESSAGES_PER_REPLY * (i + 1));
    }
    expect(rssAfter - rssBefore).toBeLessThan(50 * 1024 * 1024);
    expect(metricValue(during, 'voicegw_frames_dropped_total', 'reason="too_slow"')).toBeGreaterThan(0);
    expect(metricValue(during, 'voicegw_backpressure_events_total')).toBeGreaterThanOrEqual(1);
    console.info(
      `slow client: baseline speaking→last frame ${baseline.map((x) => x.toFixed(1)).join(', ')} ms; beside ${beside.map((x) => x.toFixed(1)).join(', ')} ms; ` +
        `queue depths ${depths.join(', ')}; RSS ${(rssBefore / 2 ** 20).toFixed(1)} → ${(rssAfter / 2 ** 20).toFixed(1)} MiB; ` +
        `dropped too_slow ${metricValue(during, 'voicegw_frames_dropped_total', 'reason="too_slow"')} after ${slowReplies} slow replies`,
    );

    // The slow client reads again: it was told, once per reply that lost audio, and its messages all came.
    slow.send({ type: 'ping', id: 'last' });
    slow.resume();
    await slow.until((r) => r.json.some((m) => m.type === 'pong' && m.id === 'last'));
    const errors = slow.received.json.filter((m) => m.type === 'error');
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect(errors.every((m) => m.code === 'too_slow')).toBe(true);
    expect(errors.length).toBeLessThanOrEqual(slowReplies);
    expect(slow.received.json.filter((m) => m.type === 'assistant_text')).toHaveLength(3 * slowReplies);
    const seqs = slow.received.json.filter((m) => m.type === 'audio_frame').map((m) => m.seq as number);
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!)).toBe(true);
    expect(seqs.length).toBeLessThan(slowReplies * REPLY_FRAMES);

    // Every frame the upstream sent was pushed, dropped or failed, once every session is over.
    slow.sendClose(1000);
    await slow.ended;
    healthy.close();
    await healthy.closed;
    const after = await waitForMetrics(gw, 'every session to end', (t) => metricValue(t, 'voicegw_sessions_active') === 0);
    const a = accounting(after);
    expect(a.upstream).toBe((10 + slowReplies) * REPLY_FRAMES);
    expect(a.pushed + a.dropped + a.failed).toBe(a.upstream);
    expect(metricValue(after, 'voicegw_queue_depth_frames')).toBe(0);
  });

  it('closes a client that stops reading with 4003 under SLOW_CLIENT_POLICY=close, and serves the others', async () => {
    const sim = await res.simulator({ stopDelayMs: 0 });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, SOCKET_HIGH_WATER_BYTES: '16384', QUEUE_LIMIT_MS: '600', SLOW_CLIENT_POLICY: 'close' });
    const slow = await rawClient(gw);
    slow.send(HEAVY_HELLO);
    await slow.until((r) => r.json.some(isState('ready')));
    slow.pause();
    const tooSlow = (t: string) => metricValue(t, 'voicegw_sessions_total', 'outcome="too_slow"');
    for (let i = 1; ; i++) {
      const before = upstreamFrames(await scrape(gw));
      slow.send({ type: 'text', text: `slow ${i}` });
      const text = await waitForMetrics(gw, `slow reply ${i} or the close`, (t) => tooSlow(t) === 1 || upstreamFrames(t) >= before + REPLY_FRAMES);
      if (tooSlow(text) === 1) break;
      expect(i, 'replies before the slow client was given up on').toBeLessThan(12);
    }
    const healthy = await res.client(gw.url);
    await healthy.hello();
    const reply = await healthy.textReply('Still serving?');
    slow.resume();
    await slow.until((r) => r.close !== undefined);
    await slow.ended;
    const text = await scrape(gw);

    expect(slow.received.close?.code).toBe(4003);
    expect(slow.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(tooSlow(text)).toBe(1);
    expect(metricValue(text, 'voicegw_frames_dropped_total', 'reason="too_slow"')).toBeGreaterThan(0);
    expect(metricValue(text, 'voicegw_sessions_active')).toBe(1);
  });

  it('releases a burst at the audio clock’s rate with realtime pacing, and at once without it', async () => {
    const cut: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 20) })) };
    const frames = 60;
    const sim = await res.simulator({ speech: cut });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const prebufferMs = 120;
    const [paced, unpaced] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    const pacedTimes = timed(paced);
    const unpacedTimes = timed(unpaced);
    await paced.hello({ pacing: { mode: 'realtime', prebufferMs } });
    await unpaced.hello({ pacing: { mode: 'none' } });

    const spanOf = (client: TestClient, times: number[]) => {
      const audioTimes = client.received.order.flatMap((m, i) => (m === 'audio' ? [times[i]!] : []));
      return { audioTimes, spanMs: audioTimes.at(-1)! - audioTimes[0]! };
    };
    const unpacedReply = await unpaced.textReply('All at once');
    const fast = spanOf(unpaced, unpacedTimes);
    const pacedReply = await paced.textReply('In real time');
    const slow = spanOf(paced, pacedTimes);
    const ready = pacedTimes[paced.received.order.length - 1]!;
    const intervals = slow.audioTimes.slice(1).map((t, i) => t - slow.audioTimes[i]!).slice(prebufferMs / FRAME_MS);
    console.info(
      `realtime pacing: ${frames} frames over ${slow.spanMs.toFixed(0)} ms (expected ${(frames - 1) * FRAME_MS}); intervals median ${median(intervals).toFixed(2)} ms, ` +
        `p10 ${quantile(intervals, 0.1).toFixed(2)}, p90 ${quantile(intervals, 0.9).toFixed(2)}, max ${Math.max(...intervals).toFixed(2)}; ` +
        `unpaced burst over ${fast.spanMs.toFixed(1)} ms`,
    );

    expect(pacedReply.map(shapeOf)).toEqual(expectedReplyShape(cut.sentences));
    expect(unpacedReply.map(shapeOf)).toEqual(expectedReplyShape(cut.sentences));
    expect(slow.audioTimes).toHaveLength(frames);
    expect(Math.abs(median(intervals) - FRAME_MS)).toBeLessThanOrEqual(5);
    expect(Math.abs(quantile(intervals, 0.9) - FRAME_MS)).toBeLessThanOrEqual(15);
    expect(Math.abs(quantile(intervals, 0.1) - FRAME_MS)).toBeLessThanOrEqual(15);
    expect(slow.spanMs).toBeGreaterThanOrEqual((frames - 1) * FRAME_MS - 20);
    expect(slow.spanMs).toBeLessThan((frames - 1) * FRAME_MS + 250);
    expect(fast.spanMs).toBeLessThan(slow.spanMs / 4);
    // state ready was held behind the last frame.
    expect(pacedReply.at(-1)).toEqual({ type: 'state', state: 'ready' });
    expect(ready).toBeGreaterThanOrEqual(slow.audioTimes.at(-1)!);
  });

  it('never drops a message: pongs, states and texts all arrive, in order, at a client that paused reading behind a one-frame queue', async () => {
    const url = await burstUpstream();
    const gw = await res.gateway({ UPSTREAM_URL: url, SOCKET_HIGH_WATER_BYTES: '1024', QUEUE_LIMIT_MS: '60' });
    const slow = await rawClient(gw);
    slow.send(HEAVY_HELLO);
    await slow.until((r) => r.json.some(isState('ready')));
    slow.pause();
    const rounds = 8;
    for (let k = 1; k <= rounds; k++) {
      slow.send({ type: 'ping', id: k });
      slow.send({ type: 'text', text: `turn ${k}` });
      await waitForMetrics(gw, `reply ${k} to end at the gateway`, (t) => repliesOver(t) >= k);
    }
    slow.send({ type: 'ping', id: 'last' });
    const queued = await waitForMetrics(gw, 'the last ping to be queued', (t) => metricValue(t, 'voicegw_client_messages_total', 'type="ping"') === rounds + 1);
    slow.resume();
    await slow.until((r) => r.json.some((m) => m.type === 'pong' && m.id === 'last'));
    const after = slow.received.json.findIndex(isState('ready'));
    const messages = slow.received.json.slice(after + 1).filter((m) => m.type !== 'audio_frame');
    const withoutErrors = messages.filter((m) => m.type !== 'error');

    // Messages waited in the sink's own queue (beyond one audio frame), not only in the kernel's buffers.
    expect(metricValue(queued, 'voicegw_queue_depth_frames')).toBeGreaterThan(MESSAGES_PER_REPLY);
    expect(metricValue(queued, 'voicegw_frames_dropped_total', 'reason="too_slow"')).toBeGreaterThan(0);
    expect(withoutErrors).toEqual([
      ...Array.from({ length: rounds }, (_, i) => [
        { type: 'pong', id: i + 1 },
        { type: 'state', state: 'processing' },
        { type: 'user_text', text: `turn ${i + 1}` },
        { type: 'emotion', emotion: 'happy', emoji: '😊' },
        { type: 'state', state: 'speaking' },
        ...speech.sentences.map((s) => ({ type: 'assistant_text', text: s.text })),
        { type: 'state', state: 'ready' },
      ]).flat(),
      { type: 'pong', id: 'last' },
    ]);
    // Each too_slow error lies within a reply (between speaking and ready), at most one per reply.
    let speaking = false;
    let errorsThisReply = 0;
    for (const m of messages) {
      if (m.type === 'state') {
        speaking = m.state === 'speaking';
        errorsThisReply = 0;
      } else if (m.type === 'error') {
        expect(m.code).toBe('too_slow');
        expect(speaking).toBe(true);
        expect(++errorsThisReply).toBe(1);
      }
    }
    expect(messages.some((m) => m.type === 'error')).toBe(true);
    const seqs = slow.received.json.filter((m) => m.type === 'audio_frame').map((m) => m.seq as number);
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!)).toBe(true);
    expect(seqs.at(-1)).toBe(rounds * REPLY_FRAMES - 1);
  });

  it('answers a ping through the same ordered queue as audio: the pong comes after every frame queued before it', async () => {
    const url = await burstUpstream();
    // The pacer may hold the whole 7 s reply, so that none of it is dropped as over the hold limit.
    const gw = await res.gateway({ UPSTREAM_URL: url, QUEUE_LIMIT_MS: '10000', SESSION_BUFFER_BYTES: String(1024 * 1024) });
    const client = await res.client(gw.url);
    // Realtime pacing holds the burst and releases it at the audio clock: a ping sent meanwhile waits its turn.
    await client.hello({ pacing: { mode: 'realtime', prebufferMs: 0 } });
    client.send({ type: 'text', text: 'Tell me everything.' });
    await waitForMetrics(gw, 'the whole reply to reach the gateway', (t) => repliesOver(t) >= 1);
    const framesBeforePing = client.received.binary.length;
    client.send({ type: 'ping', id: 'behind the reply' });
    await client.next((m) => m.type === 'pong');

    const order = client.received.order;
    const pongAt = order.findIndex((m) => m !== 'audio' && m.type === 'pong');
    expect(framesBeforePing).toBeLessThan(REPLY_FRAMES);
    expect(order.slice(0, pongAt).filter((m) => m === 'audio')).toHaveLength(REPLY_FRAMES);
    expect(order[pongAt - 1]).toEqual({ type: 'state', state: 'ready' });
  });

  it('closes a session that says nothing with 1000 "idle" after IDLE_TIMEOUT_MS, and keeps one that keeps talking', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, IDLE_TIMEOUT_MS: '1000' });
    const [silent, talker] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await Promise.all([silent.hello(), talker.hello()]);
    const readyAt = performance.now();

    // The talker pings until two of the gateway's once-a-second ticks have passed since the silent one went.
    let silentClosedAt = Number.POSITIVE_INFINITY;
    const silentClosed = silent.closed.then((close) => {
      silentClosedAt = performance.now();
      return close;
    });
    let pings = 0;
    while (performance.now() < Math.min(silentClosedAt, readyAt + 5000) + 2500) {
      const id = ++pings;
      talker.send({ type: 'ping', id });
      await talker.next((m) => m.type === 'pong' && m.id === id);
      // The talker's own rhythm (4 messages a second), not a wait for anything.
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const close = await silentClosed;
    const reply = await talker.textReply('Still here');

    expect(close).toEqual({ code: 1000, reason: 'idle' });
    expect(silentClosedAt - readyAt).toBeGreaterThanOrEqual(900);
    expect(silentClosedAt - readyAt).toBeLessThan(3500);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(talker.ws.readyState).toBe(talker.ws.OPEN);
    const text = await scrape(gw);
    expect(metricValue(text, 'voicegw_sessions_total', 'outcome="idle"')).toBe(1);
    expect(metricValue(text, 'voicegw_sessions_active')).toBe(1);
  });

  it('holds at most QUEUE_LIMIT_MS of a 5,000-packet burst for a realtime-paced client, drops and counts the oldest of the rest, and tells the client once', async () => {
    const packet = speech.sentences[0]!.packets[0]!;
    const burst = 5000;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
      if (m.type !== 'listen' || m.state !== 'detect') return;
      sendJson(ws, { type: 'tts', state: 'start' });
      for (let i = 0; i < burst; i++) ws.send(packet);
    });
    const gw = await res.gateway({ UPSTREAM_URL: url, QUEUE_LIMIT_MS: '5000' });
    const client = await res.client(gw.url);
    await client.hello({ pacing: { mode: 'realtime', prebufferMs: 0 } });
    client.send({ type: 'text', text: 'Say everything at once.' });
    const text = await waitForMetrics(gw, 'the burst to reach the gateway', (t) => upstreamFrames(t) === burst);

    // The pacer keeps the newest 4,980 ms (83 frames of 60 ms), and the too_slow notice that took the place
    // of the first frame it dropped until it leaves; the client has had what was due meanwhile.
    const pushed = metricSum(text, 'voicegw_frames_pushed_total');
    const dropped = metricValue(text, 'voicegw_frames_dropped_total', 'reason="too_slow"');
    expect(burst - pushed - dropped).toBeLessThanOrEqual(83);
    const notice = JSON.stringify({ type: 'error', code: 'too_slow', message: 'audio was dropped: more of this reply arrived than the session may hold back for pacing' });
    expect(metricValue(text, 'voicegw_session_buffer_bytes')).toBeLessThanOrEqual(83 * 24 * FRAME_MS * 2 + notice.length);
    expect(metricValue(text, 'voicegw_buffer_overflows_total', 'buffer="pacer"')).toBeGreaterThan(0);
    await client.next(isError('too_slow'));
    expect(client.received.json.filter(isError('too_slow'))).toHaveLength(1);
    await expectAccountingAfterEnd(gw, client);
  });
});
