// A worker thread's entry: its own gateway actor and uWS App on the shared port, sessions living wholly
// here; metrics, logs and /metrics go through the main thread (supervisor.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { createMetrics, workerSessions } from '../observability/metrics.ts';
import { CloseCode } from '../protocol/client.ts';
import { workerLogger } from './log.ts';
import { Requests, type FromWorker, type ToWorker, type WorkerInit } from './messages.ts';
import { Readiness } from './readiness.ts';
import { serve, type Serving } from './serve.ts';

/** How often a worker republishes whether it admits sessions (the gateway says so only when asked). */
const READY_REFRESH_MS = 100;
/** How long GET /metrics waits for the main thread's merged view. */
const SCRAPE_TIMEOUT_MS = 5000;

const port = parentPort!;
const { index, config, source, web, log, ready } = workerData as WorkerInit;
const post = (message: FromWorker) => port.postMessage(message);
const logger = workerLogger(port, index, log);
const metrics = createMetrics({ defaultMetrics: false });
const readiness = new Readiness(ready);
const scrapes = new Requests<string>('the merged metrics', SCRAPE_TIMEOUT_MS);
let serving: Serving | undefined;

// A bug anywhere in this thread: its sessions end (1011) and its sockets close, as uWS needs before a
// thread ends; the supervisor starts a fresh worker in its place. The other threads go on.
const crashed = (error: unknown) => {
  logger.fatal({ err: error }, 'worker crashed');
  readiness.set(index, false);
  serving?.abandon(CloseCode.internal, 'internal error');
  process.exit(1);
};
process.on('uncaughtException', crashed);
process.on('unhandledRejection', crashed);

serving = await serve({
  config,
  source,
  web,
  metrics,
  logger,
  scrape: () => scrapes.ask((id) => post({ kind: 'scrape', id })),
  ready: (accepting) => {
    readiness.set(index, accepting);
    return readiness.all;
  },
});
const running = serving;
workerSessions(metrics, index, () => running.gateway.size);
const refresh = setInterval(() => readiness.set(index, running.gateway.accepting), READY_REFRESH_MS);
readiness.set(index, running.gateway.accepting);
post({ kind: 'listening', port: running.port });

/** Leaves the final metrics for the main thread and ends the thread: every socket is closed by now. */
async function exit(): Promise<void> {
  clearInterval(refresh);
  readiness.set(index, false);
  post({ kind: 'final', metrics: await metrics.registry.getMetricsAsJSON() });
  process.exit(0);
}

port.on('message', (m: ToWorker) => {
  switch (m.kind) {
    case 'metrics':
      void metrics.registry.getMetricsAsJSON().then((json) => post({ kind: 'metrics', id: m.id, metrics: json }));
      return;
    case 'scraped':
      return scrapes.answer(m.id, 'text' in m ? m.text : new Error(m.error));
    case 'drain': {
      const drained = running.drain(config.limits.drainDeadlineMs);
      readiness.set(index, false);
      void drained.then(exit);
      return;
    }
    case 'stop':
      running.stop();
      void exit();
      return;
    case 'crash':
      setImmediate(() => {
        throw new Error(`fault injection: worker ${index} was told to crash`);
      });
      return;
  }
});
