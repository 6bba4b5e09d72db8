// The run second by second: each event counts in the second it happened (a reply's time to first
// audio in the second its first frame arrived, an interval in the second its later frame arrived).
import type { CpuSample } from './process-stats.ts';
import { histogram, percentileMs, recordMs, type Histogram } from './histogram.ts';
import type { Observations } from './report.ts';

export interface TimelineEntry {
  /** Seconds since the run began: this entry covers [t, t + 1). */
  t: number;
  /** Sessions open (between the gateway's first `state ready` and the close) at the end of the second. */
  sessionsOpen: number;
  /** Audio frames received. */
  frames: number;
  repliesEnded: number;
  ttfaP50: number | null;
  ttfaP99: number | null;
  intervalP50: number | null;
  intervalP99: number | null;
  /** Per buffer size (ms), underruns. */
  underruns: Record<string, number>;
  /** The gateway's CPU (1 = one core) and resident memory, where known. */
  gatewayCpuShare: number | null;
  gatewayRssBytes: number | null;
  /** The load tool's own CPU: near 1, it is the bottleneck and its figures are pessimistic. */
  toolCpuShare: number | null;
  /** Cores busy on the machine, all processes. */
  machineBusyCores: number | null;
}

interface Bucket {
  frames: number;
  repliesEnded: number;
  ttfa: Histogram | undefined;
  interval: Histogram | undefined;
  underruns: number[];
}

export function timeline(o: Observations): TimelineEntry[] {
  const n = Math.max(1, Math.ceil((o.endedAt - o.startedAt) / 1000));
  const buckets: Bucket[] = Array.from({ length: n }, () => ({ frames: 0, repliesEnded: 0, ttfa: undefined, interval: undefined, underruns: o.run.buffersMs.map(() => 0) }));
  const at = (t: number) => buckets[Math.min(n - 1, Math.max(0, Math.floor((t - o.startedAt) / 1000)))]!;

  for (const s of o.sessions) {
    if (s.slow) continue;
    for (const r of s.replies) {
      for (const t of r.arrivals) at(t).frames++;
      if (r.endedAt !== undefined) at(r.endedAt).repliesEnded++;
      const ttfa = r.ttfaMs;
      if (ttfa !== undefined) recordMs((at(r.arrivals[0]!).ttfa ??= histogram()), ttfa);
      for (let k = 1; k < r.heard; k++) recordMs((at(r.arrivals[k]!).interval ??= histogram()), r.arrivals[k]! - r.arrivals[k - 1]!);
      r.underrunTimes.forEach((times, i) => times.forEach((t) => at(t).underruns[i]!++));
    }
  }

  const gateway = perSecond(o.gateway?.samples ?? [], o.startedAt, n);
  const tool = perSecond(o.tool.samples, o.startedAt, n);
  const machine = perSecond(o.machine.samples, o.startedAt, n);
  return buckets.map((b, i) => {
    const end = Math.min(o.startedAt + (i + 1) * 1000, o.endedAt);
    return {
      t: i,
      sessionsOpen: o.sessions.filter((s) => s.openedAt !== undefined && s.openedAt <= end && (s.closedAt === undefined || s.closedAt > end)).length,
      frames: b.frames,
      repliesEnded: b.repliesEnded,
      ttfaP50: b.ttfa === undefined ? null : percentileMs(b.ttfa, 50),
      ttfaP99: b.ttfa === undefined ? null : percentileMs(b.ttfa, 99),
      intervalP50: b.interval === undefined ? null : percentileMs(b.interval, 50),
      intervalP99: b.interval === undefined ? null : percentileMs(b.interval, 99),
      underruns: Object.fromEntries(o.run.buffersMs.map((ms, j) => [String(ms), b.underruns[j]!])),
      gatewayCpuShare: gateway[i]?.cpuShare ?? null,
      gatewayRssBytes: gateway[i]?.rssBytes ?? null,
      toolCpuShare: tool[i]?.cpuShare ?? null,
      machineBusyCores: machine[i]?.cpuShare ?? null,
    };
  });
}

/** CPU share between consecutive samples, and the later sample's memory if any, in the second of that sample. */
function perSecond(samples: (CpuSample & { rssBytes?: number })[], startedAt: number, n: number): ({ cpuShare: number; rssBytes: number | undefined } | undefined)[] {
  const out: ({ cpuShare: number; rssBytes: number | undefined } | undefined)[] = Array.from({ length: n }, () => undefined);
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    const second = Math.min(n - 1, Math.max(0, Math.floor((b.t - startedAt) / 1000)));
    if (b.t > a.t) out[second] = { cpuShare: Math.round(((b.cpuSeconds - a.cpuSeconds) / ((b.t - a.t) / 1000)) * 1000) / 1000, rssBytes: b.rssBytes };
  }
  return out;
}
