import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import opus from '@discordjs/opus';
import { expect } from 'vitest';
import WebSocket from 'ws';
import { loadConfig, type Config } from '../../src/config.ts';
import { startGateway, type RunningGateway } from '../../src/main.ts';
import { silentLogger, type Logger } from '../../src/observability/log.ts';
import { startSimulator, type Simulator, type SimulatorOptions } from '../../src/sim/simulator.ts';

export type TestGateway = RunningGateway & { url: string; config: Config };

let testDataDir: string | undefined;

/**
 * The environment of a gateway under test: a loopback ephemeral port, and WORKERS as the test run says
 * (vitest.config.ts runs the integration tests with WORKERS=1 and WORKERS=2), one thread when unset.
 */
export function testEnv(env: Record<string, string> = {}): Record<string, string> {
  // A gateway whose clients are named users keeps their devices in DATA_DIR: never the checkout's own.
  testDataDir ??= mkdtempSync(join(tmpdir(), 'voicegw-test-data-'));
  // The browser client is bundled at each start: only the tests of it (test/browser) ask for it.
  // Test files run side by side on few cores, so a test's own event loop can lag for reasons of its
  // neighbours': admission by load stays out of the way unless a test is about it.
  return { HOST: '127.0.0.1', PORT: '0', DATA_DIR: testDataDir, WEB_ENABLED: 'false', WORKERS: process.env.WORKERS ?? '1', ADMISSION_MAX_LAG_MS: '10000', ADMISSION_MAX_LATENESS_MS: '10000', ...env };
}

/** A real gateway on an ephemeral loopback port, with the embedded simulator unless UPSTREAM_URL is given. */
export async function gatewayForTest(env: Record<string, string> = {}, logger: Logger = silentLogger): Promise<TestGateway> {
  const config = loadConfig(testEnv(env));
  const running = await startGateway(config, logger);
  return Object.assign(running, { url: `ws://127.0.0.1:${running.port}/v1/voice`, config });
}

export interface Received {
  json: Record<string, any>[];
  binary: Buffer[];
  /** Everything in arrival order: a JSON message, or 'audio' for a binary frame. */
  order: (Record<string, any> | 'audio')[];
}

