import { pathToFileURL } from 'node:url';
import { Gateway } from './actors/gateway.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger, type Logger } from './observability/log.ts';
import { createMetrics, recordInfo, type Metrics } from './observability/metrics.ts';
import { startSimulator, type Simulator } from './sim/simulator.ts';
import { startClientServer } from './transport/client-server.ts';

export interface RunningGateway {
  readonly port: number;
  readonly gateway: Gateway;
  readonly metrics: Metrics;
  /** The embedded simulator, when no upstream URL is configured. */
  readonly simulator: Simulator | undefined;
  /** Ends every session now (1001), stops listening and stops the embedded simulator. */
  stop(): Promise<void>;
  /** PROTOCOL.md draining: not ready, new sessions refused (1013), replies finish up to the deadline, then 1001. */
  drain(): Promise<void>;
}

/** Wires config, metrics, the gateway actor and the client server; the embedded simulator when no upstream is set. */
export async function startGateway(config: Config, logger: Logger, metrics: Metrics = createMetrics()): Promise<RunningGateway> {
  const simulator = config.upstream.url === undefined ? await startSimulator({ reply: config.sim.reply, logger: logger.child({ component: 'simulator' }) }) : undefined;
  const upstreamUrl = config.upstream.url ?? simulator!.url;
  if (config.upstream.deviceId !== undefined) {
    logger.warn('UPSTREAM_DEVICE_ID is set: every session shares one Device-Id, so the upstream mixes their conversation memory');
  }
  recordInfo(metrics, { maxSessions: config.limits.maxSessions, ...config.sink });
  const gateway = new Gateway({ config, upstreamUrl, metrics, logger });
  const server = await startClientServer(gateway, config, metrics, logger).catch(async (error: unknown) => {
    await simulator?.close();
    throw error;
  });
  logger.info({ host: config.host, port: server.port, upstream: simulator ? 'embedded simulator' : upstreamUrl }, 'voicegw listening');
  return {
    port: server.port,
    gateway,
    metrics,
    simulator,
    stop: async () => {
      gateway.post({ kind: 'stop' });
      server.close();
      await simulator?.close();
    },
    drain: async () => {
      await gateway.drain(config.limits.drainDeadlineMs);
      server.close();
      await simulator?.close();
    },
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
  const running = await startGateway(config, logger);
  const stop = (signal: string) => {
    logger.info({ signal }, 'stopping');
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
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    process.stderr.write(`voicegw: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
