// The report: everything a run observed, reduced to what the summary, the JSON and the HTML show.
// Pure: built from session records, the simulator's send times and process samples, so tests can feed
// it synthetic arrivals.
import type { CpuSample, ProcessSample } from './process-stats.ts';
import { binsMs, histogram, maxMs, percentileMs, recordMs } from './histogram.ts';
import type { SessionRecord } from './session.ts';
import { timeline, type TimelineEntry } from './timeline.ts';

/** Per session tag, per reply in order, when the upstream sent each audio frame (this process's clock). */
export type SendTimes = Map<string, number[][]>;

/** What was run, as the report states it. */
export interface RunInfo {
  /** ws://host:port/v1/voice of the gateway under test. */
  url: string;
  /** Concurrent sessions. */
  sessions: number;
  /** Turns per session. */
  replies: number;
  /** Sessions start spread evenly over this many seconds. */
  rampS: number;
  /** The text typed or the WAV spoken each turn. */
  input: string;
  codec: 'pcm16' | 'opus';
  rate: number;
  transport: 'binary' | 'json';
  pacing: 'none' | 'realtime';
  prebufferMs: number;
  /** Listener jitter buffers modelled, e.g. [60, 120, 250]. */
  buffersMs: number[];
  /** Share 0..1 of replies interrupted after a random part. */
  bargeIn: number;
  /** Share 0..1 of sessions whose socket stops reading. */
  slow: number;
  seed: number;
  /** What the gateway's upstream is, when the tool knows: its own simulator and its pacing. */
  upstream: string | undefined;
  startedAt: string;
}

export interface Observations {
  run: RunInfo;
  /** performance.now() at the start and the end of the run. */
  startedAt: number;
  endedAt: number;
  sessions: SessionRecord[];
  sendTimes: SendTimes | undefined;
  gateway: { source: 'proc' | 'metrics'; samples: ProcessSample[] } | undefined;
  tool: { samples: CpuSample[]; loopDelayP99Ms: number; loopDelayMaxMs: number };
  /** The whole machine's busy time: where the gateway runs here, other work competing with it shows. */
  machine: { cores: number; samples: CpuSample[] };
}

type Ms = number | null;

export interface LoadReport {
  run: RunInfo & { durationS: number };
  /** `refused`: turned away before they opened (at capacity); not failed, and nothing else here counts them. */
  sessions: { ok: number; failed: number; slow: number; refused: number; byClose: Record<string, number>; byError: Record<string, number>; failures: Record<string, number> };
  /** Refused sessions: from the upgrade request to the refusal (the close, or an HTTP 503). */
  refusalMs: { p50: Ms; p99: Ms; max: Ms; count: number };
  replies: { complete: number; cut: number; aborted: number };
  /** `accountedBy`: how lost frames could be known: the tool's simulator's send counts, `audio_frame` seq numbers. */
  frames: { expected: number; received: number; lost: number; duplicated: number; accountedBy: ('simulator' | 'seq')[] };
  ttfaMs: { p50: Ms; p95: Ms; p99: Ms; max: Ms; count: number };
  intervalMs: { p50: Ms; p99: Ms; max: Ms; count: number };
  underruns: Record<string, { underruns: number; repliesWithUnderrun: number; stalledMs: number }>;
  gatewayLatencyMs: { p50: Ms; p99: Ms; max: Ms; count: number } | undefined;
  framesPerSecond: number;
  gateway: { source: 'proc' | 'metrics'; cpuSecondsPerFrame: number; cpuShare: number; startRssBytes: number; peakRssBytes: number } | undefined;
  /** The load tool itself: a busy CPU or a stalled event loop makes arrivals look later than they were. */
  tool: { cpuShare: number; loopDelayP99Ms: number; loopDelayMaxMs: number };
  /** Cores busy on the machine the tool runs on, all processes (undefined where /proc/stat is not). */
  machine: { cores: number; busyCores: number } | undefined;
  timeline: TimelineEntry[];
  intervalHistogram: { ms: number; count: number }[];
}

const round1 = (x: number) => Math.round(x * 10) / 10;
const count = (into: Record<string, number>, key: string) => void (into[key] = (into[key] ?? 0) + 1);

