// A xiaozhi server (../../shared/XIAOZHI.md) for the gateway to talk to: the embedded default upstream,
// the peer of integration tests and of load tests. It behaves like xiaozhi-esp32-server where that
// matters to the gateway: the hello, the message order of a reply, how speech is paced, abort. In echo mode
// it speaks the user's own uplink back, so that a test can follow audio from client to server and back.
// A session may also be told to fail mid-reply (Fault), as real servers and networks do. It also hands out
// WebSocket URLs and tokens over OTA, and has devices bound in a console, as the real servers do
// (../../shared/XIAOZHI-OTA.md).
// This file is the server; a device's session is session.ts, its replies playback.ts and echo.ts, its
// failures faults.ts, OTA and binding provisioning.ts.
import { createServer, type IncomingMessage } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import type { ProtocolVersion } from '../protocol/xiaozhi.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { corruptFrames, type Fault } from './faults.ts';
import { headersOf, readRequest, writeAnswer } from './http.ts';
import { Provisioning, type HttpRequest, type OtaFault, type ProvisioningOptions } from './provisioning.ts';
import { Session, type Behaviour } from './session.ts';
import { loadSpeech, type Speech } from './speech.ts';
import { handshakeIdentity } from './tokens.ts';

// Tests name the faults from here, with the rest of the simulator.
export { CORRUPT_PACKET, GARBAGE_PACKET, type Fault } from './faults.ts';
export type { OtaFault, ProvisioningMode, ProvisioningOptions } from './provisioning.ts';

/** What S sends, as its only message, to a handshake whose token it refuses; then it closes. */
export const AUTH_FAILED_TEXT = '认证失败';

/** 'speech': the fixture's sentences. 'echo': the user's own uplink audio of the utterance, spoken back. */
export type ReplyMode = 'speech' | 'echo';

export interface SimulatorOptions {
  host?: string;
  port?: number;
  logger?: Logger;
  speech?: Speech;
  /** 'xiaozhi' (default): per sentence 5 frames at once, then real time. 'burst': each sentence at once. */
  pacing?: 'xiaozhi' | 'burst';
  /** How long after the last frame `tts stop` follows. */
  stopDelayMs?: number;
  /** false: never answer the hello (default true). */
  answerHello?: boolean;
  /** A fault in every reply of every session (default none); sessionOptions may choose one for a session. */
  fault?: Fault;
  /** Frames of the speech reply (counted from 0 over all its sentences) sent as a packet libopus refuses. */
  corruptFrames?: number[];
  /** How sessions reply (default 'speech'); sessionOptions may choose otherwise for a session. */
  reply?: ReplyMode;
  /**
   * Echo, after `listen start` in mode auto or realtime: the utterance ends when no uplink frame came for
   * this long after at least one (default 800). It also ends at `listen stop`, the only end in manual mode.
   */
  echoSilenceMs?: number;
  /**
   * Overrides for one session, asked once as it connects (its headers are known, no message has arrived),
   * so that sessions of one simulator can behave differently, e.g. chosen by Device-Id or by arrival order.
   */
  sessionOptions?: (session: SimSession) => SessionOptions;
  /**
   * Which xiaozhi server's OTA, activation and token check to play. Absent: single-module without auth,
   * every device counts as bound and no token is checked.
   */
  provisioning?: ProvisioningOptions;
}

/**
 * What may differ between the sessions of one simulator; options left out keep the simulator's value.
 * To fail only a Device-Id's first connection, so that the gateway's reconnect finds a healthy server:
 * `sessionOptions: (s) => (sim.connectionsOf(s.headers['device-id'] ?? '') === 0 ? { fault } : {})`.
 */
export type SessionOptions = Pick<SimulatorOptions, 'reply' | 'echoSilenceMs' | 'pacing' | 'answerHello' | 'fault'>;

export interface SimSession {
  readonly id: string;
  readonly headers: Record<string, string>;
  readonly protocolVersion: ProtocolVersion;
  /** What the device sent, in order; audio unwrapped from v2/v3 framing. */
  readonly received: { json: Record<string, unknown>[]; audio: Buffer[] };
  /** Replies begun (each one starts with its `stt`); binding prompts are not counted. */
  readonly repliesSent: number;
  /** 1006 destroys the TCP connection without a close frame, as a crashed server or a broken network does. */
  close(code?: number): void;
}

