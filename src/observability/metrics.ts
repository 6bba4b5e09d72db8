import { readFileSync } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type Metric, type MetricObjectWithValues, type MetricValue } from 'prom-client';

// Every metric of the gateway, defined once (names as in DESIGN.md). Never a per-session label: a
// session's children are cached by the session itself so that the hot path does no label lookups.

/** Frame-scale buckets: a frame's trip through the gateway is normally well under a millisecond. */
const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
/** Around the 60 ms frame clock: a gap users hear is one well above the frame duration. */
const INTERVAL_BUCKETS = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2];
const HUMAN_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10];
const QUEUE_BUCKETS = [0, 1, 2, 5, 10, 20, 50, 100, 200];
/** A client's jitter buffer: empty is an underrun in waiting, a few hundred milliseconds is usual. */
const PLAYOUT_BUCKETS = [0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1, 2, 5];
/** A spoken reply: a sentence or two, up to a long story. */
const REPLY_BUCKETS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120];

/** Close codes the protocol names (docs/protocol.md), and 1005/1006 from the socket; the rest fold into `other`. */
const CLOSE_CODES = new Set([1000, 1001, 1005, 1006, 1008, 1009, 1011, 1013, 4001, 4002, 4003]);
export const closeCodeLabel = (code: number): string => (CLOSE_CODES.has(code) ? String(code) : 'other');

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const DROP_REASONS = ['aborted', 'too_slow', 'client_gone'] as const;
const FAIL_REASONS = ['closed', 'backpressure_limit'] as const;
export type DropReason = (typeof DROP_REASONS)[number];
export type FailReason = (typeof FAIL_REASONS)[number];
const REFUSE_REASONS = ['capacity', 'load', 'draining'] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];
const OTA_OUTCOMES = ['ok', 'activation', 'http_error', 'malformed', 'no_websocket', 'unreachable', 'activate_error'] as const;
export type OtaOutcome = (typeof OTA_OUTCOMES)[number];
const ACTIVATION_OUTCOMES = ['activated', 'timeout', 'failed'] as const;
export type ActivationOutcome = (typeof ACTIVATION_OUTCOMES)[number];
const STORE_OPERATIONS = ['read', 'write'] as const;
export type StoreOperation = (typeof STORE_OPERATIONS)[number];

/** A counter bumped once per audio frame: the hot path adds to a plain number, read at scrape time. */
export interface FrameCounter {
  n: number;
}

/**
 * A prom-client counter whose values live in FrameCounter cells, one per label set: prom-client's own
 * inc() hashes and validates its labels on every call, which is too much for once per frame.
 */
function frameCounter<T extends string>(config: CounterConfiguration<T>) {
  const cells = new Map<string, { labels: Partial<Record<T, string>>; cell: FrameCounter }>();
  const counter = new Counter<T>({
    ...config,
    collect() {
      this.reset();
      for (const { labels, cell } of cells.values()) this.inc(labels, cell.n);
    },
  });
  return Object.assign(counter, {
    /** The cell for these label values, in the order of labelNames. */
    cell(...values: string[]): FrameCounter {
      const key = values.join('\u0000');
      let entry = cells.get(key);
      if (entry === undefined) {
        const names = (config.labelNames ?? []) as readonly T[];
        entry = { labels: Object.fromEntries(names.map((name, i) => [name, values[i]])) as Partial<Record<T, string>>, cell: { n: 0 } };
        cells.set(key, entry);
      }
      return entry.cell;
    },
  });
}

/**
 * A histogram observed once per audio frame: a bucket search over a typed array and three additions.
 * prom-client's Histogram allocates and hashes labels on every observe; this one only renders itself,
 * in the same exposition format, when the registry is scraped.
 */
