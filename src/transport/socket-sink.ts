import type { ClientEnd, ClientFrame } from '../protocol/client.ts';
import type { DropReason, FailReason, FrameCounter, Metrics } from '../observability/metrics.ts';
import type { SessionBudget } from '../streams/budget.ts';

/** The part of a uWS WebSocket the sink uses. */
export interface ClientSocket {
  /** 1: sent; 0: accepted into the socket's own buffer; 2: dropped by the socket's backpressure limit. */
  send(data: Buffer | string, isBinary: boolean): number;
  getBufferedAmount(): number;
  end(code: number, reason: string): void;
  /** Sends made inside `fn` leave in one write to the kernel. */
  cork(fn: () => void): unknown;
}

export interface SinkOptions {
  /** Above this many bytes buffered in the socket, frames wait in the sink's queue instead. */
  highWaterBytes: number;
  /** Milliseconds of audio the queue holds at most. */
  queueLimitMs: number;
  /** Messages the queue holds at most; they are never dropped, so past this the client has to go. */
  maxQueuedMessages: number;
  /** When the audio is over its limit: drop the oldest queued audio (`too_slow`), or give up on the client. */
  policy: 'drop-oldest' | 'close';
  /**
   * The session's memory budget, shared with the pacer and the upstream socket: what waits here takes
   * its bytes from it. Over it, audio goes by the policy; if text alone is over it, the client has to go.
   */
  budget: SessionBudget;
  codec: string;
  transport: string;
  /**
   * Realtime pacing holds frames back on purpose: their latency says nothing of load, so they stay out
   * of frame_lateness_seconds, as do frames that waited for a slow client's socket.
   */
  paced: boolean;
  /**
   * A text frame that takes the place of the first audio frame dropped between two state frames (in one
   * reply, as the client reads it): the client learns that, and where, audio went missing.
   */
  tooSlowNotice: string;
  /**
   * `dropping`: a notice was put in place of a dropped frame.
   * `gave-up`: the client cannot be served any more; the owner closes it (4003).
   */
  onTooSlow: (what: 'dropping' | 'gave-up') => void;
  now?: () => number;
  /** Runs the flush at the end of this turn; tests run it when they choose. */
  schedule?: (flush: () => void) => void;
}

const DROPPED_BY_SOCKET = 2;

/** What waits in the queue: the client's frames, and the too_slow notices the sink puts in their place. */
type QueuedFrame = Exclude<ClientFrame, { kind: 'discard' }> | { readonly kind: 'notice'; readonly data: string };

/**
 * The one place backpressure lives (RxJS has none). Frames written in one turn of the event loop (all
 * the packets of one upstream read, say) leave together, corked into one write to the kernel, at the
 * end of that turn; they go straight to the socket while its buffered amount is under the high-water
 * mark, and above it wait here, in order, until `drain`. Every audio frame ends in exactly one of
 * pushed, dropped (with reason) or failed (with reason). What waits is bounded in milliseconds of audio,
 * in messages and in bytes (the session's budget). A closed socket is never touched: uWS throws.
 */
export class SocketSink {
  /** This session's audio frames, by fate: for its end-of-session log line. */
  readonly tally = { pushed: 0, dropped: 0, failed: 0 };
  private queue: QueuedFrame[] = [];
  private head = 0;
  private queuedAudio = 0;
  private queuedMs = 0;
  private audioBytes = 0;
  /** Bytes of what waits that is not audio: the part no policy may drop. */
  private textBytes = 0;
  private closed = false;
  private overHighWater = false;
  /** Frames have waited for this client's socket since the queue was last empty: theirs is the client's delay, not the gateway's. */
  private backlogged = false;
  private lastAudioAt = -1;
  private inputEndedAt = -1;
  /** A too_slow notice was sent since the last state frame. */
  private noticeSent = false;
  private flushing = false;
  private readonly now: () => number;
  private readonly schedule: (flush: () => void) => void;
  private readonly pushed: FrameCounter;
  private readonly drops: Record<DropReason, { inc(n?: number): void }>;
  private readonly failed: Record<FailReason, { inc(n?: number): void }>;
  private readonly overflows: { inc(): void };

