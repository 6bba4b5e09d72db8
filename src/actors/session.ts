import { Subject } from 'rxjs';
import type { Config } from '../config.ts';
import type { ClientIdentity } from '../identity/clients.ts';
import { ProvisionError } from '../identity/ota.ts';
import type { Provisioner, SessionDevice } from '../identity/provisioning.ts';
import type { Logger } from '../observability/log.ts';
import { closeCodeLabel, type Metrics } from '../observability/metrics.ts';
import { XIAOZHI_UPLINK_RATE } from '../protocol/audio.ts';
import { parseClientMessage, uplinkAudioProblem, type ClientHello, type ServerMessage } from '../protocol/client.ts';
import { SessionBudget } from '../streams/budget.ts';
import { encodeOpus, FLUSH, RESET, type UplinkPcm } from '../streams/encode-opus.ts';
import type { UpstreamControl, UpstreamInvalid } from '../streams/events.ts';
import { ABORT, DISCARD, REPLY_END, REPLY_START } from '../streams/to-client.ts';
import type { Connection } from '../transport/client-server.ts';
import { SocketSink, type ClientSocket } from '../transport/socket-sink.ts';
import { Upstream, UpstreamError, type UpstreamOptions } from '../transport/upstream.ts';
import { Actor } from './actor.ts';
import { decide, initialConversation, type Command, type Conversation, type ConversationEvent, type Counted, type SessionOutcome, type Settings, type Steer } from './conversation.ts';
import { Delivery } from './delivery.ts';
import { SessionReport } from './session-report.ts';

export type { SessionOutcome } from './conversation.ts';
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
  /** What the upstream socket of connection `connection` holds unsent, right after a control message went up. */
  | { kind: 'sent-up'; connection: number; unsent: number }
  /** An operator of the session's own pipelines threw: they are dead, and so is the session. */
  | { kind: 'pipeline-failed'; error: unknown }
  | { kind: 'activation'; code: string; message: string }
  | UpstreamControl
  | UpstreamInvalid;

export interface SessionDeps {
  config: Config;
  /** Who the client is: its user, when authentication names one. */
  identity: ClientIdentity;
  /** Which device the session speaks as, and where that device connects. */
  provisioner: Provisioner;
  metrics: Metrics;
  logger: Logger;
  openUpstream?: (options: UpstreamOptions) => Upstream;
  /** Told once, when the session has ended for good. */
  onEnded: (session: Session, outcome: SessionOutcome) => void;
}

const STEERING: Record<Steer, typeof DISCARD | typeof ABORT | typeof REPLY_START | typeof REPLY_END> = {
  discard: DISCARD,
  abort: ABORT,
  'reply-start': REPLY_START,
  'reply-end': REPLY_END,
};

/**
 * One client session, as an actor: its mailbox turns what happens (client messages, upstream control
 * messages, timers, failures) into events for the conversation's decisions (conversation.ts), and
 * carries out the commands they give. It owns the upstream connection, the delivery pipeline
 * (delivery.ts) that the speech flows through past it, and the uplink encoder.
 */
export class Session extends Actor<SessionMessage> implements Connection {
  readonly id: string;
  readonly log: Logger;
  private conversation: Conversation;
  private readonly settings: Settings;
  private upstream: Upstream | undefined;
  private device: SessionDevice | undefined;
  private delivery: Delivery | undefined;
  private sink: SocketSink | undefined;
  /** Bytes held for this session, by the sink, the pacer and the upstream socket together. */
  private budget: SessionBudget | undefined;
  /** pcm16 uplink only, made at its first audio: the client's PCM on its way to the session's encoder. */
  private uplink: Subject<UplinkPcm> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private connectStartedAt = 0;
  /** When the client's last good uplink frame went up: read at the tick, not a decision per frame. */
  private clientAudioAt = 0;
  private readonly report: SessionReport;

  constructor(
    private readonly socket: SessionSocket,
    private readonly deps: SessionDeps,
    id: string,
  ) {
    super();
    this.id = id;
    this.log = deps.logger.child(deps.identity.user === undefined ? { sessionId: id } : { sessionId: id, user: deps.identity.user });
    this.report = new SessionReport(deps.metrics);
    const { limits, sink, upstream } = deps.config;
    this.settings = {
      sessionId: id,
      bufferBytes: sink.sessionBufferBytes,
      stallTimeoutMs: upstream.stallTimeoutMs,
      idleTimeoutMs: limits.idleTimeoutMs,
      maxFrameBytes: limits.maxFrameBytes,
      reconnect: upstream.reconnect,
    };
    this.conversation = initialConversation(performance.now());
    this.timer = setTimeout(() => this.post({ kind: 'hello-timeout' }), limits.helloTimeoutMs);
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
    // Uplink audio is as frequent as the reply's frames: a good frame of an open session goes up without
    // a decision. Anything else (a bad frame, a session not open) is the conversation's to answer.
    if (m.kind === 'client-binary' && this.conversation.phase === 'open' && uplinkAudioProblem(this.conversation.hello!.uplink.codec, m.data) === undefined) {
      this.clientAudioAt = performance.now();
      return this.sendUplink(m.data);
    }
    this.run(this.eventOf(m));
  }

