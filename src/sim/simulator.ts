// A xiaozhi server (../../shared/XIAOZHI.md) for the gateway to talk to: the embedded default upstream,
// the peer of integration tests and of load tests. It behaves like xiaozhi-esp32-server where that
// matters to the gateway: the hello, the message order of a reply, how speech is paced, abort. In echo mode
// it speaks the user's own uplink back, so that a test can follow audio from client to server and back.
// A session may also be told to fail mid-reply (Fault), as real servers and networks do.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import opus, { type OpusEncoder } from '@discordjs/opus';
import { OPUS_BITRATE, pcmFrames } from '../protocol/audio.ts';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { decodeBinary, encodeBinary, parseDeviceJson, type ProtocolVersion } from '../protocol/xiaozhi.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { loadSpeech, type Speech } from './speech.ts';

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

/**
 * An upstream failure, injected in each reply (speech or echo) right after its first `afterFrames` audio
 * frames (0: right after `tts start`); a reply with fewer frames never meets it.
 * - `close`: closes with `closeCode` (default 1011; a code ws may send, e.g. 1000, 1011, 4000-4999), or
 *   with 1006 destroys the TCP connection without a close frame.
 * - `stall`: from then on sends nothing (no more audio, no `tts stop`) and answers nothing, yet stays open.
 * - `malformed-json`: one text message that is not JSON, then the reply goes on.
 * - `garbage-binary`: one extra audio message, framed for the protocol version, whose payload is
 *   GARBAGE_PACKET; then the reply goes on.
 * - `oversized`: one unframed binary message of `oversizedBytes` (default 2 MiB, beyond a sane maximum
 *   message size), then the reply goes on as long as the peer stays.
 */
export interface Fault {
  kind: 'close' | 'stall' | 'malformed-json' | 'garbage-binary' | 'oversized';
  afterFrames: number;
  closeCode?: number;
  oversizedBytes?: number;
}

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

/**
 * A well-formed TOC (hybrid fullband 20 ms, code 3: three CBR frames, 60 ms like the fixture's packets)
 * whose 4 payload bytes cannot split into 3 equal frames, so opus_decode answers OPUS_INVALID_PACKET.
 */
export const CORRUPT_PACKET: Buffer = Buffer.from([0x6b, 0x03, 0x00, 0x00, 0x00, 0x00]);

/** The `garbage-binary` fault's payload: random bytes behind a TOC of code 3 that counts zero frames, which no decoder accepts. */
export const GARBAGE_PACKET: Buffer = Buffer.from('0300a7f15c3e9b20d4680e7fc2195a8b3d61e4f0', 'hex');

/** xiaozhi-esp32-server sends this many frames of a sentence at once, then one per frame duration. */
const PREBUFFER_FRAMES = 5;
/** Node timers run on a millisecond clock and may fire a fraction of a millisecond before their due time. */
const TIMER_SLACK_MS = 1;
/** What the simulated ASR "hears" after `listen stop`: the simulator does not recognise speech. */
const HEARD_PHRASE = 'Can we practise English?';
const CLOSE_GRACE_MS = 1000;
/** The echo is encoded like a server's speech: about 24 kbit/s. */
const OVERSIZED_BYTES = 2 * 1024 * 1024;

type Sentence = { text: string; packets: Buffer[] };

