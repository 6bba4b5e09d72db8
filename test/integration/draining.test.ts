import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { expectedReplyShape, httpGet, isError, isState, poll, Resources, shapeOf, type TestClient } from '../support/gateway.ts';
import { Children, EXIT_MS, within } from '../support/gateway-process.ts';

// The real process: `node --import tsx src/main.ts`, SIGTERM and all. Its upstream is a simulator run
// here, paced as xiaozhi-esp32-server paces speech, so that a reply takes about seven seconds.

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);

const res = new Resources();
const children = new Children();
afterEach(async () => {
  children.kill();
  await res.dispose();
});

/** Connects, says hello, asks for a reply and resolves once its first audio frame has arrived. */
async function replyUnderWay(url: string): Promise<TestClient> {
  const client = await res.client(url);
  await client.hello();
  client.send({ type: 'text', text: 'Tell me a story' });
  await within(10_000, 'the first audio frame', client.until((r) => r.binary.length > 0));
  return client;
}

/**
 * /readyz during a drain. With WORKERS ≥ 2 a worker without sessions closes its listen socket at once, so
 * a request the kernel handed it just then is reset: that is a probe that failed, not an answer.
 */
const readyz = (port: number) => httpGet(port, '/readyz').catch(() => ({ status: 0, body: '' }));

/** What the client received after the gateway's hello and its first `state ready`. */
const afterHello = (client: TestClient) => client.received.order.slice(2);

describe('draining on SIGTERM', () => {
  it('stops accepting, lets the reply in progress finish whole, then closes it with 1001 and exits 0', async () => {
    const sim = await res.simulator({ pacing: 'xiaozhi' });
    const gw = await children.start(sim.url, { DRAIN_DEADLINE_MS: '20000' });
    const client = await replyUnderWay(gw.url);
    gw.process.kill('SIGTERM');
    const sigtermAt = performance.now();

    const ready = await poll(() => readyz(gw.port), (r) => r.status === 503, 5000);
    expect(ready.status).toBe(503);
    const late = await within(5000, 'a new client to connect', res.client(gw.url));
    const refused = await within(5000, 'the new client to be refused', late.closed);
    expect(refused.code).toBe(1013);
    expect(late.received.order).toEqual([{ type: 'error', code: 'overloaded', message: expect.any(String) }]);

    const closed = await within(20_000, 'the session to be closed', client.closed);
    const closedAt = performance.now();
    const exited = await within(EXIT_MS, 'the gateway to exit', gw.exited);

    console.info(`drain: reply finished and closed ${(closedAt - sigtermAt).toFixed(0)} ms after SIGTERM`);
    expect(afterHello(client).map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(REPLY_FRAMES);
    expect(closed.code).toBe(1001);
    expect(exited).toEqual({ code: 0, signal: null });
    // The reply went on for seconds after SIGTERM: it was let finish, not cut.
    expect(closedAt - sigtermAt).toBeGreaterThan(2000);
    expect(client.errors).toEqual([]);
  }, 40_000);

  it('stops at once on SIGINT during a drain: the reply in progress is cut with 1001, and it exits 0', async () => {
    const sim = await res.simulator({ pacing: 'xiaozhi' });
    const gw = await children.start(sim.url, { DRAIN_DEADLINE_MS: '20000' });
    const client = await replyUnderWay(gw.url);
    gw.process.kill('SIGTERM');
    await poll(() => readyz(gw.port), (r) => r.status === 503, 5000);
    gw.process.kill('SIGINT');

    const closed = await within(5000, 'the session to be closed', client.closed);
    const exited = await within(EXIT_MS, 'the gateway to exit', gw.exited);
    expect(closed.code).toBe(1001);
    expect(client.received.binary.length).toBeLessThan(REPLY_FRAMES);
    expect(exited).toEqual({ code: 0, signal: null });
  }, 40_000);

  it('cuts the reply in progress at DRAIN_DEADLINE_MS with 1001, then exits 0', async () => {
    const sim = await res.simulator({ pacing: 'xiaozhi' });
    const deadlineMs = 500;
    const gw = await children.start(sim.url, { DRAIN_DEADLINE_MS: String(deadlineMs) });
    const client = await replyUnderWay(gw.url);
    gw.process.kill('SIGTERM');
    const sigtermAt = performance.now();
    const closed = await within(5000, 'the session to be closed', client.closed);
    const closedAt = performance.now();
    const exited = await within(EXIT_MS, 'the gateway to exit', gw.exited);

    console.info(`drain deadline ${deadlineMs} ms: closed ${(closedAt - sigtermAt).toFixed(0)} ms after SIGTERM with ${client.received.binary.length}/${REPLY_FRAMES} frames`);
    expect(closed.code).toBe(1001);
    expect(closedAt - sigtermAt).toBeGreaterThanOrEqual(deadlineMs - 100);
    expect(closedAt - sigtermAt).toBeLessThan(deadlineMs + 2500);
    expect(client.received.binary.length).toBeGreaterThan(0);
    expect(client.received.binary.length).toBeLessThan(REPLY_FRAMES);
    // Cut mid-reply: speaking, and never ready again.
    const shapes = afterHello(client).map(shapeOf);
    expect(shapes).toContain('state speaking');
    expect(shapes).not.toContain('state ready');
    expect(exited).toEqual({ code: 0, signal: null });
  }, 40_000);

  it('closes a session between replies with 1001 at once, then exits 0', async () => {
    const sim = await res.simulator({ pacing: 'xiaozhi' });
    const gw = await children.start(sim.url, { DRAIN_DEADLINE_MS: '20000' });
    const client = await res.client(gw.url);
    await client.hello();
    gw.process.kill('SIGTERM');
    const sigtermAt = performance.now();
    const closed = await within(5000, 'the session to be closed', client.closed);
    const closedAt = performance.now();
    const exited = await within(EXIT_MS, 'the gateway to exit', gw.exited);

    console.info(`drain, idle session: closed ${(closedAt - sigtermAt).toFixed(0)} ms after SIGTERM`);
    expect(closed.code).toBe(1001);
    expect(closedAt - sigtermAt).toBeLessThan(1500);
    expect(afterHello(client)).toEqual([]);
    expect(client.received.json.filter(isError('overloaded'))).toEqual([]);
    expect(client.received.json.filter(isState('ready'))).toHaveLength(1);
    expect(exited).toEqual({ code: 0, signal: null });
  }, 40_000);
});
