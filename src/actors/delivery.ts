import { asyncScheduler, catchError, EMPTY, filter, identity, merge, Subject, switchAll, type Observable, type OperatorFunction, type Subscription } from 'rxjs';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { ClientHello } from '../protocol/client.ts';
import type { SessionBudget } from '../streams/budget.ts';
import { decodeOpus } from '../streams/decode-opus.ts';
import type { RawUpstream, UpstreamControl, UpstreamInvalid } from '../streams/events.ts';
import { gate } from '../streams/gate.ts';
import { pace } from '../streams/pace.ts';
import { parse } from '../streams/parse.ts';
import { toClient, type Outbound, type REPLY_END, type Steering } from '../streams/to-client.ts';
import type { SocketSink } from '../transport/socket-sink.ts';

export interface DeliveryOptions {
  hello: ClientHello;
  config: Config;
  budget: SessionBudget;
  sink: SocketSink;
  metrics: Metrics;
  log: Logger;
  /** An upstream control message, or one that could not be used: the session actor's to decide on. */
  onControl: (event: UpstreamControl | UpstreamInvalid) => void;
  /** An upstream connection failed (its socket, or its hello); `connection` says which. */
  onUpstreamFailed: (error: unknown, connection: number) => void;
  /** An operator threw: the pipeline is dead, and so is the session. */
  onFailed: (error: unknown) => void;
}

const PACER_NOTICE = { type: 'error', code: 'too_slow', message: 'audio was dropped: more of this reply arrived than the session may hold back for pacing' } as const;

/**
 * One session's downlink, the one way an audio frame travels:
 *
 *   upstream socket → parse → gate → decodeOpus (pcm16) → pace (realtime) → toClient → socket sink → client
 *
 * The session actor steers it without standing in it: control messages leave it for the actor at
 * the filter in `connect`, and what the actor says (its messages; abort, reply start and end; the close) joins it in
 * band, in order with the audio. Each upstream connection is fed in with `connect`; a reconnect
 * switches to the next, while everything after the gate (the decoder, the pacer's clock, the sink's
 * queue) lives as long as the session. Every frame's fate is counted at the sink.
 */
export class Delivery {
  /** When the last upstream audio frame arrived: read at the session's tick, not written to it per frame. */
  audioAt = 0;
  private readonly feeds = new Subject<Observable<Steering>>();
  private readonly steering = new Subject<Steering>();
  private readonly subscription: Subscription;

  constructor(private readonly options: DeliveryOptions) {
    const { hello, config, budget, sink, metrics, log } = options;
    const tooSlow = metrics.bufferOverflows.labels('pacer');
    const hold = { maxMs: config.sink.queueLimitMs, budget, notice: PACER_NOTICE };
    const paced =
      hello.pacing.mode === 'realtime'
        ? pace(
            hello.pacing.prebufferMs,
            (n, why) => {
              if (why === 'overflow') {
                tooSlow.inc();
                log.debug({ frames: n }, 'the upstream sends faster than the client is paced: dropping the oldest held audio');
              }
              sink.dropped(n, why === 'discard' ? 'aborted' : why === 'teardown' ? 'client_gone' : 'too_slow');
            },
            asyncScheduler,
            hold,
          )
        : identity;
    const decoding = hello.downlink.codec === 'pcm16';
    const concealed = () => {
      metrics.decodeErrors.inc();
      metrics.concealedFrames.inc();
    };
    const decoded: OperatorFunction<Outbound | typeof REPLY_END, Outbound> = decoding ? decodeOpus<Outbound>(hello.downlink.sampleRate, concealed) : (identity as never);
    this.subscription = merge(this.feeds.pipe(switchAll()), this.steering)
      .pipe(
        gate((n) => sink.dropped(n, 'aborted'), decoding),
        decoded,
        paced,
        toClient(hello.downlink.transport),
      )
      .subscribe({ next: (frame) => sink.write(frame), error: options.onFailed });
  }

  /** Feeds the pipeline a new upstream connection's messages, in place of the last one's. */
  connect(messages$: Observable<RawUpstream>, connection: number): void {
    const { config, metrics } = this.options;
    const upstreamFrames = metrics.upstreamFrames.cell();
    this.feeds.next(
      messages$.pipe(
        parse(config.upstream.protocolVersion),
        filter((event): event is Extract<typeof event, { kind: 'audio' }> => {
          if (event.kind !== 'audio') {
            this.options.onControl(event);
            return false;
          }
          upstreamFrames.n++;
          this.audioAt = event.arrivedAt;
          return true;
        }),
        catchError((error: unknown) => {
          this.options.onUpstreamFailed(error, connection);
          return EMPTY;
        }),
      ),
    );
  }

  /** Stops listening to the current upstream connection. */
  disconnect(): void {
    this.feeds.next(EMPTY);
  }

  steer(item: Steering): void {
    this.steering.next(item);
  }

  /** The session is over: what the pipeline holds is dropped (and counted), and nothing more flows. */
  stop(): void {
    this.subscription.unsubscribe();
    this.feeds.complete();
    this.steering.complete();
  }
}
