// One test per fix of the review (the commit "Fix what review found"), each driven for real: a gateway
// on loopback, the simulator (or a tiny upstream of its own) behind it, real ws clients in front.
import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import type { SessionOptions, Simulator } from '../../src/sim/simulator.ts';
import {
  expectAccountingAfterEnd,
  expectedReplyShape,
  gatewayForTest,
  httpGet,
  isError,
  isState,
  metricValue,
  poll,
  Resources,
  shapeOf,
  sync,
  TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { RawClient } from '../support/raw-client.ts';
import { fakeUpstream, SERVER_HELLO, sendJson, sendSpeechReply } from '../support/fake-upstream.ts';

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
/** 60 ms of 24 kHz pcm16: what every frame of the reply decodes to. */
const FRAME_BYTES = 2880;
/** The gateway checks for stalls on its 1 s tick. */
const TICK_MS = 1000;
const REALTIME = { mode: 'realtime', prebufferMs: 0 };

const res = new Resources();
const raws: RawClient[] = [];
afterEach(async () => {
  for (const raw of raws.splice(0)) raw.destroy();
  await res.dispose();
});

const scrape = (gw: TestGateway) => gw.scrape();

/** Rejects naming `what` unless `promise` settles within `ms`: a broken fix fails here, not at the test timeout. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Index in `order`, from `from` on, of the first state message `state`, or -1. */
function stateIndex(order: TestClient['received']['order'], state: string, from: number): number {
  return order.findIndex((m, i) => i >= from && m !== 'audio' && m.type === 'state' && m.state === state);
}

const audioIn = (items: TestClient['received']['order']) => items.filter((m) => m === 'audio').length;

/** A burst simulator and a gateway on it; `env` on top of the defaults. */
async function burstGateway(env: Record<string, string> = {}) {
  const sim = await res.simulator();
  const gw = await res.gateway({ UPSTREAM_URL: sim.url, ...env });
  return { sim, gw };
}

/**
 * A xiaozhi upstream of its own that answers each `listen detect` with the whole speech reply at once,
 * with `extra` slipped in after the first `at` packets of the first sentence.
 */
function upstreamWith(extra: Buffer, at: number): Promise<string> {
  return fakeUpstream(res, (ws, m) => {
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'listen' && m.state === 'detect') sendSpeechReply(ws, speech, m.text, { extra, at });
  });
}

