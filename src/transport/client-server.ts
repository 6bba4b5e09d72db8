import { createHash, timingSafeEqual } from 'node:crypto';
import uWS from 'uWebSockets.js';
import type { Gateway } from '../actors/gateway.ts';
import type { Session } from '../actors/session.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';

interface SocketData {
  session: Session | undefined;
}

export interface ClientServer {
  readonly port: number;
  /** Stops listening; open sessions are the gateway's to end. */
  close(): void;
}

/** How far past MAX_FRAME_BYTES a frame still gets a proper 1009 rather than a cut connection. */
const OVERSIZE_HEADROOM = 4;

/** Headroom far above the sink's high-water mark, so that uWS itself never drops a frame (send result 2). */
const MAX_BACKPRESSURE = 64 * 1024 * 1024;

/**
 * The uWS package falls back to a slow pure-JS server when its native binary does not load (wrong
 * Node ABI or glibc). A gateway on that fallback would fail under load without saying why: refuse.
 */
export function assertNativeUws(): void {
  if (!String(uWS.App).includes('[native code]')) {
    throw new Error(
      `uWebSockets.js native binary did not load for Node ${process.version} (ABI ${process.versions.modules}, ` +
        `${process.platform}-${process.arch}): refusing to start on the pure-JS fallback. ` +
        'Reinstall with `npm ci` on a supported platform (see DESIGN.md, Chosen parts).',
    );
  }
}

/** The client-facing server: /v1/voice, /metrics, /healthz, /readyz. I/O only; decisions are the actors'. */
export function startClientServer(gateway: Gateway, config: Config, metrics: Metrics, logger: Logger): Promise<ClientServer> {
  assertNativeUws();
  const authorized = tokenCheck(config.clientTokens);
  const app = uWS.App();

  app.ws<SocketData>('/v1/voice', {
    compression: uWS.DISABLED,
    // uWS cuts the TCP connection without a close frame past its own limit; the gateway checks the
    // configured maximum itself below that, so that a client learns why (1009).
    maxPayloadLength: config.limits.maxFrameBytes * OVERSIZE_HEADROOM,
    maxBackpressure: MAX_BACKPRESSURE,
    closeOnBackpressureLimit: 0,
    idleTimeout: 120,
    sendPingsAutomatically: true,
    upgrade: (res, req, context) => {
      const bearer = /^Bearer\s+(.+)$/i.exec(req.getHeader('authorization'))?.[1];
      if (!authorized(bearer ?? req.getQuery('token'))) {
        res.writeStatus('401 Unauthorized').end('a valid client token is required');
        return;
      }
      res.upgrade<SocketData>(
        { session: undefined },
        req.getHeader('sec-websocket-key'),
        req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'),
        context,
      );
    },
    open: (ws) => {
      gateway.post({
        kind: 'connected',
        socket: ws,
        attach: (session) => {
          ws.getUserData().session = session;
        },
      });
    },
    message: (ws, message, isBinary) => {
      const session = ws.getUserData().session;
      if (session === undefined) return;
      if (message.byteLength > config.limits.maxFrameBytes) {
        session.post({ kind: 'client-oversized', bytes: message.byteLength });
        return;
      }
      // uWS lends `message` for this call only: copy what outlives it.
      if (isBinary) session.post({ kind: 'client-binary', data: Buffer.from(new Uint8Array(message)) });
      else session.post({ kind: 'client-text', text: Buffer.from(message).toString('utf8') });
    },
    drain: (ws) => {
      ws.getUserData().session?.post({ kind: 'drain' });
    },
    close: (ws, code) => {
      const data = ws.getUserData();
      data.session?.post({ kind: 'client-closed', code });
      data.session = undefined;
    },
  });

  app.get('/healthz', (res) => {
    res.end('ok');
  });
  app.get('/readyz', (res) => {
    if (gateway.accepting) res.end('ready');
    else res.writeStatus('503 Service Unavailable').end('not accepting sessions');
  });
  app.get('/metrics', (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    metrics.registry.metrics().then(
      (text) => {
        if (!aborted) res.cork(() => res.writeHeader('Content-Type', metrics.registry.contentType).end(text));
      },
      (error: unknown) => {
        logger.error({ err: error }, 'metrics collection failed');
        if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end());
      },
    );
  });
  app.any('/*', (res) => {
    res.writeStatus('404 Not Found').end();
  });

  return new Promise((resolve, reject) => {
    app.listen(config.host, config.port, (token) => {
      if (!token) {
        reject(new Error(`cannot listen on ${config.host}:${config.port}`));
        return;
      }
      let listening = true;
      resolve({
        port: uWS.us_socket_local_port(token),
        // Closing a listen socket twice crashes the process (uWS frees it the first time).
        close: () => {
          if (listening) uWS.us_listen_socket_close(token);
          listening = false;
        },
      });
    });
  });
}

/** Compares digests in constant time, so that response timing says nothing about a token's prefix. */
function tokenCheck(tokens: readonly string[]): (presented: string | undefined) => boolean {
  if (tokens.length === 0) return () => true;
  const digest = (t: string) => createHash('sha256').update(t).digest();
  const known = tokens.map(digest);
  return (presented) => {
    if (presented === undefined || presented === '') return false;
    const d = digest(presented);
    return known.some((k) => timingSafeEqual(k, d));
  };
}
