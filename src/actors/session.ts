import { createHash } from 'node:crypto';
import { identity, Subject, type Subscription } from 'rxjs';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import {
  CloseCode,
  negotiate,
  parseClientMessage,
  PROTOCOL_VERSION,
  type ClientHello,
  type ClientMessage,
  type ErrorCode,
  type Negotiated,
  type ServerMessage,
  type SessionState,
} from '../protocol/client.ts';
import { opusPacketDurationMs, type ServerMessage as XiaozhiMessage } from '../protocol/xiaozhi.ts';
import { decodeOpus } from '../streams/decode-opus.ts';
import { encodeOpus, FLUSH, type UplinkPcm } from '../streams/encode-opus.ts';
import type { UpstreamEvent } from '../streams/events.ts';
import { parse } from '../streams/parse.ts';
import { pace } from '../streams/pace.ts';
import { DISCARD, toClient, type Outbound } from '../streams/to-client.ts';
import { SocketSink, type ClientSocket } from '../transport/socket-sink.ts';
import { Upstream, UpstreamError, type UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';

/** The client's socket as the session sees it. */
export interface SessionSocket extends ClientSocket {
  end(code: number, reason: string): void;
}

export type SessionMessage =
  | { kind: 'client-text'; text: string }
  | { kind: 'client-binary'; data: Buffer }
  | { kind: 'client-closed'; code: number }
  | { kind: 'drain' }
  | { kind: 'hello-timeout' }
  | { kind: 'shutdown'; code: number; reason: string }
  | { kind: 'upstream-failed'; error: unknown }
  | UpstreamEvent;

export type SessionOutcome = 'normal' | 'client_gone' | 'hello_timeout' | 'upstream_unavailable' | 'upstream_lost' | 'internal' | 'shutdown';

export interface SessionDeps {
  config: Config;
  /** Where the upstream is; the embedded simulator's when none is configured. */
  upstreamUrl: string;
  metrics: Metrics;
  logger: Logger;
  openUpstream?: (options: UpstreamOptions) => Upstream;
  /** Told once, when the session has ended for good. */
  onEnded: (session: Session, outcome: SessionOutcome) => void;
}

/** XIAOZHI.md: servers expect the firmware's 16 kHz uplink; the packets' frame length is the client's. */
const UPSTREAM_UPLINK_RATE = 16000;
/** The largest 60 ms Opus packet: three 20 ms frames of 1275 bytes each. */
const MAX_OPUS_PACKET_BYTES = 3 * 1275;
/** XIAOZHI.md: what servers speak when their hello does not say. */
const UPSTREAM_DEFAULT_RATE = 24000;

/** 1005 is a close frame without a code: a clean close all the same. */
const CLEAN_CLOSES = new Set([1000, 1001, 1005]);

type Phase = 'awaiting-hello' | 'connecting' | 'open' | 'closed';

/**
 * One client session: the only code that changes its state. It owns the upstream connection, the
 * downlink pipeline (upstream → parse → decodeOpus → here) and the outbound one (here → toClient →
 * socket sink), so everything the client receives leaves through one ordered queue.
 */
export class Session extends Actor<SessionMessage> {
  readonly id: string;
  readonly log: Logger;
  private phase: Phase = 'awaiting-hello';
  private state: SessionState = 'ready';
  private hello: ClientHello | undefined;
  private negotiated: Negotiated | undefined;
  private upstream: Upstream | undefined;
  private downlink: Subscription | undefined;
  private sink: SocketSink | undefined;
  private readonly outbound = new Subject<Outbound>();
  /** pcm16 uplink only: the client's PCM on its way to the session's encoder. */
  private uplink: Subject<UplinkPcm> | undefined;
  private helloTimer: NodeJS.Timeout | undefined;
  private connectStartedAt = 0;
  /** After an abort, the rest of that reply's audio still in flight from the upstream is discarded. */
  private discarding = false;
  private readonly upstreamFrames;
  private readonly abortedFrames;
  private readonly uplinkFrames;

  constructor(
    private readonly socket: SessionSocket,
    private readonly deps: SessionDeps,
    id: string,
  ) {
    super();
    this.id = id;
    this.log = deps.logger.child({ sessionId: id });
    this.upstreamFrames = deps.metrics.upstreamFrames;
    this.abortedFrames = deps.metrics.framesDropped.labels('aborted');
    this.uplinkFrames = deps.metrics.uplinkFrames;
    this.helloTimer = setTimeout(() => this.post({ kind: 'hello-timeout' }), deps.config.limits.helloTimeoutMs);
  }

  protected receive(m: SessionMessage): void {
    if (this.phase === 'closed') return;
    switch (m.kind) {
      case 'audio':
        return this.onUpstreamAudio(m);
      case 'message':
        return this.onUpstreamMessage(m.message);
      case 'invalid':
        this.deps.metrics.badMessages.labels('upstream_invalid').inc();
        this.log.debug({ detail: m.detail }, 'upstream message skipped');
        return;
      case 'client-text':
        return this.onClientText(m.text);
      case 'client-binary':
        return this.onClientAudio(m.data);
      case 'drain':
        this.sink?.drain();
        return;
      case 'hello-timeout':
        if (this.phase === 'awaiting-hello') this.end(CloseCode.helloTimeout, 'no hello in time', 'hello_timeout');
        return;
      case 'upstream-failed':
        return this.onUpstreamFailed(m.error);
      case 'shutdown':
        return this.end(m.code, m.reason, 'shutdown');
      case 'client-closed':
        return this.finish(CLEAN_CLOSES.has(m.code) ? 'normal' : 'client_gone');
    }
  }

  protected failed(error: unknown, message: SessionMessage): void {
    this.log.error({ err: error, message: message.kind }, 'session failed');
    if (this.phase === 'closed') return;
    this.sendError('internal', 'the gateway failed on this session');
    this.end(CloseCode.internal, 'internal error', 'internal');
  }

  // Client side.

  private onClientText(text: string): void {
    const parsed = parseClientMessage(text);
    if (!parsed.ok) {
      this.deps.metrics.badMessages.labels(parsed.reason).inc();
      this.sendError('bad_message', parsed.detail);
      return;
    }
    const message = parsed.message;
    this.deps.metrics.clientMessages.labels(message.type).inc();
    if (this.phase === 'awaiting-hello') {
      if (message.type === 'hello') this.connect(message);
      else this.sendError('hello_required', `send hello before ${message.type}`);
      return;
    }
    if (message.type === 'hello') {
      this.sendError('bad_message', 'hello was already received');
      return;
    }
    if (this.phase === 'connecting') {
      this.sendError('hello_required', `wait for the gateway's hello before ${message.type}`);
      return;
    }
    this.onConversation(message);
  }

  private onConversation(message: Exclude<ClientMessage, { type: 'hello' }>): void {
    const upstream = this.upstream!;
    switch (message.type) {
      case 'listen':
        if (message.state === 'start') {
          // Barge-in: speaking over the reply ends it first, as the xiaozhi firmware does.
          if (this.state === 'speaking') this.abortReply();
          upstream.send({ type: 'listen', state: 'start', mode: message.mode });
          this.setState('listening');
        } else {
          this.uplink?.next(FLUSH);
          upstream.send({ type: 'listen', state: 'stop' });
          this.inputEnded();
        }
        return;
      case 'text':
        upstream.send({ type: 'listen', state: 'detect', text: message.text });
        this.inputEnded();
        return;
      case 'abort':
        this.abortReply();
        this.setState('ready');
        return;
      case 'mcp':
        upstream.send({ type: 'mcp', payload: message.payload });
        return;
      case 'ping':
        this.emit({ type: 'pong', id: message.id });
        return;
    }
  }

  /** Ends the current reply: the upstream stops, and not one more of its frames reaches the client. */
  private abortReply(): void {
    this.upstream!.send({ type: 'abort', reason: 'client_abort' });
    this.discarding = true;
    this.outbound.next(DISCARD);
  }

  private onClientAudio(data: Buffer): void {
    if (this.phase !== 'open') {
      this.sendError('hello_required', 'audio before the session is ready is dropped');
      return;
    }
    if (this.uplink !== undefined) {
      if (data.length % 2 !== 0) {
        this.sendError('bad_audio', `pcm16 frames hold whole 16-bit samples: ${data.length} bytes is odd`);
        return;
      }
      this.uplink.next(data);
      return;
    }
    if (data.length === 0 || data.length > MAX_OPUS_PACKET_BYTES || opusPacketDurationMs(data) === 0) {
      this.sendError('bad_audio', `not an Opus packet: ${data.length} bytes (at most ${MAX_OPUS_PACKET_BYTES})`);
      return;
    }
    this.sendUplink(data);
  }

  private sendUplink(packet: Buffer): void {
    if (this.upstream!.sendAudio(packet)) this.uplinkFrames.inc();
  }

  private inputEnded(): void {
    this.sink!.markInputEnded(performance.now());
    this.setState('processing');
  }

  // Upstream side.

  private connect(hello: ClientHello): void {
    clearTimeout(this.helloTimer);
    this.hello = hello;
    this.phase = 'connecting';
    const { config } = this.deps;
    const open = this.deps.openUpstream ?? ((o: UpstreamOptions) => new Upstream(o));
    this.upstream = open({
      url: this.deps.upstreamUrl,
      token: config.upstream.token,
      deviceId: config.upstream.deviceId ?? deviceIdFor(this.id),
      clientId: config.upstream.clientId ?? this.id,
      protocolVersion: config.upstream.protocolVersion,
      helloTimeoutMs: config.upstream.helloTimeoutMs,
      maxMessageBytes: config.upstream.maxMessageBytes,
      uplink: { sampleRate: UPSTREAM_UPLINK_RATE, frameMs: hello.uplink.frameMs },
    });
    if (hello.uplink.codec === 'pcm16') {
      this.uplink = new Subject<UplinkPcm>();
      this.uplink.pipe(encodeOpus(hello.uplink.sampleRate, hello.uplink.frameMs)).subscribe((packet) => this.sendUplink(packet));
    }
    const downlink = hello.downlink;
    this.connectStartedAt = performance.now();
    this.sink = new SocketSink(
      this.socket,
      {
        highWaterBytes: config.sink.highWaterBytes,
        queueLimitMs: config.sink.queueLimitMs,
        codec: downlink.codec,
        transport: downlink.transport,
        onTooSlow: () => this.emit({ type: 'error', code: 'too_slow', message: 'audio was dropped: the client is reading too slowly' }),
      },
      this.deps.metrics,
    );
    const sink = this.sink;
    const paced = hello.pacing.mode === 'realtime' ? pace(hello.pacing.prebufferMs, (n) => this.abortedFrames.inc(n)) : identity;
    this.outbound.pipe(paced, toClient(downlink.transport)).subscribe((frame) => sink.write(frame));
    this.downlink = this.upstream.messages$
      .pipe(parse(config.upstream.protocolVersion), downlink.codec === 'pcm16' ? decodeOpus(downlink.sampleRate) : identity)
      .subscribe({
        next: (event) => this.post(event),
        error: (error: unknown) => this.post({ kind: 'upstream-failed', error }),
      });
  }

  private onUpstreamMessage(message: XiaozhiMessage): void {
    switch (message.type) {
      case 'hello':
        if (this.phase !== 'connecting') return;
        this.deps.metrics.upstreamConnect.observe((performance.now() - this.connectStartedAt) / 1000);
        this.phase = 'open';
        this.negotiated = negotiate(this.hello!, message.audioParams?.sample_rate ?? UPSTREAM_DEFAULT_RATE);
        this.emit({ type: 'hello', version: PROTOCOL_VERSION, sessionId: this.id, ...this.negotiated });
        this.emit({ type: 'state', state: 'ready' });
        this.log.info({ negotiated: this.negotiated }, 'session open');
        return;
      case 'stt':
        this.emit({ type: 'user_text', text: message.text });
        // In auto and realtime modes the server's VAD ends the utterance, not the client.
        if (this.state === 'listening') this.inputEnded();
        return;
      case 'llm':
        this.emit({ type: 'emotion', emotion: message.emotion, emoji: message.text });
        return;
      case 'tts':
        if (message.state === 'start') {
          this.discarding = false;
          this.setState('speaking');
        } else if (message.state === 'sentence_start') {
          if (!this.discarding) this.emit({ type: 'assistant_text', text: message.text });
        } else if (this.discarding) {
          // The aborted reply's end: the session has moved on already (ready, or listening on barge-in).
          this.discarding = false;
        } else {
          this.setState('ready');
        }
        return;
      case 'mcp':
        this.emit({ type: 'mcp', payload: message.payload });
        return;
      case 'other':
        this.deps.metrics.upstreamUnknown.labels(knownOtherType(message.original)).inc();
        this.log.debug({ type: message.original }, 'upstream message of a type not acted on');
        return;
    }
  }

  private onUpstreamAudio(frame: Extract<UpstreamEvent, { kind: 'audio' }>): void {
    this.upstreamFrames.inc();
    if (frame.concealed) {
      this.deps.metrics.decodeErrors.inc();
      this.deps.metrics.concealedFrames.inc();
      this.log.debug('upstream packet did not decode: concealed');
    }
    if (this.discarding) {
      this.abortedFrames.inc();
      return;
    }
    this.outbound.next(frame);
  }

  private onUpstreamFailed(error: unknown): void {
    const kind = error instanceof UpstreamError ? error.kind : 'socket';
    this.deps.metrics.upstreamErrors.labels(kind).inc();
    const detail = error instanceof Error ? error.message : String(error);
    if (this.phase === 'connecting') {
      this.log.warn({ kind, detail }, 'upstream unavailable');
      this.sendError('upstream_unavailable', `the voice service could not be reached: ${detail}`);
      this.end(CloseCode.upstreamUnavailable, 'upstream unavailable', 'upstream_unavailable');
    } else {
      this.log.warn({ kind, detail }, 'upstream lost');
      this.sendError('upstream_lost', `the voice service went away: ${detail}`);
      this.end(CloseCode.upstreamUnavailable, 'upstream lost', 'upstream_lost');
    }
  }

  // Output.

  private setState(state: SessionState): void {
    if (state === this.state) return;
    this.state = state;
    this.emit({ type: 'state', state });
  }

  private emit(message: ServerMessage): void {
    this.outbound.next({ kind: 'message', message });
  }

  /** Errors go through the ordered queue once there is one; before the hello, straight to the socket. */
  private sendError(code: ErrorCode, message: string): void {
    const error: ServerMessage = { type: 'error', code, message };
    if (this.sink !== undefined) this.emit(error);
    else this.socket.send(JSON.stringify(error), false);
  }

  // Endings.

  /** The gateway ends the session: close the client socket; the close event does the rest. */
  private end(code: number, reason: string, outcome: SessionOutcome): void {
    this.finish(outcome);
    this.socket.end(code, reason);
  }

  private finish(outcome: SessionOutcome): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.helloTimer);
    this.downlink?.unsubscribe();
    this.uplink?.complete();
    this.outbound.complete();
    this.sink?.close();
    this.log.info({ outcome }, 'session ended');
    this.deps.onEnded(this, outcome);
  }
}

/**
 * A stable, per-session Device-Id: the upstream keys conversation memory by it, so two sessions must
 * never share one. A locally administered unicast MAC, as no real device has.
 */
export function deviceIdFor(sessionId: string): string {
  const bytes = createHash('sha256').update(sessionId).digest().subarray(0, 6);
  bytes[0] = (bytes[0]! & 0xfe) | 0x02;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
}

const RARE_TYPES = new Set(['system', 'alert', 'custom', 'iot']);

/** Keeps the metric's label set bounded whatever an upstream sends. */
function knownOtherType(type: string): string {
  return RARE_TYPES.has(type) ? type : 'unknown';
}
