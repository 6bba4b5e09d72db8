// The I/O edge of admission by load: reads, once per window, how late this thread's event loop ran and how
// late its audio frames left, and starts the next window. Nothing here runs per frame.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { FrameHistogram } from './metrics.ts';

/** How often the loop's delay is sampled. Finer costs more wakeups for no better decision. */
const RESOLUTION_MS = 10;

/**
 * The lateness figure is the 99th-percentile frame of the window, and only once the window holds this
 * many frames (about six speaking sessions, 60 ms frames, 1 s windows). frame_lateness_seconds leaves out
 * what realtime pacing holds back on purpose and what waits for a slow client's socket, so what is left is
 * the gateway's own delay, which load raises for every session alike; and a listener hears the worst
 * frames, not the median: the SLO is a p99.
 */
const LATENESS_QUANTILE = 0.99;
const MIN_FRAMES = 100;

type Snapshot = ReturnType<FrameHistogram['snapshot']>;

/** One window's load, in milliseconds. */
export interface Load {
  lagMs: number;
  latenessMs: number;
}

export class LoadSampler {
  private readonly delay: IntervalHistogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  private last: Snapshot;

  constructor(private readonly frameLateness: FrameHistogram) {
    this.delay.enable();
    this.last = frameLateness.snapshot();
  }

  /**
   * The window since the last call. The loop's p99: at 10 ms resolution a one-second window holds about a
   * hundred samples, so one isolated pause (a major GC) is ignored and a second one is not. A sample is
   * the time between two runs of a 10 ms timer, so the lag is what it took beyond those 10 ms. A reset
   * drops the sample that spans it, so a stall that starts within 10 ms of a window's start is missed:
   * sustained load, which is what admission is for, never is.
   */
  sample(): Load {
    const lagMs = this.delay.count === 0 ? 0 : Math.max(0, this.delay.percentile(99) / 1e6 - RESOLUTION_MS);
    this.delay.reset();
    const current = this.frameLateness.snapshot();
    const seconds = windowQuantile(this.last, current, LATENESS_QUANTILE, MIN_FRAMES);
    this.last = current;
    return { lagMs, latenessMs: seconds * 1000 };
  }

  stop(): void {
    this.delay.disable();
  }
}

/**
 * The q-quantile of what a histogram observed between two snapshots, interpolated within its bucket as
 * Prometheus's histogram_quantile does (the dashboard's figure for the same histogram); 0 below
 * `minCount` observations, Infinity when it falls above the last bucket.
 */
export function windowQuantile(before: Snapshot, after: Snapshot, q: number, minCount = 1): number {
  // A histogram reset between the two (tests do that) starts the window afresh.
  if (after.count < before.count) before = { buckets: after.buckets, counts: [], count: 0 };
  const total = after.count - before.count;
  if (total < Math.max(1, minCount)) return 0;
  const rank = q * total;
  let cumulative = 0;
  for (let i = 0; i < after.buckets.length; i++) {
    const inBucket = after.counts[i]! - (before.counts[i] ?? 0);
    if (cumulative + inBucket >= rank && inBucket > 0) {
      const lower = i === 0 ? 0 : after.buckets[i - 1]!;
      return lower + (after.buckets[i]! - lower) * ((rank - cumulative) / inBucket);
    }
    cumulative += inBucket;
  }
  return Infinity;
}
