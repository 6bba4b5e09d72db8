// Latency distributions: HdrHistogram (hdr-histogram-js) of microseconds, read back in milliseconds.
import { Int32Histogram } from 'hdr-histogram-js';

export type Histogram = Int32Histogram;

/** A histogram of µs with 3 significant digits (0.1% resolution) that grows to whatever it is given. */
export function histogram(): Histogram {
  const h = new Int32Histogram(1, 2, 3);
  h.autoResize = true;
  return h;
}

/** Records a duration in ms; a negative one (two clocks that disagree by a hair) counts as 0. */
export function recordMs(h: Histogram, ms: number): void {
  h.recordValue(Math.max(0, Math.round(ms * 1000)));
}

const round2 = (ms: number) => Math.round(ms * 100) / 100;

/** The percentile in ms, or null when nothing was recorded. */
export function percentileMs(h: Histogram, percentile: number): number | null {
  return h.totalCount === 0 ? null : round2(h.getValueAtPercentile(percentile) / 1000);
}

export function maxMs(h: Histogram): number | null {
  return h.totalCount === 0 ? null : round2(h.maxValue / 1000);
}

/** Bin widths tried in turn until the distribution fits in at most MAX_BINS bins. */
const WIDTHS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
const MAX_BINS = 200;

/** The distribution as contiguous bins from 0 (empty ones included, for a bar chart). */
export function binsMs(h: Histogram): { ms: number; count: number }[] {
  if (h.totalCount === 0) return [];
  const maxMsValue = h.maxValue / 1000;
  const width = WIDTHS_MS.find((w) => maxMsValue / w < MAX_BINS) ?? WIDTHS_MS.at(-1)!;
  const bins = Array.from({ length: Math.floor(maxMsValue / width) + 1 }, (_, i) => ({ ms: i * width, count: 0 }));
  const values = h.recordedValuesIterator;
  values.reset();
  while (values.hasNext()) {
    const v = values.next();
    const bin = bins[Math.min(bins.length - 1, Math.floor(v.valueIteratedTo / 1000 / width))]!;
    bin.count += v.countAtValueIteratedTo;
  }
  return bins;
}
