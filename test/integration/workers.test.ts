// Every core: WORKERS=2, one uWS App per worker thread on one port, the embedded simulator in the main
// thread. Which thread holds a session is read from voicegw_worker_sessions{worker}.
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import {
  expectedReplyShape,
  gatewayForTest,
  httpGet,
  metricSum,
  metricValue,
  poll,
  Resources,
  shapeOf,
  type TestClient,
  type TestGateway,
} from '../support/gateway.ts';
import { Children, EXIT_MS, within } from '../support/gateway-process.ts';

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
const WORKERS = { WORKERS: '2' };

const res = new Resources();
const children = new Children();
afterEach(async () => {
  children.kill();
  await res.dispose();
});

const perWorker = (text: string) => [0, 1].map((w) => metricValue(text, 'voicegw_worker_sessions', `worker="${w}"`));

/**
 * Opens sessions until worker `want` (or, without one, each worker) holds one, closing those that land
 * elsewhere; the kernel spreads connections, so a few tries do. Returns one client per worker wanted.
 */
async function sessionsOn(url: string, scrape: () => Promise<string>, want: number[]): Promise<Map<number, TestClient>> {
  const held = new Map<number, TestClient>();
  for (let attempt = 0; attempt < 40 && want.some((w) => !held.has(w)); attempt++) {
    const before = perWorker(await scrape());
    const client = await res.client(url);
    await client.hello();
    const after = await poll(scrape, (t) => perWorker(t).some((n, w) => n > before[w]!));
    const worker = perWorker(after).findIndex((n, w) => n > before[w]!);
    if (want.includes(worker) && !held.has(worker)) held.set(worker, client);
    else {
      client.close();
      await client.closed;
      await poll(scrape, (t) => perWorker(t)[worker] === before[worker]);
    }
  }
  expect([...held.keys()].sort()).toEqual([...want].sort());
  return held;
}

const scrapeHttp = (port: number) => async () => (await httpGet(port, '/metrics')).body;

describe('every core (WORKERS=2)', () => {
  it('holds sessions on both threads at once and sums their metrics into one view, whichever thread is scraped', async () => {
    const gw = await res.gateway(WORKERS);
    const clients = await sessionsOn(gw.url, () => gw.scrape(), [0, 1]);
    const during = await gw.scrape();
    expect(perWorker(during)).toEqual([1, 1]);
    expect(metricValue(during, 'voicegw_sessions_active')).toBe(2);
    expect((await httpGet(gw.port, '/readyz')).status).toBe(200);

    const replies = await Promise.all([...clients.values()].map((c) => c.textReply('Tell me a story')));
    const text = await poll(scrapeHttp(gw.port), (t) => metricSum(t, 'voicegw_frames_pushed_total') === 2 * REPLY_FRAMES);

    for (const reply of replies) expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    const received = [...clients.values()].reduce((n, c) => n + c.received.binary.length, 0);
    expect(received).toBe(2 * REPLY_FRAMES);
    expect(metricSum(text, 'voicegw_frames_pushed_total')).toBe(received);
    expect(metricSum(text, 'voicegw_upstream_frames_total')).toBe(received);
    expect(metricValue(text, 'voicegw_replies_total', 'outcome="complete"')).toBe(2);
    expect(metricValue(text, 'voicegw_frame_latency_seconds_count')).toBe(received);
    // The main thread's own: the process, and the whole gateway's limits, once.
    expect(metricValue(text, 'voicegw_sessions_max')).toBe(1000);
    expect(metricValue(text, 'voicegw_process_resident_memory_bytes')).toBeGreaterThan(0);
  }, 60_000);

  it('drains every thread on SIGTERM: both replies finish whole, both clients get 1001, and the process exits 0', async () => {
    const sim = await res.simulator({ pacing: 'xiaozhi' });
    const gw = await children.start(sim.url, { ...WORKERS, DRAIN_DEADLINE_MS: '20000' });
    const clients = [...(await sessionsOn(gw.url, scrapeHttp(gw.port), [0, 1])).values()];
    for (const c of clients) c.send({ type: 'text', text: 'Tell me a story' });
    await within(10_000, 'the first audio frames', Promise.all(clients.map((c) => c.until((r) => r.binary.length > 0))));
    gw.process.kill('SIGTERM');

    const closed = await within(20_000, 'both sessions to close', Promise.all(clients.map((c) => c.closed)));
    const exited = await within(EXIT_MS, 'the gateway to exit', gw.exited);

    for (const c of clients) {
      expect(c.received.order.slice(2).map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
      expect(c.received.binary).toHaveLength(REPLY_FRAMES);
      expect(c.errors).toEqual([]);
    }
    expect(closed.map((c) => c.code)).toEqual([1001, 1001]);
    expect(exited).toEqual({ code: 0, signal: null });
    expect(gw.output).not.toContain('uv_loop_close');
  }, 60_000);

  it('replaces a worker that crashes: its session ends with 1011, the other thread’s reply plays whole, and a new session lands on the fresh worker', async () => {
    const lines: Record<string, any>[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, any>) });
    const gw: TestGateway = await gatewayForTest(WORKERS, logger);
    res.add(() => gw.stop());
    const scrape = () => gw.scrape();
    const clients = await sessionsOn(gw.url, scrape, [0, 1]);
    const [doomed, survivor] = [clients.get(0)!, clients.get(1)!];
    survivor.send({ type: 'text', text: 'Tell me a story' });
    await within(10_000, 'the first audio frame', survivor.until((r) => r.binary.length > 0));

    gw.workers!.crash(0);
    const crashed = await within(5000, 'the crashed worker’s session to close', doomed.closed);
    await within(20_000, 'the other reply to end', survivor.until((r) => r.order.slice(2).some((m) => m !== 'audio' && m.type === 'state' && m.state === 'ready')));
    const ready = await poll(() => httpGet(gw.port, '/readyz'), (r) => r.status === 200, 10_000);

    expect(crashed.code).toBe(1011);
    expect(survivor.received.order.slice(2).map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(survivor.received.binary).toHaveLength(REPLY_FRAMES);
    expect(ready.status).toBe(200);
    const fatal = lines.filter((l) => l.level === 60);
    expect(fatal).toEqual([expect.objectContaining({ worker: 0, msg: 'worker crashed', err: expect.objectContaining({ message: expect.stringContaining('fault injection') }) })]);

    const fresh = (await sessionsOn(gw.url, scrape, [0])).get(0)!;
    expect((await fresh.textReply('Hello again')).map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(perWorker(await scrape())).toEqual([1, 1]);
  }, 90_000);
});