  protected failed(error: unknown, message: SessionMessage): void {
    this.log.error({ err: error, message: message.kind }, 'session failed');
    this.run({ kind: 'failed' });
  }

  private eventOf(m: SessionMessage): ConversationEvent {
    const now = performance.now();
    switch (m.kind) {
      case 'client-text':
        return { kind: 'client-text', parsed: parseClientMessage(m.text), now };
      case 'client-binary':
        return { kind: 'client-audio', data: m.data, now };
      case 'client-closed':
        return { kind: 'client-closed', code: m.code, tooLarge: m.tooLarge === true };
      case 'tick':
        return { kind: 'tick', now: m.now, audioAt: this.delivery?.audioAt ?? 0, clientAudioAt: this.clientAudioAt, unsent: this.upstream?.bufferedAmount ?? 0 };
      case 'reconnect':
        return { kind: 'reconnect', now };
      case 'upstream-failed': {
        const fault = m.error instanceof UpstreamError || m.error instanceof ProvisionError ? m.error.kind : 'socket';
        const detail = m.error instanceof Error ? m.error.message : String(m.error);
        return { kind: 'upstream-failed', connection: m.connection, fault, detail };
      }
      case 'pipeline-failed':
        this.log.error({ err: m.error }, 'session pipeline failed');
        return { kind: 'failed' };
      case 'message':
        return { kind: 'upstream', message: m.message, now };
      case 'invalid':
        return { kind: 'upstream-invalid', detail: m.detail };
      default:
        return m;
    }
  }

  private run(event: ConversationEvent): void {
    const { state, commands } = decide(this.conversation, event, this.settings);
    this.conversation = state;
    for (const command of commands) this.execute(command);
  }

  private execute(c: Command): void {
    const { metrics } = this.deps;
    switch (c.c) {
      case 'send':
        return c.direct ? this.sendDirect(c.message) : this.delivery?.steer({ kind: 'message', message: c.message });
      case 'steer':
        return this.delivery?.steer(STEERING[c.item]);
      case 'send-up':
        this.upstream!.send(c.message);
        return this.post({ kind: 'sent-up', connection: this.conversation.connection, unsent: this.upstream!.bufferedAmount });
      case 'uplink':
        return this.sendUplink(c.audio);
      case 'open':
        return this.open(c.hello, c.connection);
      case 'connect':
        return this.connect(c.connection);
      case 'disconnect':
        return this.delivery?.disconnect();
      case 'reconnect-in':
        this.timer = setTimeout(() => this.post({ kind: 'reconnect' }), c.ms);
        return;
      case 'input-ended':
        return this.sink?.markInputEnded(c.at);
      case 'close':
        this.stopUpstream();
        return this.delivery?.steer({ kind: 'end', code: c.code, reason: c.reason });
      case 'end-socket':
        try {
          this.socket.end(c.code, c.reason);
        } catch {
          // Already closed: its close event finds the session finished.
        }
        return;
      case 'finish':
        return this.finish(c.outcome, c.code, c.replyCut);
      case 'count':
        return this.count(c.metric, c.label);
      case 'reply':
        if (c.event === 'started') this.report.replyStarted();
        else this.report.replyEnded(c.event);
        return;
      case 'playout': {
        const wrong = this.report.playout(c);
        if (wrong === undefined) return;
        metrics.badMessages.labels('bad_field').inc();
        return this.delivery?.steer({ kind: 'message', message: { type: 'error', code: 'bad_message', message: wrong } });
      }
      case 'connected':
        metrics.upstreamConnect.observe((c.now - this.connectStartedAt) / 1000);
        return;
      case 'log':
        return this.log[c.level](c.fields ?? {}, c.msg);
    }
  }

