import uWS from 'uWebSockets.js';
import type { Config } from '../config.ts';
import type { Authenticate, ClientIdentity } from '../identity/clients.ts';
import { Registry } from 'prom-client';
import type { Logger } from '../observability/log.ts';
import type { ClientSocket } from './socket-sink.ts';
import { serveWeb, type WebAssets } from './web.ts';

/** One client's connection, as the server reports it: what it sent, when it drained, how it closed. */
export interface Connection {
  text(text: string): void;
  /** `data` is the gateway's own copy. */
  binary(data: Buffer): void;
  /** A frame over MAX_FRAME_BYTES: refused unread. */
  oversized(bytes: number): void;
  /** The socket's send buffer has room again. */
  drain(): void;
  /** tooLarge: uWS cut the connection itself, for a frame far past MAX_FRAME_BYTES (it sends no close frame then). */
  closed(code: number, tooLarge: boolean): void;
}

/** Who serves the connections: main wires it to the gateway. */
export interface ConnectionHandler {
  /** A client connected as `identity`; `attach` is called with its connection once admitted (a refused one is ended). */
  open(socket: ClientSocket, identity: ClientIdentity, attach: (connection: Connection) => void): void;
  /** Whether a new session would be admitted now: what /readyz answers. */
  readonly accepting: boolean;
}

interface SocketData {
  identity: ClientIdentity;
  connection: Connection | undefined;
}

export interface ClientServer {
  readonly port: number;
  /** Stops listening; open sessions are the gateway's to end. */
  close(): void;
  /**
   * Stops listening, ends every WebSocket still open with `code` (their sessions hear nothing more) and
   * closes every other socket (HTTP keep-alive): a thread must, before it ends, or uWS aborts Node.
   */
  closeAll(code: number, reason: string): void;
}

/** The whole gateway's metrics as Prometheus text: what /metrics answers. */
export type Scrape = () => Promise<string>;

/**
 * uWS's own payload limit, as a multiple of MAX_FRAME_BYTES. Past it uWS closes the TCP connection at
 * the frame's header, without a close frame, and reads no more of it; below it a frame is buffered whole
 * before the gateway sees it. So the gateway checks MAX_FRAME_BYTES itself and answers 1009 for every
 * frame up to this ceiling (1 MiB by default): well past what any client sends by mistake, and the
 * most one connection can make the gateway hold before its frame is refused.
 */
const FRAME_CEILING = 16;
/** What uWS v20.30 says when it cuts a connection for a frame over its limit. */
const UWS_TOO_BIG = 'Received too big message';
/** RFC 6455: the one version of the protocol; uWS v20.30 upgrades whatever a client names. */
const WEBSOCKET_VERSION = '13';

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

/**
 * The client-facing server: /v1/voice, /metrics, /healthz, /readyz, and the browser client's files when
 * `web` is given. I/O only; decisions are the actors'.
 */