  constructor(
    private readonly socket: ClientSocket,
    private readonly options: SinkOptions,
    private readonly metrics: Metrics,
  ) {
    this.now = options.now ?? performance.now.bind(performance);
    this.schedule = options.schedule ?? queueMicrotask;
    this.pushed = metrics.framesPushed.cell(options.codec, options.transport);
    metrics.queues.add(this);
    const d = metrics.framesDropped;
    this.drops = { aborted: d.labels('aborted'), too_slow: d.labels('too_slow'), client_gone: d.labels('client_gone') };
    const f = metrics.sendFailures;
    this.failed = { closed: f.labels('closed'), backpressure_limit: f.labels('backpressure_limit') };
    this.overflows = metrics.bufferOverflows.labels('client_queue');
  }

  /** Frames waiting in the sink (not counting what the socket itself buffers). */
  get depth(): number {
    return this.queue.length - this.head;
  }

  write(frame: ClientFrame): void {
    if (frame.kind === 'discard') {
      this.dropAudio('aborted');
      return;
    }
    if (this.closed) {
      if (frame.kind === 'audio') {
        this.drops.client_gone.inc();
        this.tally.dropped++;
      }
      return;
    }
    this.enqueue(frame);
    if (!this.flushing && !this.closed) {
      this.flushing = true;
      this.schedule(this.flush);
    }
  }

  /** Sends what this turn wrote, in one corked write; what the socket cannot take now waits, bounded. */
  readonly flush = (): void => {
    this.flushing = false;
    if (this.closed || this.depth === 0) return;
    try {
      this.socket.cork(this.drain);
    } catch {
      // The client closed in this very turn: its close event closes the sink and counts what waits.
      return;
    }
    if (this.depth > 0 && !this.closed) this.bound();
  };

  /** Sends what waits, as far as the high-water mark allows: at a flush, and when the socket drains. */
  readonly drain = (): void => {
    while (!this.closed && this.depth > 0) {
      if (this.isOverHighWater()) {
        this.backlogged = true;
        break;
      }
      const frame = this.queue[this.head]!;
      this.queue[this.head++] = undefined as never;
      this.count(frame, -1);
      if (frame.kind === 'end') this.end(frame);
      else this.send(frame);
    }
    if (this.depth === 0) {
      this.resetQueue();
      this.backlogged = false;
    } else if (!this.closed) this.metrics.sessionQueueDepth.observe(this.depth);
  };

  /** Frames of this session dropped before they reached the sink (by the gate or the pacer): counted here, with the rest. */
  dropped(frames: number, reason: DropReason): void {
    this.drops[reason].inc(frames);
    this.tally.dropped += frames;
  }

  /** Discards every queued audio frame at once (abort); text stays, in order. Returns how many went. */
  dropAudio(reason: DropReason): number {
    const n = this.queuedAudio;
    if (n === 0) return 0;
    const kept: QueuedFrame[] = [];
    for (let i = this.head; i < this.queue.length; i++) {
      const frame = this.queue[i]!;
      if (frame.kind !== 'audio') kept.push(frame);
      else this.count(frame, -1);
    }
    this.drops[reason].inc(n);
    this.tally.dropped += n;
    this.queue = kept;
    this.head = 0;
    return n;
  }

  /** A new reply begins: its first audio frame is timed from `at`. */
  markInputEnded(at: number): void {
    this.inputEndedAt = at;
  }

  /** The socket is gone or going: what waits is dropped, and nothing touches the socket again. */
  close(reason: DropReason = 'client_gone'): void {
    if (this.closed) return;
    this.closed = true;
    this.metrics.queues.delete(this);
    const audio = this.queuedAudio;
    if (audio > 0) this.drops[reason].inc(audio);
    this.tally.dropped += audio;
    for (let i = this.head; i < this.queue.length; i++) this.count(this.queue[i]!, -1);
    this.queue = [];
    this.head = 0;
  }

  private end(frame: ClientEnd): void {
    this.close();
    try {
      this.socket.end(frame.code, frame.reason);
    } catch {
      // Already closed by the client: its close event is on its way.
    }
  }

  private isOverHighWater(): boolean {
    const over = this.socket.getBufferedAmount() > this.options.highWaterBytes;
    if (over && !this.overHighWater) this.metrics.backpressureEvents.inc();
    this.overHighWater = over;
    return over;
  }

  private enqueue(frame: QueuedFrame): void {
    this.count(frame, 1);
    this.queue.push(frame);
  }