/** How one session behaves: the simulator's options with the session's own on top. */
interface Behaviour {
  answerHello: boolean;
  pacing: 'xiaozhi' | 'burst';
  stopDelayMs: number;
  /** Of the downlink, speech and echo alike: what the hello announces. */
  sampleRate: number;
  frameMs: number;
  speech: Sentence[];
  reply: ReplyMode;
  echoSilenceMs: number;
  fault: Fault | undefined;
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
    speech: corrupt(speech.sentences, new Set(options.corruptFrames ?? [])),
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

function corrupt(sentences: Sentence[], frames: Set<number>): Sentence[] {
  let n = 0;
  return sentences.map((s) => ({ text: s.text, packets: s.packets.map((p) => (frames.has(n++) ? CORRUPT_PACKET : p)) }));
}

class Session implements SimSession {
  readonly id = randomUUID();
  readonly headers: Record<string, string> = {};
  readonly protocolVersion: ProtocolVersion;
  readonly received: { json: Record<string, unknown>[]; audio: Buffer[] } = { json: [], audio: [] };
  repliesSent = 0;
  private readonly log: Logger;
  /** True from a reply's `stt` until its `tts stop`: the real server's "speaking" state. */
  private replying = false;
  /** Audio frames of the reply in progress sent so far. */
  private framesSent = 0;
  /** The `stall` fault struck: the session still records what the device sends, but does nothing more. */
  private stalled = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly behaviour: Behaviour;
  /** Echo: whether the utterance ends on silence (the device's last `listen start` was not manual). */
  private endOnSilence = false;
  /** Echo: the utterance so far, decoded at the downlink rate. */
  private heard: Buffer[] = [];
  private silenceTimer: NodeJS.Timeout | undefined;
  /** Echo: the session's Opus decoder and encoder (one native object holds both), made on first use. */
  private codec: OpusEncoder | undefined;

  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    simulator: Behaviour,
    sessionOptions: ((session: SimSession) => SessionOptions) | undefined,
    log: Logger,
  ) {
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) this.headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    const version = Number(this.headers['protocol-version'] ?? 1);
    this.protocolVersion = version === 2 || version === 3 ? version : 1;
    const own = sessionOptions?.(this) ?? {};
    this.behaviour = {
      ...simulator,
      answerHello: own.answerHello ?? simulator.answerHello,
      pacing: own.pacing ?? simulator.pacing,
      reply: own.reply ?? simulator.reply,
      echoSilenceMs: own.echoSilenceMs ?? simulator.echoSilenceMs,
      fault: own.fault ?? simulator.fault,
    };
    this.log = log.child({ simSession: this.id });
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('close', () => this.dispose());
    // The peer may vanish at any moment: that ends this session, never the simulator.
    ws.on('error', (err) => this.log.debug({ err }, 'socket error'));
  }

  close(code?: number): void {
    this.dispose();
    // ws refuses to send 1006 in a close frame: the code only ever reports a connection lost without one.
    if (code === 1006) this.ws.terminate();
    else this.ws.close(code);
  }

  /** Closes politely, but does not let a peer that never answers the close hold the simulator open. */
  shutdown(): Promise<void> {
    this.dispose();
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const force = setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS);
      this.ws.once('close', () => {
        clearTimeout(force);
        resolve();
      });
      this.ws.close(1001);
    });
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    const bytes = data as Buffer; // binaryType is the default, 'nodebuffer'
    if (!isBinary) return this.onText(bytes.toString('utf8'));
    const frame = decodeBinary(this.protocolVersion, bytes);
    if (!frame.ok) return void this.log.debug({ detail: frame.detail }, 'bad binary frame');
    if (frame.kind === 'json') return this.onText(frame.payload.toString('utf8'));
    this.received.audio.push(frame.payload);
    if (this.behaviour.reply === 'echo' && !this.stalled) this.hear(frame.payload);
  }

  private onText(text: string): void {
    const parsed = parseDeviceJson(text);
    if (!parsed.ok) return void this.log.debug({ detail: parsed.detail }, 'bad device message');
    const m = parsed.message;
    this.received.json.push(m);
    if (this.stalled) return;
    if (m.type === 'hello') {
      if (this.behaviour.answerHello) this.answerHello();
    } else if (m.type === 'listen' && m.state === 'start') {
      this.endOnSilence = m.mode !== 'manual';
      this.forget();
    } else if (m.type === 'listen' && m.state === 'stop') {
      if (this.behaviour.reply === 'echo') this.echo();
      else this.reply(HEARD_PHRASE, this.behaviour.speech);
    } else if (m.type === 'listen' && m.state === 'detect') {
      // Typed text brings no audio: an echo session answers it with speech unless the device spoke first.
      if (this.behaviour.reply === 'echo' && this.heard.length > 0) this.echo();
      else this.reply(typeof m.text === 'string' ? m.text : HEARD_PHRASE, this.behaviour.speech);
    } else if (m.type === 'abort') {
      this.abort();
    } else if (m.type !== 'listen' && m.type !== 'mcp') {
      this.log.debug({ type: m.type }, 'unknown device message');
    }
  }

  private answerHello(): void {
    this.sendJson({
      type: 'hello',
      version: 1,
      transport: 'websocket',
      session_id: this.id,
      audio_params: { format: 'opus', sample_rate: this.behaviour.sampleRate, channels: 1, frame_duration: this.behaviour.frameMs },
    });
  }

  /** Echo: adds an uplink packet to the utterance; in auto and realtime mode, silence from now on ends it. */
  private hear(packet: Buffer): void {
    try {
      this.heard.push(this.opus().decode(packet));
    } catch (err) {
      return void this.log.debug({ err }, 'undecodable uplink packet');
    }
    if (!this.endOnSilence) return;
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.echo(), this.behaviour.echoSilenceMs);
  }

  /** Echo: ends the utterance and speaks it back as one sentence, encoded like the server's speech. */
  private echo(): void {
    const pcm = Buffer.concat(this.heard);
    this.forget();
    const { sampleRate, frameMs } = this.behaviour;
    const text = `echo: ${(pcm.length / 2 / sampleRate).toFixed(2)} s of speech`;
    const packets = pcmFrames(pcm, sampleRate, frameMs).map((frame) => this.opus().encode(frame));
    this.reply(text, packets.length > 0 ? [{ text, packets }] : []);
  }

  /** Echo: drops the utterance heard so far. */
  private forget(): void {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = undefined;
    this.heard = [];
  }

  private opus(): OpusEncoder {
    if (this.codec === undefined) {
      // Created at the downlink rate: a decoder outputs any rate whatever rate the packet was encoded at.
      this.codec = new opus.OpusEncoder(this.behaviour.sampleRate, 1);
      this.codec.setBitrate(OPUS_BITRATE);
    }
    return this.codec;
  }

  private reply(heard: string, sentences: Sentence[]): void {
    if (this.replying) this.abort();
    this.replying = true;
    this.repliesSent++;
    this.framesSent = 0;
    this.sendJson({ type: 'stt', text: heard, session_id: this.id });
    this.sendJson({ type: 'llm', text: '😊', emotion: 'happy', session_id: this.id });
    this.sendJson({ type: 'tts', state: 'start', session_id: this.id });
    if (this.goesOn()) this.playSentence(sentences, 0);
  }

  private playSentence(sentences: Sentence[], index: number): void {
    const sentence = sentences[index];
    if (sentence === undefined) {
      this.timer = setTimeout(() => this.stop(), this.behaviour.stopDelayMs);
      return;
    }
    this.sendJson({ type: 'tts', state: 'sentence_start', text: sentence.text, session_id: this.id });
    const start = performance.now();
    let next = 0;
    const sendDue = (): void => {
      this.timer = undefined;
      while (next < sentence.packets.length) {
        // Five frames at once, then one per frame duration against the clock, so that delays never add up.
        const due = this.behaviour.pacing === 'burst' ? 0 : start + Math.max(0, next - PREBUFFER_FRAMES + 1) * this.behaviour.frameMs;
        const wait = due - performance.now();
        if (wait > TIMER_SLACK_MS) {
          this.timer = setTimeout(sendDue, wait);
          return;
        }
        this.sendAudio(sentence.packets[next++]!);
        this.framesSent++;
        if (!this.goesOn()) return;
      }
      // The next sentence starts on a fresh turn of the event loop, so that an abort can land between sentences.
      this.timer = setTimeout(() => this.playSentence(sentences, index + 1), 0);
    };
    sendDue();
  }

  /** Injects the session's fault if it is due now; false when the reply must go no further. */
  private goesOn(): boolean {
    const fault = this.behaviour.fault;
    if (fault === undefined || fault.afterFrames !== this.framesSent) return true;
    switch (fault.kind) {
      case 'close':
        this.close(fault.closeCode ?? 1011);
        return false;
      case 'stall':
        this.stalled = true;
        this.dispose(); // an echo utterance may be timing its silence
        return false;
      case 'malformed-json':
        this.send('{"type":"tts",');
        return true;
      case 'garbage-binary':
        this.sendAudio(GARBAGE_PACKET);
        return true;
      case 'oversized':
        this.send(Buffer.alloc(fault.oversizedBytes ?? OVERSIZED_BYTES));
        return true;
    }
  }

  private abort(): void {
    this.cancelTimer();
    this.stop();
  }

  private stop(): void {
    this.timer = undefined;
    this.replying = false;
    this.sendJson({ type: 'tts', state: 'stop', session_id: this.id });
  }

  private cancelTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The session is over: no timer may fire, and the codec state goes with it. */
  private dispose(): void {
    this.cancelTimer();
    this.forget();
    this.codec = undefined;
  }

  private sendJson(message: Record<string, unknown>): void {
    this.send(JSON.stringify(message));
  }

  private sendAudio(packet: Buffer): void {
    this.send(encodeBinary(this.protocolVersion, packet));
  }

  private send(data: string | Buffer): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(data);
  }
}
