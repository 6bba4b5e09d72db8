import { createHash } from 'node:crypto';
import { asyncScheduler, identity, Subject, type Subscription } from 'rxjs';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import { closeCodeLabel, type FrameCounter, type Metrics } from '../observability/metrics.ts';
import {
  CloseCode,
  negotiate,
  parseClientMessage,
  PROTOCOL_VERSION,
  type ClientHello,
  type ClientMessage,
  type ErrorCode,
  type ServerMessage,
  type SessionState,
} from '../protocol/client.ts';
import { opusPacketDurationMs, type ServerMessage as XiaozhiMessage } from '../protocol/xiaozhi.ts';
import { decodeOpus } from '../streams/decode-opus.ts';
import { encodeOpus, FLUSH, RESET, type UplinkPcm } from '../streams/encode-opus.ts';
import { SessionBudget } from '../streams/budget.ts';
import type { AudioFrame, UpstreamEvent } from '../streams/events.ts';
import { pace } from '../streams/pace.ts';
import { parse } from '../streams/parse.ts';
import { DISCARD, toClient, type Outbound } from '../streams/to-client.ts';
import type { Connection } from '../transport/client-server.ts';
import { SocketSink, type ClientSocket } from '../transport/socket-sink.ts';
import { Upstream, UpstreamError, type UpstreamErrorKind, type UpstreamMessage, type UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';
import { SessionReport, type Playout, type ReplyOutcome } from './session-report.ts';

export type SessionSocket = ClientSocket;

export type SessionMessage =
  | { kind: 'client-text'; text: string }
  | { kind: 'client-binary'; data: Buffer }
  | { kind: 'client-oversized'; bytes: number }
  /** tooLarge: uWS cut the connection itself, for a frame far past MAX_FRAME_BYTES (it sends no close frame then). */
  | { kind: 'client-closed'; code: number; tooLarge?: boolean }
  | { kind: 'hello-timeout' }
  | { kind: 'tick'; now: number }
  | { kind: 'reconnect' }
  /** The socket sink gave up on a client that does not read (policy `close`, or messages piling up). */
  | { kind: 'too-slow' }
  /** graceful: finish the reply in progress first (draining); otherwise close now. */
  | { kind: 'shutdown'; graceful: boolean }
  /** `connection`: which upstream connection failed; a report about one already replaced is stale. */
  | { kind: 'upstream-failed'; error: unknown; connection: number }
  /** An operator of the session's own pipelines threw: they are dead, and so is the session. */
  | { kind: 'pipeline-failed'; error: unknown }
  | UpstreamEvent;

export type SessionOutcome =
  | 'normal'
  | 'client_gone'
  | 'hello_timeout'
  | 'idle'
  | 'too_slow'
  | 'too_large'
  | 'upstream_unavailable'
  | 'upstream_lost'
  | 'internal'
  | 'shutdown';

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

/**
 * awaiting-hello → connecting → open ⇄ reconnecting → ending → closed. `ending`: the close is queued
 * behind what the client has yet to receive; the socket's close event makes it `closed`.
 */
type Phase = 'awaiting-hello' | 'connecting' | 'open' | 'reconnecting' | 'ending' | 'closed';

/**
 * One client session: the only code that changes its state. It owns the upstream connection, the
 * downlink pipeline (upstream → parse → decodeOpus → here) and the outbound one (here → pace →
 * toClient → socket sink), so everything the client receives leaves through one ordered queue.
 */
export class Session extends Actor<SessionMessage> implements Connection {
  readonly id: string;
  readonly log: Logger;
  private phase: Phase = 'awaiting-hello';
  private state: SessionState = 'ready';
  private hello: ClientHello | undefined;
  private upstream: Upstream | undefined;
  private downlink: Subscription | undefined;
  /** outbound → pace → toClient → sink: ended with the session, so that nothing it holds outlives it. */
  private delivery: Subscription | undefined;
  private sink: SocketSink | undefined;
  /** Bytes held for this session, by the sink, the pacer and the upstream socket together. */
  private budget: SessionBudget | undefined;
  private readonly outbound = new Subject<Outbound>();
  /** pcm16 uplink only: the client's PCM on its way to the session's encoder. */
  private uplink: Subject<UplinkPcm> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private connectStartedAt = 0;
  private reconnectAttempts = 0;
  /** After an abort, the rest of that reply's audio still in flight from the upstream is discarded. */
  private discarding = false;
  /** The gateway is draining: close once the reply in progress is over. */
  private draining = false;
  private endingOutcome: SessionOutcome = 'normal';
  private lastClientAt = performance.now();
  private lastUpstreamAt = 0;
  /** When the user's input ended: a reply is due from then, whatever the client sends meanwhile. */
  private replyDueAt = 0;
  /** A fault of the current upstream connection is posted: it is not reported twice. */
  private upstreamFailing = false;
  /** Counts upstream connections, so that a failure reported twice (a fault found, then the socket's own error) is handled once. */
  private connection = 0;
  /** The upstream was lost and reconnecting has not yet come to an end (recovered, failed or abandoned). */
  private reconnecting = false;
  /** What the upstream socket had unsent at the last tick, and when it last took any of it. */
  private upstreamUnsent = 0;
  private upstreamProgressAt = 0;
  /** The pacer dropped audio of this reply; and whether the client was told (once per reply). */
  private pacerOverflowed = false;
  private pacerNoticeSent = false;
  private readonly report: SessionReport;
  private readonly upstreamFrames: FrameCounter;
  private readonly abortedFrames;
  private readonly uplinkFrames;
  private readonly uplinkDropped;

  constructor(
    private readonly socket: SessionSocket,
    private readonly deps: SessionDeps,
    id: string,
  ) {
    super();
    this.id = id;
    this.log = deps.logger.child({ sessionId: id });
    this.report = new SessionReport(deps.metrics);
    this.upstreamFrames = deps.metrics.upstreamFrames.cell();
    this.abortedFrames = deps.metrics.framesDropped.labels('aborted');
    this.uplinkFrames = deps.metrics.uplinkFrames;
    this.uplinkDropped = deps.metrics.uplinkDropped;
    this.timer = setTimeout(() => this.post({ kind: 'hello-timeout' }), deps.config.limits.helloTimeoutMs);
  }

  // What the client server reports of the connection.

  text(text: string): void {
    this.post({ kind: 'client-text', text });
  }

  binary(data: Buffer): void {
    this.post({ kind: 'client-binary', data });
  }

  oversized(bytes: number): void {
    this.post({ kind: 'client-oversized', bytes });
  }

  /** Straight to the sink: the one place backpressure lives, and nothing the session decides. */
  drain(): void {
    this.sink?.drain();
  }

  closed(code: number, tooLarge: boolean): void {
    this.post({ kind: 'client-closed', code, tooLarge });
  }

  protected receive(m: SessionMessage): void {
    if (this.phase === 'closed') return;
    if (m.kind === 'client-closed' && m.tooLarge === true) {
      this.deps.metrics.badMessages.labels('too_large').inc();
      return this.finish('too_large', m.code);
    }
    if (m.kind === 'client-closed') return this.finish(this.phase === 'ending' ? this.endingOutcome : CLEAN_CLOSES.has(m.code) ? 'normal' : 'client_gone', m.code);
    if (m.kind === 'shutdown' && !m.graceful) return this.abandon(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
    if (m.kind === 'too-slow') return this.abandon(CloseCode.tooSlow, 'client too slow', 'too_slow');
    if (m.kind === 'pipeline-failed') return this.failed(m.error, m);
    if (m.kind === 'client-oversized') {
      this.deps.metrics.badMessages.labels('too_large').inc();
      return this.abandon(CloseCode.tooBig, `frame of ${m.bytes} bytes is over the ${this.deps.config.limits.maxFrameBytes}-byte limit`, 'too_large');
    }
    if (this.phase === 'ending') return;
    switch (m.kind) {
      case 'audio':
        return this.onUpstreamAudio(m);
      case 'message':
        this.lastUpstreamAt = performance.now();
        return this.onUpstreamMessage(m.message);
      case 'invalid':
        this.deps.metrics.badMessages.labels('upstream_invalid').inc();
        this.log.debug({ detail: m.detail }, 'upstream message skipped');
        return;
      case 'client-text':
        this.lastClientAt = performance.now();
        return this.onClientText(m.text);
      case 'client-binary':
        this.lastClientAt = performance.now();
        return this.onClientAudio(m.data);
      case 'hello-timeout':
        if (this.phase === 'awaiting-hello') this.abandon(CloseCode.helloTimeout, 'no hello in time', 'hello_timeout');
        return;
      case 'tick':
        return this.onTick(m.now);
      case 'reconnect':
        if (this.phase === 'reconnecting') this.subscribeDownlink();
        return;
      case 'shutdown':
        this.draining = true;
        if (!this.inReply()) this.close(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
        return;
      case 'upstream-failed':
        if (m.connection === this.connection) this.onUpstreamFailed(m.error);
        return;
    }
  }

  protected failed(error: unknown, message: SessionMessage): void {
    this.log.error({ err: error, message: message.kind }, 'session failed');
    if (this.phase === 'closed') return;
    // Straight to the socket: the session's own pipelines are what may have failed.
    this.sendDirect({ type: 'error', code: 'internal', message: 'the gateway failed on this session' });
    this.abandon(CloseCode.internal, 'internal error', 'internal');
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
    if (message.type === 'hello') this.sendError('bad_message', 'hello was already received');
    else if (message.type === 'ping') this.emit({ type: 'pong', id: message.id });
    else if (this.phase === 'connecting') this.sendError('hello_required', `wait for the gateway's hello before ${message.type}`);
    else if (message.type === 'playout') this.onPlayout(message);
    else if (this.phase === 'reconnecting' && message.type === 'abort') this.outbound.next(DISCARD);
    else if (this.phase === 'reconnecting') this.sendError('upstream_lost', `reconnecting to the voice service: ${message.type} was not sent`);
    else this.onConversation(message);
  }

  /** Not relayed: what the client hears is for the operators' metrics. */
  private onPlayout(report: Playout): void {
    const wrong = this.report.playout(report);
    if (wrong === undefined) return;
    this.deps.metrics.badMessages.labels('bad_field').inc();
    this.sendError('bad_message', wrong);
  }

  private onConversation(message: Exclude<ClientMessage, { type: 'hello' | 'ping' | 'playout' }>): void {
    switch (message.type) {
      case 'listen':
        if (message.state === 'start') {
          // Barge-in: speaking over the reply ends it first, as the xiaozhi firmware does.
          this.interruptReply();
          this.uplink?.next(RESET);
          this.sendUp({ type: 'listen', state: 'start', mode: message.mode });
          this.setState('listening');
        } else {
          this.uplink?.next(FLUSH);
          this.sendUp({ type: 'listen', state: 'stop' });
          this.inputEnded();
        }
        return;
      case 'text':
        // Typing over the reply interrupts it too, as a new utterance does upstream.
        this.interruptReply();
        this.sendUp({ type: 'listen', state: 'detect', text: message.text });
        this.inputEnded();
        return;
      case 'abort':
        this.abortReply();
        this.setState('ready');
        return;
      case 'mcp':
        this.sendUp({ type: 'mcp', payload: message.payload });
        return;
    }
  }

  /** Ends the current reply: the upstream stops, and not one more of its frames reaches the client. */
  private abortReply(): void {
    this.report.replyEnded('aborted');
    this.sendUp({ type: 'abort', reason: 'client_abort' });
    this.discarding = true;
    this.outbound.next(DISCARD);
  }

  /**
   * New input cuts the reply short. The upstream may be done sending (its tts stop already in) while
   * the client has yet to hear what the pacer and the sink hold: that goes too.
   */
  private interruptReply(): void {
    if (this.state === 'speaking') this.abortReply();
    else this.outbound.next(DISCARD);
  }

  private onClientAudio(data: Buffer): void {
    if (this.phase === 'awaiting-hello' || this.phase === 'connecting') {
      this.sendError('hello_required', 'audio before the session is ready is dropped');
      return;
    }
    // While reconnecting there is nowhere to send it; the state tells the client so.
    if (this.phase !== 'open') return;
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

  /**
   * Sends a control message up, then holds the upstream to its share of the session's budget: one that
   * has left more than half of it unsent is not reading (a fault, reconnected like a stall). What the
   * client side holds makes room for the rest at its next write (socket-sink, pace).
   */
  private sendUp(message: UpstreamMessage): void {
    const upstream = this.upstream!;
    const budget = this.budget!;
    upstream.send(message);
    const unsent = upstream.bufferedAmount;
    // Counted once per connection, like the fault it reports.
    if (unsent > budget.limit / 2 && !this.upstreamFailing) {
      this.deps.metrics.bufferOverflows.labels('upstream').inc();
      this.failUpstream(new UpstreamError('not_reading', `${unsent} bytes unsent: the upstream is not reading`));
    }
  }

  private sendUplink(packet: Buffer): void {
    if (this.upstream!.sendAudio(packet)) this.uplinkFrames.inc();
    else this.uplinkDropped.inc();
  }

  private inputEnded(): void {
    this.replyDueAt = performance.now();
    this.sink!.markInputEnded(this.replyDueAt);
    this.setState('processing');
  }

  // Upstream side.

  private connect(hello: ClientHello): void {
    clearTimeout(this.timer);
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
      this.uplink.pipe(encodeOpus(hello.uplink.sampleRate, hello.uplink.frameMs)).subscribe({
        next: (packet) => this.sendUplink(packet),
        error: (error: unknown) => this.post({ kind: 'pipeline-failed', error }),
      });
    }
    const budget = new SessionBudget(config.sink.sessionBufferBytes);
    budget.upstreamBytes = () => this.upstream?.bufferedAmount ?? 0;
    this.budget = budget;
    this.deps.metrics.budgets.add(budget);
    const sink = new SocketSink(
      this.socket,
      {
        ...config.sink,
        budget,
        codec: hello.downlink.codec,
        transport: hello.downlink.transport,
        tooSlowNotice: JSON.stringify({ type: 'error', code: 'too_slow', message: 'audio was dropped here: the client is reading too slowly' }),
        onTooSlow: (what) => {
          if (what === 'dropping') this.log.info('client too slow: dropping its oldest audio');
          else this.post({ kind: 'too-slow' });
        },
      },
      this.deps.metrics,
    );
    this.sink = sink;
    const gone = this.deps.metrics.framesDropped.labels('client_gone');
    const tooSlow = this.deps.metrics.framesDropped.labels('too_slow');
    const pacerOverflows = this.deps.metrics.bufferOverflows.labels('pacer');
    const onDropped = (n: number, why: 'discard' | 'teardown' | 'overflow') => {
      this.report.dropped(n);
      if (why !== 'overflow') return (why === 'discard' ? this.abortedFrames : gone).inc(n);
      tooSlow.inc(n);
      pacerOverflows.inc();
      this.pacerOverflowed = true;
    };
    const hold = { maxMs: config.sink.queueLimitMs, budget };
    const paced = hello.pacing.mode === 'realtime' ? pace(hello.pacing.prebufferMs, onDropped, asyncScheduler, hold) : identity;
    this.delivery = this.outbound.pipe(paced, toClient(hello.downlink.transport)).subscribe({
      next: (frame) => sink.write(frame),
      error: (error: unknown) => this.post({ kind: 'pipeline-failed', error }),
    });
    this.subscribeDownlink();
  }

  /** A fresh upstream session with a fresh pipeline (and decoder): at first, and on each reconnect. */
  private subscribeDownlink(): void {
    const { config } = this.deps;
    const downlink = this.hello!.downlink;
    this.connectStartedAt = performance.now();
    const connection = ++this.connection;
    this.upstreamFailing = false;
    this.upstreamUnsent = 0;
    this.upstreamProgressAt = this.connectStartedAt;
    this.downlink = this.upstream!.messages$.pipe(
      parse(config.upstream.protocolVersion),
      downlink.codec === 'pcm16' ? decodeOpus(downlink.sampleRate) : identity,
    ).subscribe({
      next: (event) => this.post(event),
      error: (error: unknown) => this.post({ kind: 'upstream-failed', error, connection }),
    });
  }

  private onUpstreamMessage(message: XiaozhiMessage): void {
    switch (message.type) {
      case 'hello':
        return this.onUpstreamHello(message.sampleRate ?? UPSTREAM_DEFAULT_RATE);
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
          this.pacerOverflowed = this.pacerNoticeSent = false;
          this.report.replyStarted();
          this.setState('speaking');
        } else if (message.state === 'sentence_start') {
          if (!this.discarding) this.emit({ type: 'assistant_text', text: message.text });
        } else if (this.discarding) {
          // The aborted reply's end: the session has moved on already (ready, or listening on barge-in).
          this.discarding = false;
        } else {
          this.report.replyEnded('complete');
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

  private onUpstreamHello(upstreamRate: number): void {
    this.deps.metrics.upstreamConnect.observe((performance.now() - this.connectStartedAt) / 1000);
    this.reconnectAttempts = 0;
    if (this.phase === 'reconnecting') {
      this.phase = 'open';
      this.endReconnecting('recovered');
      this.log.info('upstream recovered');
      this.setState('ready');
      return;
    }
    if (this.phase !== 'connecting') return;
    this.phase = 'open';
    const negotiated = negotiate(this.hello!, upstreamRate);
    this.emit({ type: 'hello', version: PROTOCOL_VERSION, sessionId: this.id, ...negotiated });
    this.emit({ type: 'state', state: 'ready' });
    this.log.info({ negotiated }, 'session open');
    if (this.draining) this.close(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
  }

  private onUpstreamAudio(frame: AudioFrame): void {
    this.lastUpstreamAt = frame.arrivedAt;
    this.upstreamFrames.n++;
    if (frame.concealed) {
      this.deps.metrics.decodeErrors.inc();
      this.deps.metrics.concealedFrames.inc();
      this.log.debug('upstream packet did not decode: concealed');
    }
    if (this.discarding) {
      this.report.dropped(1);
      return this.abortedFrames.inc();
    }
    this.outbound.next(frame);
    // Told after the frame has gone in, not from inside the pacer's own handling of it.
    if (this.pacerOverflowed && !this.pacerNoticeSent) {
      this.pacerNoticeSent = true;
      this.log.info('the upstream sends faster than the client is paced: dropping the oldest held audio');
      this.sendError('too_slow', 'audio was dropped: more of this reply arrived than the session may hold back for pacing');
    }
  }

  private onUpstreamFailed(error: unknown): void {
    const kind: UpstreamErrorKind = error instanceof UpstreamError ? error.kind : 'socket';
    const detail = error instanceof Error ? error.message : String(error);
    this.deps.metrics.upstreamErrors.labels(kind).inc();
    this.downlink?.unsubscribe();
    this.downlink = undefined;
    this.upstreamFailing = false;
    // Whatever else is reported of this connection now is stale.
    this.connection++;
    // Clients hear what happened in the protocol's terms; addresses, library messages and the peer's
    // own words go to the log, for operators.
    if (this.phase === 'connecting') {
      this.log.warn({ kind, detail }, 'upstream unavailable');
      this.sendError('upstream_unavailable', `the voice service ${UPSTREAM_FAULTS[kind]}`);
      this.close(CloseCode.upstreamUnavailable, 'upstream unavailable', 'upstream_unavailable');
      return;
    }
    if (this.phase === 'open') {
      this.report.replyEnded('upstream_lost');
      this.log.warn({ kind, detail }, 'upstream lost');
      this.sendError('upstream_lost', `the voice service ${UPSTREAM_FAULTS[kind]}: reconnecting`);
      this.phase = 'reconnecting';
      this.reconnecting = true;
      this.discarding = false;
      this.setState('reconnecting');
      // Draining: that state change was this session's last word.
      if (this.phase !== 'reconnecting') return;
    } else {
      this.log.warn({ kind, detail, attempt: this.reconnectAttempts }, 'upstream reconnect failed');
    }
    const { attempts, baseMs, maxMs } = this.deps.config.upstream.reconnect;
    if (this.reconnectAttempts >= attempts) {
      this.endReconnecting('failed');
      this.sendError('upstream_unavailable', `the voice service did not come back after ${attempts} attempts`);
      this.close(CloseCode.upstreamUnavailable, 'upstream lost', 'upstream_lost');
      return;
    }
    const delay = Math.min(baseMs * 2 ** this.reconnectAttempts, maxMs);
    this.reconnectAttempts++;
    this.timer = setTimeout(() => this.post({ kind: 'reconnect' }), delay);
  }

  /** Once a second, from the gateway: a session idle too long goes; an upstream silent mid-reply is stuck. */
  private onTick(now: number): void {
    if (this.phase !== 'open' || this.upstreamFailing) return;
    const { limits, upstream } = this.deps.config;
    const unsent = this.upstream!.bufferedAmount;
    if (unsent === 0 || unsent < this.upstreamUnsent) this.upstreamProgressAt = now;
    this.upstreamUnsent = unsent;
    if (now - this.upstreamProgressAt > upstream.stallTimeoutMs) {
      this.failUpstream(new UpstreamError('not_reading', `${unsent} bytes unsent and none taken for ${upstream.stallTimeoutMs} ms`));
    } else if (this.inReply()) {
      if (now - Math.max(this.lastUpstreamAt, this.replyDueAt) > upstream.stallTimeoutMs) {
        this.failUpstream(new UpstreamError('stall', `no word from the upstream for ${upstream.stallTimeoutMs} ms mid-reply`));
      }
    } else if (now - Math.max(this.lastClientAt, this.lastUpstreamAt) > limits.idleTimeoutMs) {
      this.close(CloseCode.normal, 'idle', 'idle');
    }
  }

  /** One episode of a lost upstream, counted once by how it ended. */
  private endReconnecting(outcome: 'recovered' | 'failed' | 'abandoned'): void {
    if (!this.reconnecting) return;
    this.reconnecting = false;
    this.deps.metrics.upstreamReconnects.labels(outcome).inc();
  }

  /** Reported once per connection; the mailbox handles it after what is being handled now. */
  private failUpstream(error: UpstreamError): void {
    if (this.upstreamFailing) return;
    this.upstreamFailing = true;
    this.post({ kind: 'upstream-failed', error, connection: this.connection });
  }

  private inReply(): boolean {
    return this.state === 'processing' || this.state === 'speaking';
  }

  // Output.

  private setState(state: SessionState): void {
    if (state === this.state) return;
    this.state = state;
    this.emit({ type: 'state', state });
    if (this.draining && !this.inReply()) this.close(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
  }

  private emit(message: ServerMessage): void {
    this.outbound.next({ kind: 'message', message });
  }

  /** Errors go through the ordered queue once there is one; before the hello, straight to the socket. */
  private sendError(code: ErrorCode, message: string): void {
    const error: ServerMessage = { type: 'error', code, message };
    if (this.sink !== undefined) this.emit(error);
    else this.sendDirect(error);
  }

  /**
   * Past the sink, so bounded here: a client that floods bad frames without reading its answers would
   * otherwise grow the socket's own buffer without limit.
   */
  private sendDirect(message: ServerMessage): void {
    try {
      if (this.socket.getBufferedAmount() <= this.deps.config.sink.highWaterBytes) this.socket.send(JSON.stringify(message), false);
    } catch {
      // Already closed: the close event is on its way.
    }
  }

  // Endings.

  /** Closes after everything already queued for the client: the upstream stops now, the socket after. */
  private close(code: number, reason: string, outcome: SessionOutcome): void {
    if (this.phase === 'ending' || this.phase === 'closed') return;
    if (this.sink === undefined) return this.abandon(code, reason, outcome);
    this.phase = 'ending';
    this.endingOutcome = outcome;
    this.stopUpstream();
    this.outbound.next({ kind: 'end', code, reason });
  }

  /** Closes now: whatever the client has yet to receive is dropped. */
  private abandon(code: number, reason: string, outcome: SessionOutcome): void {
    this.finish(outcome, code);
    try {
      this.socket.end(code, reason);
    } catch {
      // Already closed: its close event finds the session finished.
    }
  }

  private stopUpstream(): void {
    clearTimeout(this.timer);
    this.downlink?.unsubscribe();
    this.downlink = undefined;
    this.uplink?.complete();
  }

  private finish(outcome: SessionOutcome, code: number): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.report.replyEnded(replyCutBy(outcome));
    // The client left, or a drain closed the session, before reconnecting came to an end.
    this.endReconnecting('abandoned');
    this.deps.metrics.clientCloses.labels(closeCodeLabel(code)).inc();
    this.stopUpstream();
    this.delivery?.unsubscribe();
    this.outbound.complete();
    this.sink?.close(outcome === 'too_slow' ? 'too_slow' : 'client_gone');
    if (this.budget !== undefined) this.deps.metrics.budgets.delete(this.budget);
    this.log.info(this.report.summary(outcome, code, this.sink?.tally ?? NO_FRAMES), 'session ended');
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

const NO_FRAMES = { pushed: 0, dropped: 0, failed: 0 };

/** How a session's end cuts a reply still in progress. */
function replyCutBy(outcome: SessionOutcome): ReplyOutcome {
  if (outcome === 'shutdown') return 'shutdown';
  return outcome === 'upstream_lost' || outcome === 'upstream_unavailable' ? 'upstream_lost' : 'client_gone';
}

/** What the client is told of an upstream fault, completing "the voice service …". */
const UPSTREAM_FAULTS: Record<UpstreamErrorKind, string> = {
  connect: 'could not be reached',
  hello_timeout: 'did not answer in time',
  bad_hello: 'answered with something that is not a xiaozhi hello',
  closed: 'closed the connection',
  socket: 'connection failed',
  stall: 'stopped sending mid-reply',
  not_reading: 'stopped reading what the gateway sends',
};

const RARE_TYPES = new Set(['system', 'alert', 'custom', 'iot']);

/** Keeps the metric's label set bounded whatever an upstream sends. */
function knownOtherType(type: string): string {
  return RARE_TYPES.has(type) ? type : 'unknown';
}