export interface Simulator {
  readonly url: string;
  readonly port: number;
  /** `http://host:port/xiaozhi/ota/`, with the trailing slash devices need. */
  readonly otaUrl: string;
  /** `http://host:port/console/`: POST `bind/<code>` binds a device, GET `devices` lists them. */
  readonly consoleUrl: string;
  /** Every OTA and /activate request received, in order. */
  readonly otaRequests: readonly HttpRequest[];
  /** Binds the unbound device holding this code, as a user does in the console; its Device-Id, or undefined if no device holds it. */
  bind(code: string): string | undefined;
  /** The code an unbound device must be bound with. */
  codeOf(deviceId: string): string | undefined;
  /** From now on (undefined: none). */
  setOtaFault(fault: OtaFault | undefined): void;
  /** A new random auth key: every token issued before is refused at the handshake from now on (also turns checking on where it was off). */
  rotateAuthKey(): void;
  /** Every session ever accepted, in order. */
  readonly sessions: readonly SimSession[];
  /** How many sessions this Device-Id has opened; in sessionOptions the session being opened is not counted yet. */
  connectionsOf(deviceId: string): number;
  /** Frames of the speech reply. */
  replyFrames(): number;
  close(): Promise<void>;
  on(event: 'session', fn: (s: SimSession) => void): void;
}

export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const host = options.host ?? '127.0.0.1';
  const log = options.logger ?? silentLogger;
  const speech = options.speech ?? loadSpeech();
  const behaviour: Behaviour = {
    answerHello: options.answerHello ?? true,
    pacing: options.pacing ?? 'xiaozhi',
    stopDelayMs: options.stopDelayMs ?? 420,
    sampleRate: speech.sampleRate,
    frameMs: speech.frameMs,
    speech: corruptFrames(speech.sentences, options.corruptFrames ?? []),
    reply: options.reply ?? 'speech',
    echoSilenceMs: options.echoSilenceMs ?? 800,
    fault: options.fault,
  };
  const sessions: Session[] = [];
  const listeners: ((s: SimSession) => void)[] = [];
  /** Connections told "认证失败", until their close completes. */
  const refused = new Set<WebSocket>();

  const http = createServer();
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(options.port ?? 0, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const address = http.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const origin = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const url = `ws://${origin}/xiaozhi/v1/`;
  const otaUrl = `http://${origin}/xiaozhi/ota/`;
  const consoleUrl = `http://${origin}/console/`;
  const provisioning = new Provisioning(options.provisioning, { ws: url, console: consoleUrl });
  log.debug({ url, otaUrl, consoleUrl }, 'simulator listening');

  // Handlers go on once the URLs they hand out are known; no connection is served before: the code after
  // `await` runs before any I/O callback.
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  http.on('request', (req, res) => {
    readRequest(req)
      .then((request) => {
        if (request === undefined) return void writeAnswer(res, { status: 413, body: 'request body too large' });
        const answer = provisioning.answer(request, Date.now());
        if (answer === undefined) res.writeHead(isXiaozhiPath(req) ? 426 : 404).end();
        else if (answer !== 'hold') writeAnswer(res, answer);
      })
      .catch((err: unknown) => {
        // A request must never take the simulator down; its peer loses only this connection.
        log.warn({ err }, 'could not answer an HTTP request');
        res.destroy();
      });
  });
  http.on('upgrade', (req, socket, head) => {
    if (!isXiaozhiPath(req)) {
      // Past the upgrade the HTTP server no longer listens for this socket's errors.
      socket.on('error', (err) => log.debug({ err }, 'rejected upgrade'));
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const headers = headersOf(req);
    const refusal = provisioning.refusal(req.url ?? '', headers, Date.now());
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (refusal !== undefined) return refuse(ws, refusal);
      const { deviceId } = handshakeIdentity(req.url ?? '', headers);
      const session = new Session(ws, req, behaviour, options.sessionOptions, log, () => provisioning.bindPrompt(deviceId));
      sessions.push(session);
      for (const fn of listeners) fn(session);
    });
  });

  /** As S: the upgrade succeeds, and the device's first message is this text instead of a hello. */
  function refuse(ws: WebSocket, reason: string): void {
    log.debug({ reason }, 'handshake refused');
    refused.add(ws);
    ws.on('error', (err) => log.debug({ err }, 'refused socket error'));
    ws.once('close', () => refused.delete(ws));
    ws.send(AUTH_FAILED_TEXT);
    ws.close(1000);
  }

  return {
    url,
    port,
    otaUrl,
    consoleUrl,
    otaRequests: provisioning.requests,
    bind: (code) => provisioning.bind(code),
    codeOf: (deviceId) => provisioning.codeOf(deviceId),
    setOtaFault: (fault) => void (provisioning.fault = fault),
    rotateAuthKey: () => provisioning.rotateKey(),
    sessions,
    connectionsOf: (deviceId) => sessions.filter((s) => s.headers['device-id'] === deviceId).length,
    replyFrames: () => behaviour.speech.reduce((n, s) => n + s.packets.length, 0),
    on: (_event, fn) => void listeners.push(fn),
    close: async () => {
      await Promise.all(sessions.map((s) => s.shutdown()));
      for (const ws of refused) ws.terminate();
      wss.close();
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    },
  };
}

function isXiaozhiPath(req: IncomingMessage): boolean {
  const path = (req.url ?? '').split('?')[0];
  return path === '/xiaozhi/v1/' || path === '/xiaozhi/v1';
}
