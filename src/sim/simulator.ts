// A xiaozhi server (../../shared/XIAOZHI.md) for the gateway to talk to: the embedded default upstream,
// the peer of integration tests and of load tests. It behaves like xiaozhi-esp32-server where that
// matters to the gateway: the hello, the message order of a reply, how speech is paced, abort. In echo mode
// it speaks the user's own uplink back, so that a test can follow audio from client to server and back.
// A session may also be told to fail mid-reply (Fault), as real servers and networks do.
// This file is the server; a device's session is session.ts, its replies playback.ts and echo.ts, its
// failures faults.ts.
import { createServer, type IncomingMessage } from 'node:http';
import { WebSocketServer } from 'ws';
import type { ProtocolVersion } from '../protocol/xiaozhi.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { corruptFrames, type Fault } from './faults.ts';
import { Session, type Behaviour } from './session.ts';
import { loadSpeech, type Speech } from './speech.ts';

// Tests name the faults from here, with the rest of the simulator.
export { CORRUPT_PACKET, GARBAGE_PACKET, type Fault } from './faults.ts';

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
  /** Replies begun (each one starts with its `stt`). */
  readonly repliesSent: number;
  /** 1006 destroys the TCP connection without a close frame, as a crashed server or a broken network does. */
  close(code?: number): void;
}

export interface Simulator {
  readonly url: string;
  readonly port: number;
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

  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const http = createServer((req, res) => {
    res.writeHead(isXiaozhiPath(req) ? 426 : 404).end();
  });
  http.on('upgrade', (req, socket, head) => {
    if (!isXiaozhiPath(req)) {
      // Past the upgrade the HTTP server no longer listens for this socket's errors.
      socket.on('error', (err) => log.debug({ err }, 'rejected upgrade'));
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const session = new Session(ws, req, behaviour, options.sessionOptions, log);
      sessions.push(session);
      for (const fn of listeners) fn(session);
    });
  });

  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(options.port ?? 0, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const address = http.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const url = `ws://${host.includes(':') ? `[${host}]` : host}:${port}/xiaozhi/v1/`;
  log.debug({ url }, 'simulator listening');

  return {
    url,
    port,
    sessions,
    connectionsOf: (deviceId) => sessions.filter((s) => s.headers['device-id'] === deviceId).length,
    replyFrames: () => behaviour.speech.reduce((n, s) => n + s.packets.length, 0),
    on: (_event, fn) => void listeners.push(fn),
    close: async () => {
      await Promise.all(sessions.map((s) => s.shutdown()));
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
