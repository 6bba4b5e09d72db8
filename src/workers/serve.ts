import { Gateway } from '../actors/gateway.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import { CloseCode } from '../protocol/client.ts';
import { clientAuthenticator } from '../identity/clients.ts';
import { Provisioner, storeNeeded, type UpstreamSource } from '../identity/provisioning.ts';
import { openDeviceStore } from '../identity/store.ts';
import { startClientServer, type Scrape } from '../transport/client-server.ts';
import type { WebAssets } from '../transport/web.ts';

/** The client path of one thread: a gateway actor and the uWS server in front of it. */
export interface Serving {
  readonly port: number;
  readonly gateway: Gateway;
  /** Ends every session now (1001) and closes every socket. */
  stop(): void;
  /** PROTOCOL.md draining up to the deadline, then closes every socket. */
  drain(deadlineMs: number): Promise<void>;
  /** Closes every socket now with `code`, unheard by the sessions: for a thread that is going down. */
  abandon(code: number, reason: string): void;
}

export interface ServeOptions {
  config: Config;
  source: UpstreamSource;
  metrics: Metrics;
  logger: Logger;
  scrape: Scrape;
  /** The browser client's files, served at / (WEB_ENABLED). */
  web: WebAssets | undefined;
  /** What /readyz answers, given whether this thread's gateway admits sessions now. */
  ready?: (accepting: boolean) => boolean;
}

/** The main thread runs one with WORKERS=1; otherwise each worker thread runs its own. */
export async function serve({ config, source, metrics, logger, scrape, web, ready = (accepting) => accepting }: ServeOptions): Promise<Serving> {
  const store = storeNeeded(config) ? await openDeviceStore(config.store) : undefined;
  // Its failure to close is the operator's to know, never a crash of the thread going down.
  const closeStore = () => store?.close().catch((error: unknown) => logger.warn({ err: error }, 'device store did not close cleanly'));
  const gateway = new Gateway({ config, provisioner: new Provisioner(config, source, store, metrics), metrics, logger });
  const handler = {
    open: gateway.open.bind(gateway),
    get accepting() {
      return ready(gateway.accepting);
    },
  };
  const server = await startClientServer(handler, clientAuthenticator(config.clients), config, scrape, logger, web).catch(async (error: unknown) => {
    await closeStore();
    throw error;
  });
  const shut = () => server.closeAll(CloseCode.goingAway, 'gateway shutting down');
  return {
    port: server.port,
    gateway,
    stop: () => {
      gateway.post({ kind: 'stop' });
      shut();
      void closeStore();
    },
    drain: async (deadlineMs) => {
      try {
        await gateway.drain(deadlineMs);
        shut();
      } finally {
        await closeStore();
      }
    },
    abandon: (code, reason) => server.closeAll(code, reason),
  };
}