  private count(metric: Counted, label: string): void {
    const { metrics } = this.deps;
    switch (metric) {
      case 'bad_message':
        return metrics.badMessages.labels(label).inc();
      case 'client_message':
        return metrics.clientMessages.labels(label).inc();
      case 'upstream_unknown':
        return metrics.upstreamUnknown.labels(label).inc();
      case 'upstream_error':
        return metrics.upstreamErrors.labels(label).inc();
      case 'reconnect':
        return metrics.upstreamReconnects.labels(label).inc();
      case 'buffer_overflow':
        return metrics.bufferOverflows.labels(label).inc();
      case 'close_code':
        return metrics.clientCloses.labels(closeCodeLabel(Number(label))).inc();
    }
  }

  /** The hello is in: the upstream, the session's budget, its sink and its delivery pipeline. */
  private open(hello: ClientHello, connection: number): void {
    clearTimeout(this.timer);
    const { config, metrics } = this.deps;
    const open = this.deps.openUpstream ?? ((o: UpstreamOptions) => new Upstream(o));
    this.device = this.deps.provisioner.forSession(this.deps.identity.user, this.id, this.log, (a) => this.post({ kind: 'activation', ...a }));
    this.upstream = open({
      protocolVersion: config.upstream.protocolVersion,
      helloTimeoutMs: config.upstream.helloTimeoutMs,
      maxMessageBytes: config.upstream.maxMessageBytes,
      uplink: { sampleRate: XIAOZHI_UPLINK_RATE, frameMs: hello.uplink.frameMs },
    });
    const budget = new SessionBudget(config.sink.sessionBufferBytes);
    budget.upstreamBytes = () => this.upstream?.bufferedAmount ?? 0;
    this.budget = budget;
    metrics.budgets.add(budget);
    this.sink = new SocketSink(
      this.socket,
      {
        ...config.sink,
        budget,
        codec: hello.downlink.codec,
        transport: hello.downlink.transport,
        paced: hello.pacing.mode === 'realtime',
        tooSlowNotice: JSON.stringify({ type: 'error', code: 'too_slow', message: 'audio was dropped here: the client is reading too slowly' }),
        onTooSlow: (what) => {
          if (what === 'dropping') this.log.info('client too slow: dropping its oldest audio');
          else this.post({ kind: 'too-slow' });
        },
      },
      metrics,
    );
    this.delivery = new Delivery({
      hello,
      config,
      budget,
      sink: this.sink,
      metrics,
      log: this.log,
      onControl: (event) => this.post(event),
      onUpstreamFailed: (error, failed) => this.post({ kind: 'upstream-failed', error, connection: failed }),
      onFailed: (error) => this.post({ kind: 'pipeline-failed', error }),
    });
    this.connect(connection);
  }

  /** A fresh upstream session: at first, and on each reconnect; the device is provisioned first where it must be. */
  private connect(connection: number): void {
    this.connectStartedAt = performance.now();
    const upstream = this.upstream!;
    this.delivery!.connect(
      this.device!.dial((target) => upstream.connect(target)),
      connection,
    );
  }

  private sendUplink(audio: Buffer | 'flush' | 'reset'): void {
    const { codec, sampleRate, frameMs } = this.conversation.hello!.uplink;
    if (codec === 'opus') {
      if (typeof audio !== 'string') this.sendPacket(audio);
      return;
    }
    if (audio === 'reset' || audio === 'flush') return this.uplink?.next(audio === 'reset' ? RESET : FLUSH);
    if (this.uplink === undefined) {
      // The encoder is made when the first PCM arrives: a session that only types never holds one.
      this.uplink = new Subject<UplinkPcm>();
      this.uplink.pipe(encodeOpus(sampleRate, frameMs)).subscribe({
        next: (packet) => this.sendPacket(packet),
        error: (error: unknown) => this.post({ kind: 'pipeline-failed', error }),
      });
    }
    this.uplink.next(audio);
  }

  private sendPacket(packet: Buffer): void {
    if (this.upstream!.sendAudio(packet)) this.deps.metrics.uplinkFrames.inc();
    else this.deps.metrics.uplinkDropped.inc();
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

  private stopUpstream(): void {
    clearTimeout(this.timer);
    this.delivery?.disconnect();
    this.uplink?.complete();
  }

  private finish(outcome: SessionOutcome, code: number, replyCut: Parameters<SessionReport['replyEnded']>[0]): void {
    this.report.replyEnded(replyCut);
    this.stopUpstream();
    this.delivery?.stop();
    this.sink?.close(outcome === 'too_slow' ? 'too_slow' : 'client_gone');
    if (this.budget !== undefined) this.deps.metrics.budgets.delete(this.budget);
    this.log.info(this.report.summary(outcome, code, this.sink?.tally ?? NO_FRAMES), 'session ended');
    this.deps.onEnded(this, outcome);
  }
}

const NO_FRAMES = { pushed: 0, dropped: 0, failed: 0 };