/** A ws client that records what it receives and can wait for a message matching a predicate. */
export class TestClient {
  readonly received: Received = { json: [], binary: [], order: [] };
  /** Socket errors seen (recorded so that a late one never becomes an unhandled 'error' event). */
  readonly errors: Error[] = [];
  private waiters: { match: (m: Record<string, any>) => boolean; resolve: (m: Record<string, any>) => void }[] = [];
  private conditions: { test: (r: Received) => boolean; resolve: () => void }[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly ws: WebSocket) {
    ws.on('error', (error) => this.errors.push(error));
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        this.received.binary.push(data);
        this.received.order.push('audio');
        this.check();
        return;
      }
      const message = JSON.parse(data.toString('utf8')) as Record<string, any>;
      this.received.json.push(message);
      this.received.order.push(message);
      this.waiters = this.waiters.filter((w) => {
        if (!w.match(message)) return true;
        w.resolve(message);
        return false;
      });
      this.check();
    });
    this.closed = new Promise((resolve) => {
      ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: String(reason) }));
    });
  }

  static async connect(url: string, options?: WebSocket.ClientOptions): Promise<TestClient> {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...options });
    const client = new TestClient(ws);
    await once(ws, 'open');
    return client;
  }

  send(message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  /** Resolves with the first message, already received or still to come, that matches. */
  next(match: (m: Record<string, any>) => boolean, after = 0): Promise<Record<string, any>> {
    const seen = this.received.json.slice(after).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  /** Resolves once everything received so far (text or binary) satisfies `test`. */
  until(test: (received: Received) => boolean): Promise<void> {
    if (test(this.received)) return Promise.resolve();
    return new Promise((resolve) => this.conditions.push({ test, resolve }));
  }

  /** Sends hello and waits for the session to be ready; returns the gateway's hello. */
  async hello(hello: Record<string, unknown> = {}): Promise<Record<string, any>> {
    const after = this.received.json.length;
    this.send({ type: 'hello', ...hello });
    const reply = await this.next((m) => m.type === 'hello', after);
    await this.next((m) => m.type === 'state' && m.state === 'ready', after);
    return reply;
  }

  /**
   * Sends a text turn and waits for its whole reply: everything from the send to the `state ready` that
   * follows `state speaking`. Returns the reply's part of `received.order`.
   */
  async textReply(text: string): Promise<(Record<string, any> | 'audio')[]> {
    const start = this.received.order.length;
    this.send({ type: 'text', text });
    await this.until((r) => replyEnd(r.order, start) >= 0);
    return this.received.order.slice(start, replyEnd(this.received.order, start) + 1);
  }

  close(): void {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }

  private check(): void {
    this.conditions = this.conditions.filter((c) => {
      if (!c.test(this.received)) return true;
      c.resolve();
      return false;
    });
  }
}

/** Index of the `state ready` that ends the reply starting at `start` (after a `state speaking`), or -1. */
export function replyEnd(order: Received['order'], start: number): number {
  let speaking = false;
  for (let i = start; i < order.length; i++) {
    const m = order[i]!;
    if (m === 'audio' || m.type !== 'state') continue;
    if (m.state === 'speaking') speaking = true;
    else if (m.state === 'ready' && speaking) return i;
  }
  return -1;
}

export const isState = (state: string) => (m: Record<string, any>) => m.type === 'state' && m.state === state;
export const isError = (code: string) => (m: Record<string, any>) => m.type === 'error' && m.code === code;

/** Reads one metric's value from a Prometheus text exposition, matching labels given as `a="b"`. */
export function metricValue(text: string, name: string, labels = ''): number {
  const line = text
    .split('\n')
    .find((l) => (labels === '' ? l.startsWith(`${name} `) || l.startsWith(`${name}{`) : l.startsWith(`${name}{`) && labels.split(',').every((p) => l.includes(p))));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** The sum of a metric's samples over every label set (0 when it has none). */
export function metricSum(text: string, name: string): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** Whether a metric has any sample line in the exposition. */
export function hasMetric(text: string, name: string): boolean {
  return text.split('\n').some((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
}

/**
 * One item of what a client received, as a short string for whole-sequence comparisons: 'audio' for a
 * binary frame or an `audio_frame` message, `state X` for a state, the type otherwise.
 */
export function shapeOf(item: Record<string, any> | 'audio'): string {
  if (item === 'audio' || item.type === 'audio_frame') return 'audio';
  return item.type === 'state' ? `state ${item.state}` : String(item.type);
}

/** What a whole text reply looks like to a client: the sentences' audio each after its assistant_text. */
export function expectedReplyShape(sentences: readonly { packets: readonly unknown[] }[]): string[] {
  return [
    'state processing',
    'user_text',
    'emotion',
    'state speaking',
    ...sentences.flatMap((s) => ['assistant_text', ...s.packets.map(() => 'audio')]),
    'state ready',
  ];
}

/** Decodes packets in order with one fresh decoder, as the gateway's per-session decoder does. */
export function decodeReference(packets: readonly Buffer[], sampleRate = 24000): Buffer[] {
  const decoder = new opus.OpusEncoder(sampleRate, 1);
  return packets.map((p) => decoder.decode(p));
}

/** A simulator for tests: burst pacing and a short `tts stop` delay unless the options say otherwise. */
export function simulatorForTest(options: SimulatorOptions = {}): Promise<Simulator> {
  return startSimulator({ pacing: 'burst', stopDelayMs: 5, ...options });
}

/** GET on the gateway's HTTP side. */
export async function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** Asks `read` until `test` accepts its answer, at most `timeoutMs`; returns the last answer either way. */
export async function poll<T>(read: () => Promise<T>, test: (value: T) => boolean, timeoutMs = 2000, everyMs = 10): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (test(value) || performance.now() > deadline) return value;
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** What the upgrade answers: 101 when the WebSocket opens, else the HTTP status of the refusal. */
/** Sends a ping and waits for its pong: everything the gateway queued before it has arrived. */
export async function sync(client: TestClient, id: string): Promise<void> {
  client.send({ type: 'ping', id });
  await client.next((m) => m.type === 'pong' && m.id === id);
}

/**
 * Ends the given clients, waits (bounded) until the gateway has no session, then checks at once that
 * every upstream frame was pushed to a client, dropped with a reason, or refused by a socket.
 */
export async function expectAccountingAfterEnd(gw: TestGateway, ...clients: TestClient[]): Promise<string> {
  for (const c of clients) c.close();
  await Promise.all(clients.map((c) => c.closed));
  const text = await poll(
    () => gw.scrape(),
    (t) => metricValue(t, 'voicegw_sessions_active') === 0,
    5000,
  );
  expect(metricValue(text, 'voicegw_sessions_active')).toBe(0);
  const upstream = metricSum(text, 'voicegw_upstream_frames_total');
  expect(upstream).toBeGreaterThan(0);
  expect(
    metricSum(text, 'voicegw_frames_pushed_total') + metricSum(text, 'voicegw_frames_dropped_total') + metricSum(text, 'voicegw_send_failures_total'),
  ).toBe(upstream);
  return text;
}

export function upgradeStatus(url: string, options?: WebSocket.ClientOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...options });
    ws.on('open', () => {
      resolve(101);
      ws.close(1000);
    });
    ws.on('unexpected-response', (req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      req.destroy();
    });
    ws.on('error', (error) => reject(error));
  });
}

/** A loopback port nothing listens on: opened, then closed. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Everything a test opens, closed in afterEach: clients first, then gateways, then simulators and any
 * other closer registered with `add`.
 */
export class Resources {
  private clients: TestClient[] = [];
  private gateways: TestGateway[] = [];
  private closers: (() => Promise<void> | void)[] = [];

  async gateway(env: Record<string, string> = {}): Promise<TestGateway> {
    const gw = await gatewayForTest(env);
    this.gateways.push(gw);
    return gw;
  }

  async simulator(options: SimulatorOptions = {}): Promise<Simulator> {
    const sim = await simulatorForTest(options);
    this.closers.push(() => sim.close());
    return sim;
  }

  async client(url: string, options?: WebSocket.ClientOptions): Promise<TestClient> {
    const client = await TestClient.connect(url, options);
    this.clients.push(client);
    return client;
  }

  add(close: () => Promise<void> | void): void {
    this.closers.push(close);
  }

  async dispose(): Promise<void> {
    const clients = this.clients.splice(0);
    for (const c of clients) {
      c.close();
      if (c.ws.readyState !== WebSocket.CLOSED) {
        const force = setTimeout(() => c.ws.terminate(), 1000);
        await c.closed;
        clearTimeout(force);
      }
    }
    for (const gw of this.gateways.splice(0)) await gw.stop();
    for (const close of this.closers.splice(0)) await close();
  }
}