export function buildReport(o: Observations): LoadReport {
  const ttfa = histogram();
  const interval = histogram();
  const latency = histogram();
  const refusal = histogram();
  const sessions: LoadReport['sessions'] = { ok: 0, failed: 0, slow: 0, refused: 0, byClose: {}, byError: {}, failures: {} };
  const replies = { complete: 0, cut: 0, aborted: 0 };
  const frames = { expected: 0, received: 0, lost: 0, duplicated: 0 };
  const underruns = Object.fromEntries(o.run.buffersMs.map((ms) => [String(ms), { underruns: 0, repliesWithUnderrun: 0, stalledMs: 0 }]));
  let seqSeen = false;

  for (const s of o.sessions) {
    count(sessions.byClose, s.closeCode === undefined ? 'none' : String(s.closeCode));
    for (const e of s.errors) count(sessions.byError, e);
    if (s.outcome === 'slow') sessions.slow++;
    else if (s.outcome === 'ok') sessions.ok++;
    else if (s.outcome === 'refused') {
      sessions.refused++;
      if (s.refusedAfterMs !== undefined) recordMs(refusal, s.refusedAfterMs);
    }
    else {
      sessions.failed++;
      count(sessions.failures, s.failure ?? 'unknown');
    }
    if (s.slow) continue; // a client that does not read hears nothing worth modelling
    for (const r of s.replies) {
      const sent = s.tag === undefined ? undefined : o.sendTimes?.get(s.tag)?.[r.turn];
      const aborted = r.abortedAt !== undefined;
      const received = r.arrivals.length;
      seqSeen ||= r.seqGaps > 0 || r.seqRepeats > 0;
      // An aborted reply owes nothing after the abort, so only the others can have lost frames.
      const owed = aborted ? received : (sent?.length ?? received);
      const lost = aborted ? 0 : Math.max(owed - received, r.seqGaps);
      const duplicated = Math.max(received - owed, r.seqRepeats);
      frames.received += received;
      frames.expected += received - duplicated + lost;
      frames.lost += lost;
      frames.duplicated += duplicated;
      // A voice reply with no audio at all is not complete, whatever the upstream meant by it.
      if (aborted) replies.aborted++;
      else if (r.end === 'ready' && lost === 0 && received > 0) replies.complete++;
      else replies.cut++;

      const t = r.ttfaMs;
      if (t !== undefined) recordMs(ttfa, t);
      for (let k = 1; k < r.heard; k++) recordMs(interval, r.arrivals[k]! - r.arrivals[k - 1]!);
      o.run.buffersMs.forEach((ms, i) => {
        const u = underruns[String(ms)]!;
        u.underruns += r.underrunTimes[i]!.length;
        u.stalledMs += r.stalledMs[i]!;
        if (r.underrunTimes[i]!.length > 0) u.repliesWithUnderrun++;
      });
      // Frame k is the k-th the upstream sent only while nothing went missing or came twice.
      if (sent !== undefined && lost === 0 && duplicated === 0) {
        for (let k = 0; k < Math.min(received, sent.length); k++) recordMs(latency, r.arrivals[k]! - sent[k]!);
      }
    }
  }

  const seconds = Math.max(0.001, (o.endedAt - o.startedAt) / 1000);
  const accountedBy: LoadReport['frames']['accountedBy'] = [];
  if (o.sendTimes !== undefined) accountedBy.push('simulator');
  if (o.run.transport === 'json' || seqSeen) accountedBy.push('seq');
  return {
    run: { ...o.run, durationS: Math.round(seconds * 10) / 10 },
    sessions,
    replies,
    frames: { ...frames, accountedBy },
    refusalMs: { p50: percentileMs(refusal, 50), p99: percentileMs(refusal, 99), max: maxMs(refusal), count: refusal.totalCount },
    ttfaMs: { p50: percentileMs(ttfa, 50), p95: percentileMs(ttfa, 95), p99: percentileMs(ttfa, 99), max: maxMs(ttfa), count: ttfa.totalCount },
    intervalMs: { p50: percentileMs(interval, 50), p99: percentileMs(interval, 99), max: maxMs(interval), count: interval.totalCount },
    underruns,
    gatewayLatencyMs:
      o.sendTimes === undefined ? undefined : { p50: percentileMs(latency, 50), p99: percentileMs(latency, 99), max: maxMs(latency), count: latency.totalCount },
    framesPerSecond: Math.round(frames.received / seconds),
    gateway: gatewaySummary(o, frames.received),
    tool: { cpuShare: cpuShare(o.tool.samples), loopDelayP99Ms: round1(o.tool.loopDelayP99Ms), loopDelayMaxMs: round1(o.tool.loopDelayMaxMs) },
    machine: o.machine.samples.length < 2 ? undefined : { cores: o.machine.cores, busyCores: cpuShare(o.machine.samples) },
    timeline: timeline(o),
    intervalHistogram: binsMs(interval),
  };
}

/** CPU seconds per wall second between the first and the last sample (1 = one core busy). */
function cpuShare(samples: CpuSample[]): number {
  const first = samples[0];
  const last = samples.at(-1);
  if (first === undefined || last === undefined || last.t <= first.t) return 0;
  return (last.cpuSeconds - first.cpuSeconds) / ((last.t - first.t) / 1000);
}

function gatewaySummary(o: Observations, framesReceived: number): LoadReport['gateway'] {
  const samples = o.gateway?.samples ?? [];
  const first = samples[0];
  const last = samples.at(-1);
  if (o.gateway === undefined || first === undefined || last === undefined) return undefined;
  return {
    source: o.gateway.source,
    cpuSecondsPerFrame: framesReceived > 0 ? (last.cpuSeconds - first.cpuSeconds) / framesReceived : 0,
    cpuShare: cpuShare(samples),
    startRssBytes: first.rssBytes,
    peakRssBytes: Math.max(...samples.map((s) => s.rssBytes)),
  };
}
