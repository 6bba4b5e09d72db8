// Every upstream fault, driven for real: the simulator fails a Device-Id's first connection (its
// per-session fault modes) and serves its reconnects healthily, so each test follows the whole path
// from the fault through the documented error and state sequence to a recovered session that speaks.
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import type { Fault, SessionOptions, Simulator } from '../../src/sim/simulator.ts';
import {
  decodeReference,
  expectAccountingAfterEnd,
  expectedReplyShape,
  isError,
  isState,
  metricSum,
  metricValue,
  poll,
  Resources,
  shapeOf,
  sync,
  type TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';

const speech = loadSpeech();
const res = new Resources();
afterEach(() => res.dispose());

/** Frames of the reply the fault strikes after: well inside the first sentence (46 frames). */
const AFTER_FRAMES = 10;
const STALL_TIMEOUT_MS = 1500;
const HELLO_TIMEOUT_MS = 300;
/** The gateway checks for stalls on its 1 s tick. */
const TICK_MS = 1000;

const env = (extra: Record<string, string> = {}): Record<string, string> => ({
  UPSTREAM_RECONNECT_BASE_MS: '20',
  UPSTREAM_STALL_TIMEOUT_MS: String(STALL_TIMEOUT_MS),
  UPSTREAM_MAX_MESSAGE_BYTES: '65536',
  UPSTREAM_HELLO_TIMEOUT_MS: String(HELLO_TIMEOUT_MS),
  ...extra,
});

/**
 * A simulator (burst pacing) whose sessions behave by how many connections their Device-Id opened
 * before them (0 for the first), a gateway on it, and a client whose session is ready.
 */
async function setup(byConnection: (n: number) => SessionOptions, extraEnv: Record<string, string> = {}) {
  const sim: Simulator = await res.simulator({ sessionOptions: (s) => byConnection(sim.connectionsOf(s.headers['device-id'] ?? '')) });
  const gw = await res.gateway(env({ UPSTREAM_URL: sim.url, ...extraEnv }));
  const client = await res.client(gw.url);
  await client.hello();
  return { sim, gw, client };
}

const firstOnly =
  (fault: Fault) =>
  (n: number): SessionOptions =>
    n === 0 ? { fault } : {};

/** What precedes the fault in the first reply: its opening, the first sentence's text and AFTER_FRAMES frames. */
const beforeFault = (frames = AFTER_FRAMES): string[] => expectedReplyShape(speech.sentences).slice(0, 5 + frames);

/** Frames by their digests: deep equality over hundreds of kilobytes of Buffers is slow, and its diff unreadable. */
const digests = (frames: readonly Buffer[]): string[] => frames.map((f) => createHash('sha1').update(f).digest('hex'));
const allPackets = speech.sentences.flatMap((s) => s.packets);

async function metrics(gw: TestGateway): Promise<string> {
  return gw.scrape();
}

const upstreamErrors = async (gw: TestGateway, kind: string) => metricValue(await metrics(gw), 'voicegw_upstream_errors_total', `kind="${kind}"`);

/**
 * The lost-and-recovered path shared by every fault that drops the upstream mid-reply: the first
 * reply stops after the frames that came, then upstream_lost, reconnecting, ready and nothing else;
 * a new text then gets a whole reply from the reconnected upstream under the same Device-Id.
 */
async function expectLostThenRecovered(sim: Simulator, client: TestClient): Promise<{ lostAt: number }> {
  const start = client.received.order.length;
  client.send({ type: 'text', text: 'Talk to me' });
  const lost = await client.next(isError('upstream_lost'));
  const lostAt = performance.now();
  await client.next(isState('ready'), client.received.json.indexOf(lost));
  await sync(client, 'after-recovery');

  expect(client.received.order.slice(start).map(shapeOf)).toEqual([...beforeFault(), 'error', 'state reconnecting', 'state ready', 'pong']);
  // Exactly the first frames of the reply, decoded as the gateway's fresh decoder decodes them.
  expect(digests(client.received.binary)).toEqual(digests(decodeReference(allPackets.slice(0, AFTER_FRAMES))));

  const reply = await client.textReply('Are you back?');
  expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
  expect(client.received.binary).toHaveLength(AFTER_FRAMES + sim.replyFrames());
  expect(digests(client.received.binary.slice(AFTER_FRAMES))).toEqual(digests(decodeReference(allPackets)));
  expect(client.received.json.filter((m) => m.type === 'error').map((m) => m.code)).toEqual(['upstream_lost']);
  expect(client.received.json.filter((m) => m.type === 'hello')).toHaveLength(1);
  expect(sim.sessions).toHaveLength(2);
  expect(sim.sessions[1]!.headers['device-id']).toBe(sim.sessions[0]!.headers['device-id']);
  return { lostAt };
}

describe('upstream faults driven by the simulator', () => {
  it('keeps trying when a reconnect gets no hello in time, and recovers on the next attempt', async () => {
    const { sim, gw, client } = await setup((n) => (n === 0 ? { fault: { kind: 'close', afterFrames: AFTER_FRAMES } } : n === 1 ? { answerHello: false } : {}));
    const start = client.received.order.length;
    client.send({ type: 'text', text: 'Talk to me' });
    const lost = await client.next(isError('upstream_lost'));
    const lostAt = performance.now();
    await client.next(isState('ready'), client.received.json.indexOf(lost));
    const recoveredAfterMs = performance.now() - lostAt;
    await sync(client, 'after-recovery');

    expect(client.received.order.slice(start).map(shapeOf)).toEqual([...beforeFault(), 'error', 'state reconnecting', 'state ready', 'pong']);
    // The second connection was given the whole hello timeout before the third was tried.
    expect(recoveredAfterMs).toBeGreaterThanOrEqual(HELLO_TIMEOUT_MS - 50);
    expect(sim.sessions).toHaveLength(3);
    expect(sim.sessions[1]!.received.json.map((m) => m.type)).toEqual(['hello']);
    expect(new Set(sim.sessions.map((s) => s.headers['device-id'])).size).toBe(1);
    expect(await upstreamErrors(gw, 'closed')).toBe(1);
    expect(await upstreamErrors(gw, 'hello_timeout')).toBe(1);

    const reply = await client.textReply('Are you back?');
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(AFTER_FRAMES + sim.replyFrames());
    expect(client.received.json.filter((m) => m.type === 'error').map((m) => m.code)).toEqual(['upstream_lost']);
    await expectAccountingAfterEnd(gw, client);
  });

  it('gives up with upstream_unavailable and close 4002 when no reconnect gets a hello before the attempts run out', async () => {
    const { sim, gw, client } = await setup((n) => (n === 0 ? { fault: { kind: 'close', afterFrames: AFTER_FRAMES } } : { answerHello: false }), {
      UPSTREAM_RECONNECT_ATTEMPTS: '2',
    });
    const start = client.received.order.length;
    client.send({ type: 'text', text: 'Talk to me' });
    const { code } = await client.closed;

    expect(code).toBe(4002);
    expect(client.received.order.slice(start).map(shapeOf)).toEqual([...beforeFault(), 'error', 'state reconnecting', 'error']);
    expect(client.received.json.filter((m) => m.type === 'error').map((m) => m.code)).toEqual(['upstream_lost', 'upstream_unavailable']);
    // The first connection, then the two attempts.
    expect(sim.sessions).toHaveLength(3);
    expect(await upstreamErrors(gw, 'closed')).toBe(1);
    expect(await upstreamErrors(gw, 'hello_timeout')).toBe(2);
    const text = await poll(
      () => metrics(gw),
      (t) => metricValue(t, 'voicegw_sessions_total', 'outcome="upstream_lost"') === 1,
    );
    expect(metricValue(text, 'voicegw_sessions_total', 'outcome="upstream_lost"')).toBe(1);
    await expectAccountingAfterEnd(gw, client);
  });

  it.each([
    ['with a close frame (1011)', undefined],
    ['by destroying its TCP connection (1006)', 1006],
  ] as const)('recovers when the upstream closes mid-reply %s: the frames that came, upstream_lost, reconnecting, ready, then a whole reply', async (_how, closeCode) => {
    const { sim, gw, client } = await setup(firstOnly({ kind: 'close', afterFrames: AFTER_FRAMES, ...(closeCode === undefined ? {} : { closeCode }) }));
    await expectLostThenRecovered(sim, client);

    const text = await metrics(gw);
    expect(metricValue(text, 'voicegw_upstream_errors_total', 'kind="closed"')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_errors_total')).toBe(1);
    await expectAccountingAfterEnd(gw, client);
  });

  it('recovers when the upstream stalls mid-reply: upstream_lost after the stall timeout, reconnecting, ready, then a whole reply', async () => {
    const { sim, gw, client } = await setup(firstOnly({ kind: 'stall', afterFrames: AFTER_FRAMES }));
    const lastFrame = client.until((r) => r.binary.length === AFTER_FRAMES).then(() => performance.now());
    const { lostAt } = await expectLostThenRecovered(sim, client);

    const silentMs = lostAt - (await lastFrame);
    expect(silentMs).toBeGreaterThanOrEqual(STALL_TIMEOUT_MS - 50);
    expect(silentMs).toBeLessThan(STALL_TIMEOUT_MS + TICK_MS + 500);
    const text = await metrics(gw);
    expect(metricValue(text, 'voicegw_upstream_errors_total', 'kind="stall"')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_errors_total')).toBe(1);
    await expectAccountingAfterEnd(gw, client);
  });

  it('counts a malformed JSON message mid-reply and delivers the reply whole, with no error to the client', async () => {
    const { sim, gw, client } = await setup(firstOnly({ kind: 'malformed-json', afterFrames: AFTER_FRAMES }));
    const reply = await client.textReply('Talk to me');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(digests(client.received.binary)).toEqual(digests(decodeReference(allPackets)));
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(sim.sessions).toHaveLength(1);
    const text = await metrics(gw);
    expect(metricValue(text, 'voicegw_bad_messages_total', 'reason="upstream_invalid"')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_errors_total')).toBe(0);
    await expectAccountingAfterEnd(gw, client);
  });

  it('turns a garbage binary message mid-reply into one concealment frame, so the reply has one frame more', async () => {
    const { sim, gw, client } = await setup(firstOnly({ kind: 'garbage-binary', afterFrames: AFTER_FRAMES }));
    const reply = await client.textReply('Talk to me');

    const shape = expectedReplyShape(speech.sentences);
    const at = 5 + AFTER_FRAMES; // the opening, the first sentence's text and the frames before the garbage
    expect(reply.map(shapeOf)).toEqual([...shape.slice(0, at), 'audio', ...shape.slice(at)]);
    expect(client.received.binary).toHaveLength(sim.replyFrames() + 1);
    expect(client.received.binary.map((f) => f.length)).toEqual(Array(sim.replyFrames() + 1).fill(2880));
    // The frames before the garbage are the speech itself; the concealment frame takes the garbage's place.
    expect(digests(client.received.binary.slice(0, AFTER_FRAMES))).toEqual(digests(decodeReference(allPackets.slice(0, AFTER_FRAMES))));
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
    expect(sim.sessions).toHaveLength(1);
    const text = await metrics(gw);
    expect(metricValue(text, 'voicegw_decode_errors_total')).toBe(1);
    expect(metricValue(text, 'voicegw_concealed_frames_total')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_errors_total')).toBe(0);
    await expectAccountingAfterEnd(gw, client);
  });

  it('drops an upstream that sends a message over UPSTREAM_MAX_MESSAGE_BYTES: upstream_lost, reconnecting, ready, then a whole reply', async () => {
    const { sim, gw, client } = await setup(firstOnly({ kind: 'oversized', afterFrames: AFTER_FRAMES }));
    await expectLostThenRecovered(sim, client);

    const text = await metrics(gw);
    // ws refuses the message by its header (maxPayload) and reports it as a socket error.
    expect(metricValue(text, 'voicegw_upstream_errors_total', 'kind="socket"')).toBe(1);
    expect(metricSum(text, 'voicegw_upstream_errors_total')).toBe(1);
    // The big message was refused by its header: it never became a frame.
    expect(metricValue(text, 'voicegw_decode_errors_total')).toBe(0);
    await expectAccountingAfterEnd(gw, client);
  });

  it('treats an upstream that stops reading as a fault: upstream_lost, reconnecting, then ready on a connection that reads, with the session never over its budget', async () => {
    const budget = 256 * 1024;
    let connections = 0;
    const received: number[] = [];
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'mcp') received.push(connections);
      if (m.type !== 'hello') return;
      connections++;
      sendJson(ws, SERVER_HELLO);
      // The first connection stops reading once it has answered: what the gateway sends it piles up.
      if (connections === 1) (ws as unknown as { _socket: Socket })._socket.pause();
    });
    const gw = await res.gateway({ UPSTREAM_URL: url, SESSION_BUFFER_BYTES: String(budget), ...env() });
    const client = await res.client(gw.url);
    await client.hello();
    const mcp = { type: 'mcp', payload: { blob: 'x'.repeat(60_000) } };
    let peak = 0;
    // The kernel's buffers take the first megabytes; the gateway's own holding begins after them.
    for (let batch = 0; batch < 200 && !client.received.json.some(isError('upstream_lost')); batch++) {
      for (let i = 0; i < 10; i++) client.send(mcp);
      await sync(client, `batch ${batch}`);
      peak = Math.max(peak, metricValue(await gw.scrape(), 'voicegw_session_buffer_bytes'));
    }
    await client.next(isState('ready'), 2);
    client.send(mcp);
    await sync(client, 'after');
    await poll(async () => received.length, () => received.includes(2));

    const lost = client.received.json.findIndex(isError('upstream_lost'));
    expect(client.received.json[lost]!.message).toBe('the voice service stopped reading what the gateway sends: reconnecting');
    expect(client.received.json.slice(lost + 1).filter((m) => m.type === 'state')).toEqual([
      { type: 'state', state: 'reconnecting' },
      { type: 'state', state: 'ready' },
    ]);
    expect(received.at(-1)).toBe(2);
    expect(peak).toBeLessThanOrEqual(budget);
    const text = await gw.scrape();
    expect(metricValue(text, 'voicegw_upstream_errors_total', 'kind="not_reading"')).toBe(1);
    expect(metricValue(text, 'voicegw_buffer_overflows_total', 'buffer="upstream"')).toBe(1);
    expect(metricValue(text, 'voicegw_session_buffer_bytes')).toBeLessThanOrEqual(budget);
  });
});