  /** A frame comes to wait here, or leaves: what waits is counted in audio, in text and in the budget. */
  private count(frame: QueuedFrame, sign: 1 | -1): void {
    if (frame.kind === 'end') return;
    const bytes = frame.data.length;
    if (sign > 0) this.options.budget.take(bytes);
    else this.options.budget.give(bytes);
    if (frame.kind === 'audio') {
      this.queuedAudio += sign;
      this.queuedMs += sign * frame.durationMs;
      this.audioBytes += sign * bytes;
    } else {
      this.textBytes += sign * bytes;
    }
  }

  /**
   * Applies the slow-client policy to what is left waiting for the socket (the newest frame always
   * stays). Messages are never dropped: when they alone are over a bound, the client has to go. Its
   * bytes are held to what the budget leaves beside the upstream's share; what the pacer holds is the
   * pacer's to shed, so that a burst from the upstream is never blamed on the client.
   */
  private bound(): void {
    const { budget } = this.options;
    if (this.depth - this.queuedAudio > this.options.maxQueuedMessages) return this.giveUp();
    const room = budget.limit - budget.upstreamBytes();
    let over = false;
    while (this.queuedAudio > 1 && (this.queuedMs > this.options.queueLimitMs || this.audioBytes + this.textBytes > room)) {
      over = true;
      if (this.options.policy === 'close') return this.giveUp();
      this.dropOldestAudio();
    }
    if (this.textBytes > room) return this.giveUp();
    if (over) this.overflows.inc();
  }

  private dropOldestAudio(): void {
    for (let i = this.head; i < this.queue.length; i++) {
      const frame = this.queue[i]!;
      if (frame.kind !== 'audio') continue;
      this.count(frame, -1);
      this.drops.too_slow.inc();
      this.tally.dropped++;
      if (this.noticeDue(i)) {
        const notice = { kind: 'notice', data: this.options.tooSlowNotice } as const;
        this.queue[i] = notice;
        this.count(notice, 1);
        this.options.onTooSlow('dropping');
      } else {
        this.queue.splice(i, 1);
      }
      return;
    }
  }

  /** One notice per stretch between state frames (a reply), as the client will read them. */
  private noticeDue(at: number): boolean {
    for (let i = at - 1; i >= this.head; i--) {
      const frame = this.queue[i]!;
      if (frame.kind === 'state') return true;
      if (frame.kind === 'notice') return false;
    }
    return !this.noticeSent;
  }

  /** What waits is dropped as too_slow; the owner closes the session from the callback. */
  private giveUp(): void {
    this.overflows.inc();
    this.close('too_slow');
    this.options.onTooSlow('gave-up');
  }

  private resetQueue(): void {
    if (this.head === 0) return;
    this.queue.length = 0;
    this.head = 0;
  }

  private send(frame: Exclude<QueuedFrame, ClientEnd>): void {
    // A reply's frame intervals are measured between frames as sent, so its boundary counts as sent too.
    if (frame.kind === 'state') {
      this.lastAudioAt = -1;
      this.noticeSent = false;
    } else if (frame.kind === 'notice') {
      this.noticeSent = true;
    }
    const audio = frame.kind === 'audio';
    let result: number;
    try {
      result = this.socket.send(frame.data, typeof frame.data !== 'string');
    } catch {
      // uWS throws once the socket is closed; the close event that follows will close the sink.
      if (audio) {
        this.failed.closed.inc();
        this.tally.failed++;
      }
      return;
    }
    if (!audio) return;
    if (result === DROPPED_BY_SOCKET) {
      this.failed.backpressure_limit.inc();
      this.tally.failed++;
      return;
    }
    this.pushed.n++;
    this.tally.pushed++;
    const now = this.now();
    const latency = (now - frame.arrivedAt) / 1000;
    this.metrics.frameLatency.observe(latency);
    if (!this.options.paced && !this.backlogged) this.metrics.frameLateness.observe(latency);
    if (this.lastAudioAt >= 0) this.metrics.frameInterval.observe((now - this.lastAudioAt) / 1000);
    this.lastAudioAt = now;
    if (this.inputEndedAt >= 0) {
      this.metrics.timeToFirstAudio.observe((now - this.inputEndedAt) / 1000);
      this.inputEndedAt = -1;
    }
  }
}
