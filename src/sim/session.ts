// One device's session with the simulator: the hello, the device's messages, a reply to each utterance
// (the fixture's speech, or the device's own audio echoed back), the session's fault, and its end. A device
// that must be bound first hears, instead of each reply, where to bind it.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocket, type RawData } from 'ws';
import { decodeBinary, encodeBinary, parseDeviceJson, type ProtocolVersion } from '../protocol/xiaozhi.ts';
import type { Logger } from '../observability/log.ts';
import { Echo } from './echo.ts';
import { headersOf } from './http.ts';
import { strike, type Fault, type FaultTarget } from './faults.ts';
import { Playback, type Downlink } from './playback.ts';
import type { ReplyMode, SessionOptions, SimSession } from './simulator.ts';
import type { Sentence } from './speech.ts';

/** What the simulated ASR "hears" after `listen stop`: the simulator does not recognise speech. */
const HEARD_PHRASE = 'Can we practise English?';
const CLOSE_GRACE_MS = 1000;

/** How one session behaves: the simulator's options with the session's own on top. */
export interface Behaviour {
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

export class Session implements SimSession, Downlink, FaultTarget {
  readonly id = randomUUID();
  readonly headers: Record<string, string>;
  readonly protocolVersion: ProtocolVersion;
  readonly received: { json: Record<string, unknown>[]; audio: Buffer[] } = { json: [], audio: [] };
  repliesSent = 0;
  private readonly log: Logger;
  private readonly behaviour: Behaviour;
  /** The `stall` fault struck: the session still records what the device sends, but does nothing more. */
  private stalled = false;
  private readonly playback: Playback;
  private readonly echo: Echo;
  /** While the binding prompt starts: S speaks it as a reply, but sends no `llm` with it. */
  private prompting = false;

  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    simulator: Behaviour,
    sessionOptions: ((session: SimSession) => SessionOptions) | undefined,
    log: Logger,
    /** Asked at each reply: what to speak instead while the device must be bound. */
    private readonly bindPrompt: () => string | undefined,
  ) {
    this.headers = headersOf(req);
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
    this.playback = new Playback(this, this.behaviour, (framesSent) => strike(this.behaviour.fault, framesSent, this));
    this.echo = new Echo(this.behaviour, (text, sentences) => this.reply(text, sentences), this.log);
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

  stall(): void {
    this.stalled = true;
    this.dispose(); // an echo utterance may be timing its silence
  }

  sendJson(message: Record<string, unknown>): void {
    if (this.prompting && message.type === 'llm') return;
    this.send(JSON.stringify(message));
  }

  sendAudio(packet: Buffer): void {
    this.send(encodeBinary(this.protocolVersion, packet));
  }

  send(data: string | Buffer): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(data);
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    const bytes = data as Buffer; // binaryType is the default, 'nodebuffer'
    if (!isBinary) return this.onText(bytes.toString('utf8'));
    const frame = decodeBinary(this.protocolVersion, bytes);
    if (!frame.ok) return void this.log.debug({ detail: frame.detail }, 'bad binary frame');
    if (frame.kind === 'json') return this.onText(frame.payload.toString('utf8'));
    this.received.audio.push(frame.payload);
    if (this.behaviour.reply === 'echo' && !this.stalled) this.echo.hear(frame.payload);
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
      this.echo.listen(m.mode === 'manual');
    } else if (m.type === 'listen' && m.state === 'stop') {
      if (this.behaviour.reply === 'echo') this.echo.speakBack();
      else this.reply(HEARD_PHRASE, this.behaviour.speech);
    } else if (m.type === 'listen' && m.state === 'detect') {
      // Typed text brings no audio: an echo session answers it with speech unless the device spoke first.
      if (this.behaviour.reply === 'echo' && this.echo.hasHeard) this.echo.speakBack();
      else this.reply(typeof m.text === 'string' ? m.text : HEARD_PHRASE, this.behaviour.speech);
    } else if (m.type === 'abort') {
      this.playback.abort();
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

  private reply(heard: string, sentences: Sentence[]): void {
    const prompt = this.bindPrompt();
    if (prompt !== undefined) return this.speakBindPrompt(prompt);
    this.repliesSent++;
    this.playback.play(heard, sentences);
  }

  /**
   * As S (receiveAudioHandle check_bind_device): the prompt as `stt`, then spoken as one sentence. The
   * first sentence's audio stands in for S's recorded prompt and digits.
   */
  private speakBindPrompt(text: string): void {
    this.prompting = true;
    this.playback.play(text, [{ text, packets: this.behaviour.speech[0]?.packets ?? [] }]);
    this.prompting = false;
  }

  /** The session is over: no timer may fire, and the codec state goes with it. */
  private dispose(): void {
    this.playback.cancel();
    this.echo.dispose();
  }
}