export function startClientServer(
  handler: ConnectionHandler,
  authenticate: Authenticate,
  config: Config,
  scrape: Scrape,
  logger: Logger,
  web: WebAssets | undefined,
): Promise<ClientServer> {
  assertNativeUws();
  const app = uWS.App();
  const open = new Set<uWS.WebSocket<SocketData>>();

  app.ws<SocketData>('/v1/voice', {
    compression: uWS.DISABLED,
    maxPayloadLength: config.limits.maxFrameBytes * FRAME_CEILING,
    maxBackpressure: MAX_BACKPRESSURE,
    closeOnBackpressureLimit: 0,
    idleTimeout: 120,
    sendPingsAutomatically: true,
    upgrade: (res, req, context) => {
      if (req.getHeader('sec-websocket-version') !== WEBSOCKET_VERSION) {
        upgradeRequired(res);
        return;
      }
      const bearer = /^Bearer\s+(.+)$/i.exec(req.getHeader('authorization'))?.[1];
      // uWS lends `req` for this call only: what the upgrade needs is read now.
      const key = req.getHeader('sec-websocket-key');
      const protocol = req.getHeader('sec-websocket-protocol');
      const extensions = req.getHeader('sec-websocket-extensions');
      const upgrade = (identity: ClientIdentity | undefined) => {
        if (identity === undefined) res.writeStatus('401 Unauthorized').end('a valid client token is required');
        else res.upgrade<SocketData>({ identity, connection: undefined }, key, protocol, extensions, context);
      };
      const identity = authenticate(bearer ?? req.getQuery('token'));
      if (!(identity instanceof Promise)) return upgrade(identity);
      // A JWT is verified off this call: the client may be gone by the time it is.
      let aborted = false;
      res.onAborted(() => {
        aborted = true;
      });
      identity.then(
        (who) => {
          if (!aborted) res.cork(() => upgrade(who));
        },
        (error: unknown) => {
          logger.error({ err: error }, 'client authentication failed');
          if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end());
        },
      );
    },
    open: (ws) => {
      open.add(ws);
      handler.open(ws, ws.getUserData().identity, (connection) => {
        ws.getUserData().connection = connection;
      });
    },
    message: (ws, message, isBinary) => {
      const connection = ws.getUserData().connection;
      if (connection === undefined) return;
      if (message.byteLength > config.limits.maxFrameBytes) {
        connection.oversized(message.byteLength);
        return;
      }
      // uWS lends `message` for this call only: copy what outlives it.
      if (isBinary) connection.binary(Buffer.from(new Uint8Array(message)));
      else connection.text(Buffer.from(message).toString('utf8'));
    },
    drain: (ws) => {
      ws.getUserData().connection?.drain();
    },
    close: (ws, code, message) => {
      open.delete(ws);
      const data = ws.getUserData();
      const tooLarge = code === 1006 && Buffer.from(message).toString('latin1') === UWS_TOO_BIG;
      data.connection?.closed(code, tooLarge);
      data.connection = undefined;
    },
  });

  // A request uWS did not take for an upgrade: no Upgrade header, or a malformed Sec-WebSocket-Key.
  app.get('/v1/voice', (res, req) => {
    if (req.getHeader('upgrade').toLowerCase() === 'websocket') res.writeStatus('400 Bad Request').end('malformed WebSocket upgrade');
    else upgradeRequired(res);
  });
  app.get('/healthz', (res) => {
    res.end('ok');
  });
  app.get('/readyz', (res) => {
    if (handler.accepting) res.end('ready');
    else res.writeStatus('503 Service Unavailable').end('not accepting sessions');
  });
  app.get('/metrics', (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    scrape().then(
      (text) => {
        if (!aborted) res.cork(() => res.writeHeader('Content-Type', Registry.PROMETHEUS_CONTENT_TYPE).end(text));
      },
      (error: unknown) => {
        logger.error({ err: error }, 'metrics collection failed');
        if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end());
      },
    );
  });
  if (web !== undefined) serveWeb(app, web);
  app.any('/*', (res) => {
    res.writeStatus('404 Not Found').end();
  });

  return new Promise((resolve, reject) => {
    app.listen(config.host, config.port, (token) => {
      if (!token) {
        closeApp(app);
        reject(new Error(`cannot listen on ${config.host}:${config.port}`));
        return;
      }
      let listening = true;
      let closed = false;
      // Closing a listen socket twice crashes the process (uWS frees it the first time).
      const close = () => {
        if (listening) uWS.us_listen_socket_close(token);
        listening = false;
      };
      resolve({
        port: uWS.us_socket_local_port(token),
        close,
        closeAll: (code, reason) => {
          close();
          if (closed) return;
          closed = true;
          for (const ws of [...open]) {
            ws.getUserData().connection = undefined;
            ws.end(code, reason);
          }
          closeApp(app);
        },
      });
    });
  });
}

/** Closes every socket of the app, listening or not. uWS v20.30 has App.close but does not declare it. */
function closeApp(app: uWS.TemplatedApp): void {
  (app as uWS.TemplatedApp & { close(): void }).close();
}

/** RFC 6455 4.4: name the version the server speaks. */
function upgradeRequired(res: uWS.HttpResponse): void {
  res.writeStatus('426 Upgrade Required').writeHeader('Sec-WebSocket-Version', WEBSOCKET_VERSION).end('a WebSocket (version 13) upgrade is required');
}