export class FrameHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly buckets: readonly number[],
    registry: Registry,
  ) {
    this.counts = new Float64Array(buckets.length);
    registry.registerMetric(this as unknown as Metric);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    const b = this.buckets;
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }

  /**
   * What has been observed so far, per bucket (not cumulative; `count` also holds what fell above the last
   * bound): for readers that take the difference between two snapshots, as admission by load does.
   */
  snapshot(): { buckets: readonly number[]; counts: number[]; count: number } {
    return { buckets: this.buckets, counts: Array.from(this.counts), count: this.count };
  }

  get(): Promise<Omit<MetricObjectWithValues<MetricValue<string>>, 'collect'>> {
    const values: MetricValue<string>[] = [];
    let cumulative = 0;
    this.buckets.forEach((le, i) => {
      cumulative += this.counts[i]!;
      values.push({ labels: { le }, value: cumulative, metricName: `${this.name}_bucket` } as MetricValue<string>);
    });
    values.push({ labels: { le: '+Inf' }, value: this.count, metricName: `${this.name}_bucket` } as MetricValue<string>);
    values.push({ labels: {}, value: this.sum, metricName: `${this.name}_sum` } as MetricValue<string>);
    values.push({ labels: {}, value: this.count, metricName: `${this.name}_count` } as MetricValue<string>);
    return Promise.resolve({ name: this.name, help: this.help, type: this.type as never, aggregator: this.aggregator, values });
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'voicegw_' });
  const registers = [registry];
  /** Every live socket sink, so that the queue depth is summed at scrape time, not kept per frame. */
  const queues = new Set<{ readonly depth: number }>();
  /** Every live session's memory budget, summed at scrape time likewise. */
  const budgets = new Set<{ readonly used: number }>();
  const metrics = {
    registry,
    queues,
    budgets,
    sessionsActive: new Gauge({ name: 'voicegw_sessions_active', help: 'Client sessions open now', registers }),
    sessionsTotal: new Counter({
      name: 'voicegw_sessions_total',
      help: 'Client sessions ended, by outcome',
      labelNames: ['outcome'] as const,
      registers,
    }),
    framesPushed: frameCounter({
      name: 'voicegw_frames_pushed_total',
      help: 'Audio frames handed to a client socket',
      labelNames: ['codec', 'transport'] as const,
      registers,
    }),
    framesDropped: new Counter({
      name: 'voicegw_frames_dropped_total',
      help: 'Audio frames discarded on purpose, by reason',
      labelNames: ['reason'] as const,
      registers,
    }),
    sendFailures: new Counter({
      name: 'voicegw_send_failures_total',
      help: 'Frames a client socket refused, by reason',
      labelNames: ['reason'] as const,
      registers,
    }),
    queueDepth: new Gauge({
      name: 'voicegw_queue_depth_frames',
      help: 'Frames waiting in front of client sockets, all sessions',
      registers,
      collect() {
        let depth = 0;
        for (const queue of queues) depth += queue.depth;
        this.set(depth);
      },
    }),
    sessionQueueDepth: new Histogram({
      name: 'voicegw_session_queue_depth_frames',
      help: "A session's queue depth, observed whenever frames are left waiting for the socket to drain",
      buckets: QUEUE_BUCKETS,
      registers,
    }),
    sessionBufferBytes: new Gauge({
      name: 'voicegw_session_buffer_bytes',
      help: 'Bytes held for sessions now, all sessions: client queues, pacers and unsent upstream data',
      registers,
      collect() {
        let bytes = 0;
        for (const budget of budgets) bytes += budget.used;
        this.set(bytes);
      },
    }),
    bufferOverflows: new Counter({
      name: 'voicegw_buffer_overflows_total',
      help: "Times a session's buffer reached its bound and the gateway dropped audio or closed, by buffer",
      labelNames: ['buffer'] as const,
      registers,
    }),
    backpressureEvents: new Counter({
      name: 'voicegw_backpressure_events_total',
      help: "Times a client socket's buffered amount crossed the high-water mark",
      registers,
    }),
    upstreamFrames: frameCounter({ name: 'voicegw_upstream_frames_total', help: 'Opus packets received from the upstream', registers }),
    decodeErrors: new Counter({ name: 'voicegw_decode_errors_total', help: 'Upstream Opus packets that failed to decode', registers }),
    concealedFrames: new Counter({
      name: 'voicegw_concealed_frames_total',
      help: 'Frames made by packet-loss concealment in place of undecodable packets',
      registers,
    }),
    uplinkFrames: new Counter({ name: 'voicegw_uplink_frames_total', help: 'Opus packets sent to the upstream', registers }),
    uplinkDropped: new Counter({
      name: 'voicegw_uplink_frames_dropped_total',
      help: 'Uplink Opus packets dropped: the upstream was not open, or not reading fast enough',
      registers,
    }),
    frameLatency: new FrameHistogram(
      'voicegw_frame_latency_seconds',
      'Upstream arrival of a packet to its frame handed to the client socket',
      LATENCY_BUCKETS,
      registry,
    ),
    frameLateness: new FrameHistogram(
      'voicegw_frame_lateness_seconds',
      "The same, for frames neither held by realtime pacing nor waiting for a slow client's socket: the gateway's own delay, which admission by load judges",
      LATENCY_BUCKETS,
      registry,
    ),
    frameInterval: new FrameHistogram(
      'voicegw_frame_interval_seconds',
      'Gap between consecutive audio frames pushed within one reply',
      INTERVAL_BUCKETS,
      registry,
    ),
    timeToFirstAudio: new Histogram({
      name: 'voicegw_time_to_first_audio_seconds',
      help: "End of the user's input to the reply's first audio frame pushed",
      buckets: HUMAN_BUCKETS,
      registers,
    }),
    upstreamConnect: new Histogram({
      name: 'voicegw_upstream_connect_seconds',
      help: 'Upstream connection opened and hello answered',
      buckets: HUMAN_BUCKETS,
      registers,
    }),
    upstreamErrors: new Counter({
      name: 'voicegw_upstream_errors_total',
      help: 'Upstream faults, by kind',
      labelNames: ['kind'] as const,
      registers,
    }),
    upstreamUnknown: new Counter({
      name: 'voicegw_upstream_unknown_messages_total',
      help: 'Upstream messages of a type the gateway does not act on, tolerated',
      labelNames: ['type'] as const,
      registers,
    }),
    clientMessages: new Counter({
      name: 'voicegw_client_messages_total',
      help: 'Client text messages, by type',
      labelNames: ['type'] as const,
      registers,
    }),
    badMessages: new Counter({
      name: 'voicegw_bad_messages_total',
      help: 'Client or upstream messages refused, by reason',
      labelNames: ['reason'] as const,
      registers,
    }),
    clientCloses: new Counter({
      name: 'voicegw_client_closes_total',
      help: 'Client sessions ended, by the WebSocket close code (either side; 1006: the connection was cut)',
      labelNames: ['code'] as const,
      registers,
    }),
    upstreamReconnects: new Counter({
      name: 'voicegw_upstream_reconnects_total',
      help: 'Sessions that lost their upstream mid-session, by how reconnecting ended: recovered, failed (4002), or abandoned (the session ended first)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    replies: new Counter({
      name: 'voicegw_replies_total',
      help: 'Spoken replies ended, by outcome: complete, aborted (barge-in or abort), upstream_lost, shutdown, client_gone',
      labelNames: ['outcome'] as const,
      registers,
    }),
    replyDuration: new Histogram({
      name: 'voicegw_reply_duration_seconds',
      help: 'A reply from its first word (tts start) to its end, whatever the outcome',
      buckets: REPLY_BUCKETS,
      registers,
    }),
    clientUnderruns: new Counter({
      name: 'voicegw_client_underruns_total',
      help: "Times a client's jitter buffer ran dry while audio was due, from its playout reports",
      registers,
    }),
    clientBuffer: new Histogram({
      name: 'voicegw_client_buffer_seconds',
      help: "Audio in a client's jitter buffer when it reported, from its playout reports",
      buckets: PLAYOUT_BUCKETS,
      registers,
    }),
    clientPlayed: new Counter({
      name: 'voicegw_client_played_seconds_total',
      help: 'Audio clients report having played, from their playout reports',
      registers,
    }),
    buildInfo: new Gauge({
      name: 'voicegw_build_info',
      help: 'Always 1: the running version of voicegw and of Node.js',
      labelNames: ['version', 'node'] as const,
      registers,
    }),
    configInfo: new Gauge({
      name: 'voicegw_config_info',
      help: 'Always 1: the limits in force that dashboards draw lines for',
      labelNames: ['max_sessions', 'slow_client_policy', 'queue_limit_ms', 'session_buffer_bytes'] as const,
      registers,
    }),
    sessionsMax: new Gauge({ name: 'voicegw_sessions_max', help: 'Sessions the gateway admits at most (MAX_SESSIONS)', registers }),
    sessionsRefused: new Counter({
      name: 'voicegw_sessions_refused_total',
      help: 'Sessions refused at admission (overloaded, 1013), by reason: capacity, load, draining',
      labelNames: ['reason'] as const,
      registers,
    }),
    // Workers' registries are merged (AggregatorRegistry): the worst worker's lag, and 0 if any worker refuses.
    eventLoopLag: new Gauge({
      name: 'voicegw_event_loop_lag_seconds',
      help: 'How late a 10 ms timer ran on the event loop, p99 over the last one-second admission window: what ADMISSION_MAX_LAG_MS bounds',
      aggregator: 'max',
      registers,
    }),
    admissionOpen: new Gauge({
      name: 'voicegw_admission_open',
      help: '1 while the load lets the gateway admit sessions; 0 while it refuses them because its event loop lags or its frames leave late',
      aggregator: 'min',
      registers,
    }),
    otaRequests: new Counter({
      name: 'voicegw_ota_requests_total',
      help: 'OTA requests to the xiaozhi server, by outcome: ok, activation (the answer asks for it), http_error, malformed, no_websocket, unreachable; and /activate polls answered with neither 200 nor 202 (activate_error)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    activationsPending: new Gauge({
      name: 'voicegw_activations_pending',
      help: "Sessions waiting for their user to bind the device's activation code",
      registers,
    }),
    activations: new Counter({
      name: 'voicegw_activations_total',
      help: 'Device activations that came to an end, by outcome: activated, timeout, failed',
      labelNames: ['outcome'] as const,
      registers,
    }),
    storeErrors: new Counter({
      name: 'voicegw_store_errors_total',
      help: 'Device store operations that failed (the sessions that needed them get upstream_unavailable), by operation',
      labelNames: ['operation'] as const,
      registers,
    }),
  };
  // A frame's fates exist from the start at 0, so that ratios and alerts over them have a series to read.
  for (const reason of DROP_REASONS) metrics.framesDropped.labels(reason).inc(0);
  for (const reason of FAIL_REASONS) metrics.sendFailures.labels(reason).inc(0);
  for (const reason of REFUSE_REASONS) metrics.sessionsRefused.labels(reason).inc(0);
  for (const outcome of OTA_OUTCOMES) metrics.otaRequests.labels(outcome).inc(0);
  for (const outcome of ACTIVATION_OUTCOMES) metrics.activations.labels(outcome).inc(0);
  for (const operation of STORE_OPERATIONS) metrics.storeErrors.labels(operation).inc(0);
  metrics.admissionOpen.set(1);
  return metrics;
}

/** States what is running and the limits in force, once at start. */
export function recordInfo(metrics: Metrics, limits: { maxSessions: number; policy: string; queueLimitMs: number; sessionBufferBytes: number }): void {
  metrics.buildInfo.labels(VERSION, process.version).set(1);
  metrics.configInfo
    .labels(String(limits.maxSessions), limits.policy, String(limits.queueLimitMs), String(limits.sessionBufferBytes))
    .set(1);
  metrics.sessionsMax.set(limits.maxSessions);
}

/**
 * With WORKERS >= 2, the sessions each worker thread holds, labelled by its index (a few threads, never a
 * session): the merged view sums sessions_active, this keeps the threads apart to show how the kernel
 * spreads connections. Registered in a worker's own registry only.
 */
export function workerSessions(metrics: Metrics, worker: number, sessions: () => number): void {
  new Gauge({
    name: 'voicegw_worker_sessions',
    help: 'Client sessions open now in one worker thread',
    labelNames: ['worker'] as const,
    registers: [metrics.registry],
    collect() {
      this.labels(String(worker)).set(sessions());
    },
  });
}

export type Metrics = ReturnType<typeof createMetrics>;
