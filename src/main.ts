import { pathToFileURL } from 'node:url';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger, type Logger } from './observability/log.ts';
import { createMetrics, recordInfo, type Metrics } from './observability/metrics.ts';
import { storeNeeded, type UpstreamSource } from './identity/provisioning.ts';
import { openDeviceStore } from './identity/store.ts';
import { startSimulator, type Simulator } from './sim/simulator.ts';
import { buildWebAssets, type WebAssets } from './transport/web.ts';
import { serve } from './workers/serve.ts';
import { startWorkers, type Workers } from './workers/supervisor.ts';

export interface RunningGateway {
  readonly port: number;
  /** The embedded simulator, when no upstream (URL or OTA URL) is configured. */
  readonly simulator: Simulator | undefined;
  /** The worker threads, with WORKERS >= 2. */
  readonly workers: Workers | undefined;
  /** The whole gateway's metrics, every thread's merged: what GET /metrics answers. */
  scrape(): Promise<string>;
  /** Ends every session now (1001), closes every socket and stops the embedded simulator. */
  stop(): Promise<void>;
  /** PROTOCOL.md draining: not ready, new sessions refused (1013), replies finish up to the deadline, then 1001. */
  drain(): Promise<void>;
}

/**
 * Wires config, metrics, the client path and the embedded simulator when no upstream is set. WORKERS=1
 * serves clients in this thread; otherwise worker threads do, one uWS App each on the same port, and
 * this thread supervises them and runs the simulator.
 */
export async function startGateway(config: Config, logger: Logger): Promise<RunningGateway> {
  const { upstream, sim } = config;
  // A store that cannot be opened is an error here, at start, not at some user's first session.
  if (storeNeeded(config) && config.workers > 1) await (await openDeviceStore(config.store)).close();
  const web = config.webEnabled ? await buildWebAssets() : undefined;
  const embedded = upstream.url === undefined && upstream.ota.url === undefined;
  const simulator = embedded
    ? await startSimulator({
        reply: sim.reply,
        provisioning: sim.provisioning === 'off' ? undefined : { mode: sim.provisioning, authKey: sim.authKey },
        logger: logger.child({ component: 'simulator' }),
      })
    : undefined;
  const source: UpstreamSource = simulator
    ? { url: simulator.url, otaUrl: sim.provisioning === 'off' ? undefined : simulator.otaUrl }
    : { url: upstream.url, otaUrl: upstream.ota.url };
  if (upstream.deviceId !== undefined) {
    logger.warn('UPSTREAM_DEVICE_ID is set: every session shares one Device-Id, so the upstream mixes their conversation memory');
  }
  const metrics = createMetrics();
  recordInfo(metrics, { maxSessions: config.limits.maxSessions, ...config.sink });
  const clients = await (config.workers === 1 ? inThread(config, source, web, metrics, logger) : startWorkers(config, source, web, metrics, logger)).catch(
    async (error: unknown) => {
      await simulator?.close();
      throw error;
    },
  );
  logger.info(
    {
      host: config.host,
      port: clients.port,
      workers: config.workers,
      upstream: simulator ? `embedded simulator${source.otaUrl === undefined ? '' : ` (${sim.provisioning}; console ${simulator.consoleUrl})`}` : (source.otaUrl ?? source.url),
    },
    'voicegw listening',
  );
  return {
    port: clients.port,
    simulator,
    workers: clients.workers,
    scrape: clients.scrape,
    stop: async () => {
      await clients.stop();
      await simulator?.close();
    },
    drain: async () => {
      await clients.drain();
      await simulator?.close();
    },
  };
}

/** WORKERS=1: the client path in this thread, the cheapest way. */
async function inThread(config: Config, source: UpstreamSource, web: WebAssets | undefined, metrics: Metrics, logger: Logger) {
  const scrape = () => metrics.registry.metrics();
  const serving = await serve({ config, source, metrics, logger, scrape, web });
  return {
    port: serving.port,
    workers: undefined,
    scrape,
    stop: async () => serving.stop(),
    drain: () => serving.drain(config.limits.drainDeadlineMs),
  };
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`voicegw: ${error.message}\n`);
    process.exit(2);
  }
  const logger = createLogger(config.logLevel);
  let running: RunningGateway | undefined;
  const stop = (signal: string) => {
    logger.info({ signal }, 'stopping');
    // Before the gateway listens there is no session to drain: as PID 1 in a container a signal
    // unheard now would be lost, and the pod killed only at the end of its grace period.
    if (running === undefined) process.exit(0);
    (signal === 'SIGTERM' ? running.drain() : running.stop()).then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  running = await startGateway(config, logger);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    process.stderr.write(`voicegw: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
