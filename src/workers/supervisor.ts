import { once } from 'node:events';
import { createServer } from 'node:net';
import { Worker } from 'node:worker_threads';
import type { Config } from '../config.ts';
import type { UpstreamSource } from '../identity/provisioning.ts';
import type { WebAssets } from '../transport/web.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import { assertNativeUws } from '../transport/client-server.ts';
import { logInit, writeLine } from './log.ts';
import { mergeMetrics } from './merge.ts';
import { Requests, type FromWorker, type MetricsJson, type ToWorker, type WorkerInit } from './messages.ts';
import { Readiness } from './readiness.ts';

// The main thread with WORKERS >= 2: it starts one worker thread per core, each a whole client path on
// the shared port (worker.ts), replaces one that crashes, merges their metrics, and drains or stops them.

const TYPESCRIPT = import.meta.url.endsWith('.ts');
const ENTRY = new URL(TYPESCRIPT ? './worker.ts' : './worker.js', import.meta.url);
/**
 * Under tsx (npm start, vitest) the entry is TypeScript, and the thread must load tsx before it. Node 20
 * does not apply `execArgv: ['--import', 'tsx']` to a worker's entry (ERR_UNKNOWN_FILE_EXTENSION), so a
 * one-line bootstrap registers tsx and then imports the entry; a build (dist/) starts the entry itself.
 */
function newWorker(workerData: WorkerInit): Worker {
  if (!TYPESCRIPT) return new Worker(ENTRY, { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsx)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(ENTRY.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}
/** How long a scrape waits for each worker's registry. */
const METRICS_TIMEOUT_MS = 3000;

export interface Workers {
  readonly count: number;
  /** Fault injection, for tests: worker `index` throws an uncaught exception, as a bug would. */
  crash(index: number): void;
}

export interface Supervisor {
  readonly port: number;
  readonly workers: Workers;
  scrape(): Promise<string>;
  /** Every worker drains, closes its sockets and ends; resolves once every thread has. */
  drain(): Promise<void>;
  /** Every worker ends its sessions now (1001), closes its sockets and ends. */
  stop(): Promise<void>;
}

interface Slot {
  worker: Worker;
  listening: boolean;
  metrics: Requests<MetricsJson>;
  /** What a worker that ended cleanly left. */
  final: MetricsJson | undefined;
  exited: Promise<unknown>;
}

export async function startWorkers(config: Config, source: UpstreamSource, web: WebAssets | undefined, metrics: Metrics, logger: Logger): Promise<Supervisor> {
  // Here, where the message reaches the operator: a worker failing on it would only say it exited.
  assertNativeUws();
  const count = config.workers;
  // uSockets sets SO_REUSEPORT only on a listen socket with a given port, so that with PORT=0 a port
  // is chosen here first and every worker listens on it.
  const port = config.port === 0 ? await freePort(config.host) : config.port;
  const share = { ...config, port, limits: { ...config.limits, maxSessions: Math.ceil(config.limits.maxSessions / count) } };
  const readiness = Readiness.create(count);
  const slots: Slot[] = [];
  let ending = false;

  const scrape = async () => {
    const parts = await Promise.all(
      slots.map((slot) =>
        slot.listening ? slot.metrics.ask((id) => slot.worker.postMessage({ kind: 'metrics', id } satisfies ToWorker)) : (slot.final ?? []),
      ),
    );
    return mergeMetrics(await metrics.registry.getMetricsAsJSON(), parts);
  };

  /** Starts worker `index`; resolves once it listens, rejects if it ends before. */
  const spawn = (index: number): Promise<void> => {
    const init: WorkerInit = { index, config: share, source, web, log: logInit(logger), ready: readiness.buffer };
    const started = performance.now();
    const worker = newWorker(init);
    const slot: Slot = { worker, listening: false, metrics: new Requests(`worker ${index}'s metrics`, METRICS_TIMEOUT_MS), final: undefined, exited: new Promise((resolve) => worker.once('exit', resolve)) };
    slots[index] = slot;
    worker.on('error', (error) => logger.error({ err: error, worker: index }, 'worker failed'));
    return new Promise((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        switch (m.kind) {
          case 'log':
            return writeLine(logger, m.line);
          case 'listening':
            slot.listening = true;
            logger.debug({ worker: index, ms: Math.round(performance.now() - started) }, 'worker listening');
            return resolve();
          case 'metrics':
            return slot.metrics.answer(m.id, m.metrics);
          case 'scrape':
            scrape().then(
              (text) => worker.postMessage({ kind: 'scraped', id: m.id, text } satisfies ToWorker),
              (error: unknown) => worker.postMessage({ kind: 'scraped', id: m.id, error: String(error) } satisfies ToWorker),
            );
            return;
          case 'final':
            slot.final = m.metrics;
            return;
        }
      });
      worker.on('exit', (code) => {
        const wasListening = slot.listening;
        slot.listening = false;
        readiness.set(index, false);
        slot.metrics.failAll(new Error(`worker ${index} exited`));
        if (!wasListening) return reject(new Error(`worker ${index} exited (${code}) before listening`));
        if (ending) return;
        // Its sessions are gone (1011) with its counts; the other workers go on untouched.
        logger.error({ worker: index, code }, 'worker exited: starting a fresh one in its place');
        spawn(index).catch((error: unknown) => logger.error({ err: error, worker: index }, 'the fresh worker did not start: running without it'));
      });
    });
  };

  const end = (kind: 'drain' | 'stop') => {
    ending = true;
    for (const slot of slots) slot.worker.postMessage({ kind } satisfies ToWorker);
    return Promise.all(slots.map((slot) => slot.exited)).then(() => undefined);
  };
  let ended: Promise<void> | undefined;

  try {
    await Promise.all(Array.from({ length: count }, (_, index) => spawn(index)));
  } catch (error) {
    await end('stop');
    throw error;
  }
  return {
    port,
    workers: {
      count,
      crash: (index) => slots[index]?.worker.postMessage({ kind: 'crash' } satisfies ToWorker),
    },
    scrape,
    drain: () => (ended ??= end('drain')),
    // A stop during a drain (a second signal) still ends every session now.
    stop: () => {
      const stopped = end('stop');
      ended ??= stopped;
      return stopped;
    },
  };
}

/** A port free on `host` now: the OS picks one for a listener that is closed again at once. */
async function freePort(host: string): Promise<number> {
  const server = createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error(`no port on ${host}`);
  return address.port;
}
