import { once } from 'node:events';
import WebSocket from 'ws';
import { loadConfig, type Config } from '../../src/config.ts';
import { startGateway, type RunningGateway } from '../../src/main.ts';
import { silentLogger } from '../../src/observability/log.ts';

/** A real gateway on an ephemeral loopback port, with the embedded simulator unless UPSTREAM_URL is given. */
export async function gatewayForTest(env: Record<string, string> = {}): Promise<RunningGateway & { url: string; config: Config }> {
  const config = loadConfig({ HOST: '127.0.0.1', PORT: '0', ...env });
  const running = await startGateway(config, silentLogger);
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
  private waiters: { match: (m: Record<string, any>) => boolean; resolve: (m: Record<string, any>) => void }[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        this.received.binary.push(data);
        this.received.order.push('audio');
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
    });
    this.closed = once(ws, 'close').then(([code, reason]) => ({ code: code as number, reason: String(reason) }));
  }

  static async connect(url: string, options?: WebSocket.ClientOptions): Promise<TestClient> {
    const ws = new WebSocket(url, options);
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

  /** Sends hello and waits for the session to be ready; returns the gateway's hello. */
  async hello(hello: Record<string, unknown> = {}): Promise<Record<string, any>> {
    this.send({ type: 'hello', ...hello });
    const reply = await this.next((m) => m.type === 'hello');
    await this.next((m) => m.type === 'state' && m.state === 'ready');
    return reply;
  }

  close(): void {
    this.ws.close(1000);
  }
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
