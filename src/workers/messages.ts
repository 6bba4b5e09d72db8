import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { Config } from '../config.ts';
import type { UpstreamSource } from '../identity/provisioning.ts';
import type { WebAssets } from '../transport/web.ts';

// What the main thread and a worker thread say to each other over the worker's MessagePort.

/** One registry's metrics as getMetricsAsJSON gives them: what the main thread merges. */
export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/** What a worker starts from (its workerData). */
export interface WorkerInit {
  index: number;
  /** The gateway's config with this worker's port and share of MAX_SESSIONS. */
  config: Config;
  source: UpstreamSource;
  web: WebAssets | undefined;
  /** The main thread's logger: its level and bindings, so that a worker's lines read like its own. */
  log: { level: string; bindings: Record<string, unknown> };
  /** Readiness flags, one per worker (readiness.ts). */
  ready: SharedArrayBuffer;
}

export type ToWorker =
  | { kind: 'metrics'; id: number }
  | { kind: 'scraped'; id: number; text: string }
  | { kind: 'scraped'; id: number; error: string }
  | { kind: 'drain' }
  | { kind: 'stop' }
  /** Fault injection (tests): throw an uncaught exception, as a bug would. */
  | { kind: 'crash' };

export type FromWorker =
  | { kind: 'listening'; port: number }
  | { kind: 'log'; line: string }
  | { kind: 'metrics'; id: number; metrics: MetricsJson }
  /** GET /metrics reached this worker: the main thread answers with the merged text. */
  | { kind: 'scrape'; id: number }
  /** A worker ending cleanly leaves its last metrics, so that its counts outlive it until the process ends. */
  | { kind: 'final'; metrics: MetricsJson };

/** Requests across a MessagePort, matched to their answers by id, each with a deadline. */
export class Requests<T> {
  private next = 0;
  private readonly waiting = new Map<number, { resolve: (value: T) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }>();

  constructor(
    private readonly what: string,
    private readonly timeoutMs: number,
  ) {}

  /** `send` posts the request carrying `id`; the promise settles with `answer(id, …)` or the deadline. */
  ask(send: (id: number) => void): Promise<T> {
    const id = ++this.next;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => this.answer(id, new Error(`${this.what}: no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      send(id);
    });
  }

  answer(id: number, value: T | Error): void {
    const waiting = this.waiting.get(id);
    if (waiting === undefined) return;
    this.waiting.delete(id);
    clearTimeout(waiting.timer);
    if (value instanceof Error) waiting.reject(value);
    else waiting.resolve(value);
  }

  /** The other side is gone: nothing asked of it will be answered. */
  failAll(error: Error): void {
    for (const id of [...this.waiting.keys()]) this.answer(id, error);
  }
}