describe('the review fixes', () => {
  it('times a stalled upstream from the end of the user’s input, so that a client pinging through the stall still gets upstream_lost, reconnecting, ready and then a whole new reply', async () => {
    const STALL_TIMEOUT_MS = 1500;
    const AFTER_FRAMES = 10;
    const sim: Simulator = await res.simulator({
      sessionOptions: (s): SessionOptions => (sim.connectionsOf(s.headers['device-id'] ?? '') === 0 ? { fault: { kind: 'stall', afterFrames: AFTER_FRAMES } } : {}),
    });
    const gw = await res.gateway({ UPSTREAM_URL: sim.url, UPSTREAM_STALL_TIMEOUT_MS: String(STALL_TIMEOUT_MS), UPSTREAM_RECONNECT_BASE_MS: '20' });
    const client = await res.client(gw.url);
    await client.hello();

    const start = client.received.order.length;
    client.send({ type: 'text', text: 'Talk to me' });
    await within(5000, 'the frames before the stall', client.until((r) => r.binary.length === AFTER_FRAMES));
    const stalledAt = performance.now();
    // The client's own behaviour through the stall: a ping every 300 ms (not a wait for anything).
    let pings = 0;
    const pinger = setInterval(() => client.send({ type: 'ping', id: `stall-${++pings}` }), 300);
    try {
      const lost = await within(STALL_TIMEOUT_MS + TICK_MS + 3000, 'upstream_lost while the client pings', client.next(isError('upstream_lost')));
      const lostAt = performance.now();
      const after = client.received.json.indexOf(lost);
      await within(5000, 'state reconnecting', client.next(isState('reconnecting'), after));
      await within(5000, 'state ready after reconnecting', client.next(isState('ready'), after));
      clearInterval(pinger);
      await sync(client, 'after-recovery');

      // The client did talk through the stall, and the stall was timed from the end of its input all the same.
      const pongsDuringStall = client.received.json.slice(0, after).filter((m) => m.type === 'pong').length;
      expect(pongsDuringStall).toBeGreaterThanOrEqual(3);
      expect(lostAt - stalledAt).toBeGreaterThanOrEqual(STALL_TIMEOUT_MS - 50);
      expect(lostAt - stalledAt).toBeLessThan(STALL_TIMEOUT_MS + TICK_MS + 500);
      const shape = client.received.order.slice(start).map(shapeOf).filter((s) => s !== 'pong');
      expect(shape).toEqual([...expectedReplyShape(speech.sentences).slice(0, 5 + AFTER_FRAMES), 'error', 'state reconnecting', 'state ready']);
    } finally {
      clearInterval(pinger);
    }

    const reply = await within(10_000, 'the reply after recovery', client.textReply('Are you back?'));
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(AFTER_FRAMES + REPLY_FRAMES);
    expect(client.received.json.filter((m) => m.type === 'error').map((m) => m.code)).toEqual(['upstream_lost']);
    expect(sim.sessions).toHaveLength(2);
    expect(metricValue(await scrape(gw), 'voicegw_upstream_errors_total', 'kind="stall"')).toBe(1);
    await expectAccountingAfterEnd(gw, client);
  });

  it.each([
    ['listen start', { type: 'listen', state: 'start', mode: 'manual' }, 'listening'],
    ['text', { type: 'text', text: 'Something else' }, 'processing'],
    ['abort', { type: 'abort' }, 'ready'],
  ] as const)(
    'drops what a realtime-paced client has yet to hear of a reply the upstream has finished sending when the client sends %s',
    async (_what, interruption, expected) => {
      const { gw } = await burstGateway();
      const client = await res.client(gw.url);
      await client.hello({ pacing: REALTIME });
      client.send({ type: 'text', text: 'Tell me a story' });
      // Paced at 60 ms a frame, the tenth frame comes about half a second in: the burst upstream sent
      // the whole reply and its tts stop long before.
      await within(5000, 'the tenth frame', client.until((r) => r.binary.length >= 10));
      const start = client.received.order.length;
      const sentAt = performance.now();
      client.send(interruption);
      await within(5000, `state ${expected}`, client.until((r) => stateIndex(r.order, expected, start) >= 0));
      const arrivedAfterMs = performance.now() - sentAt;
      await sync(client, 'after');

      const order = client.received.order;
      const at = stateIndex(order, expected, start);
      // The state came at once, not behind the rest of the reply (another 106 frames, over 6 s).
      expect(arrivedAfterMs).toBeLessThan(1000);
      expect(audioIn(order.slice(0, at))).toBeLessThan(30);
      if (expected === 'processing') {
        // The new reply's audio may follow, but only after its own state speaking.
        const speaking = stateIndex(order, 'speaking', at);
        expect(audioIn(order.slice(at, speaking < 0 ? order.length : speaking))).toBe(0);
      } else {
        expect(audioIn(order.slice(at))).toBe(0);
      }
      const text = await scrape(gw);
      expect(metricValue(text, 'voicegw_frames_dropped_total', 'reason="aborted"')).toBeGreaterThan(0);
      await expectAccountingAfterEnd(gw, client);
    },
  );

  it('leaves nothing behind when a realtime-paced client goes mid-reply: the frames its pacer held are counted as client_gone the moment the session ends', async () => {
    const { gw } = await burstGateway();
    const client = await res.client(gw.url);
    await client.hello({ pacing: REALTIME });
    client.send({ type: 'text', text: 'Tell me a story' });
    await within(5000, 'the fifth frame', client.until((r) => r.binary.length >= 5));
    const text = await expectAccountingAfterEnd(gw, client);

    expect(client.received.binary.length).toBeLessThan(REPLY_FRAMES);
    expect(metricValue(text, 'voicegw_frames_dropped_total', 'reason="client_gone"')).toBeGreaterThan(0);
  });

  // Eleven gateways: with WORKERS=2 each starts two worker threads, a second or more apiece.
  it('stops a gateway that has drained without crashing the process, and stops one twice, while a fresh gateway answers /healthz', async () => {
    // A few times over: a listen socket closed twice is a use after free, which need not crash the first time.
    for (let round = 0; round < 5; round++) {
      const drained = await gatewayForTest();
      // A session that the drain ends (it is between replies): uWS has served a socket on this listener.
      const client = await TestClient.connect(drained.url);
      await client.hello();
      await drained.drain();
      expect((await within(5000, 'the drained session’s close', client.closed)).code).toBe(1001);
      // Fresh native allocations take over what the drain freed, so that a listen socket closed a second
      // time would touch memory no longer its own and crash now, not some time later.
      const churn = Array.from({ length: 1000 }, () => Buffer.alloc(1024));
      await drained.stop();
      expect(churn).toHaveLength(1000);
      await expect(httpGet(drained.port, '/healthz')).rejects.toThrow();
      const fresh = await res.gateway();
      expect(await httpGet(fresh.port, '/healthz')).toEqual({ status: 200, body: 'ok' });
    }
    const twice = await gatewayForTest();
    await twice.stop();
    await twice.stop();

    const fresh = await res.gateway();
    expect(await httpGet(fresh.port, '/healthz')).toEqual({ status: 200, body: 'ok' });
    // This process is the gateways' own: the test finishing at all is the proof that it still lives.
    const other = await res.client(fresh.url);
    await other.hello();
  }, 60_000);

  it('turns an upstream packet whose Opus header claims more than 120 ms into one concealment frame as long as the frame before it, counted as a decode error', async () => {
    const AT = 10;
    // CELT fullband 20 ms, code 3, 63 frames: 1260 ms, more than any Opus packet may hold.
    const lying = Buffer.from([(31 << 3) | 3, 63, 0, 0, 0]);
    const gw = await res.gateway({ UPSTREAM_URL: await upstreamWith(lying, AT) });
    const client = await res.client(gw.url);
    await client.hello();
    const reply = await within(10_000, 'the whole reply', client.textReply('Talk to me'));

    const shape = expectedReplyShape(speech.sentences);
    const at = 5 + AT; // the opening, the first sentence's text and the frames before the lying packet
    expect(reply.map(shapeOf)).toEqual([...shape.slice(0, at), 'audio', ...shape.slice(at)]);
    expect(client.received.binary).toHaveLength(REPLY_FRAMES + 1);
    expect(client.received.binary[AT]!.length).toBe(FRAME_BYTES);
    expect(client.received.binary.map((f) => f.length)).toEqual(Array(REPLY_FRAMES + 1).fill(FRAME_BYTES));
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    const text = await scrape(gw);
    expect(metricValue(text, 'voicegw_decode_errors_total')).toBe(1);
    expect(metricValue(text, 'voicegw_concealed_frames_total')).toBe(1);
    await expectAccountingAfterEnd(gw, client);
  });

  it('stays up and serves others when a client floods 20,000 binary frames before its hello without reading the answers', async () => {
    const FLOOD = 20_000;
    const { gw } = await burstGateway();
    const flooder = await RawClient.connect(gw.port);
    raws.push(flooder);
    flooder.pause();
    for (let i = 0; i < FLOOD; i++) flooder.sendBinary(Buffer.from([i & 0xff]));
    // Behind the flood, in order: once this is answered, every frame of the flood has been handled.
    flooder.send({ type: 'ping', id: 'after-flood' });
    await within(
      10_000,
      'the flood to be handled',
      poll(
        () => scrape(gw),
        (t) => metricValue(t, 'voicegw_client_messages_total', 'type="ping"') === 1,
        10_000,
      ),
    );

    expect(await httpGet(gw.port, '/healthz')).toEqual({ status: 200, body: 'ok' });
    const other = await res.client(gw.url);
    await other.hello();
    const reply = await within(10_000, 'the other client’s reply', other.textReply('Are you there?'));
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(other.received.json.filter((m) => m.type === 'error')).toEqual([]);

    // The flooder reads again: it was answered hello_required (as far as it had room for), and its session still starts.
    flooder.resume();
    flooder.send({ type: 'hello' });
    await within(10_000, 'the flooder’s session', flooder.until((r) => r.json.some(isState('ready'))));
    const errors = flooder.received.json.filter((m) => m.type === 'error');
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.length).toBeLessThanOrEqual(FLOOD + 1);
    expect(errors.every((m) => m.code === 'hello_required')).toBe(true);
    console.info(`flood of ${FLOOD} frames before hello: ${errors.length} hello_required answers reached the client`);
    expect(metricValue(await scrape(gw), 'voicegw_sessions_active')).toBe(2);
  });
});
