// Capacity: the most concurrent sessions a gateway serves within the SLO, found by probing it with
// load runs: doubling from a starting point until a run fails the SLO, then bisecting.
import type { LoadReport } from './report.ts';

/** What every listener must get (issue 9); judged at pcm16, 24 kHz, binary, xiaozhi upstream pacing. */
export const SLO = { lostFrames: 0, failedSessions: 0, refusedSessions: 0, intervalP99Ms: 80, ttfaP99Ms: 250, underrunsAt120: 0 } as const;

/**
 * Whether a run held the SLO. A session the gateway refused (1013) counts against capacity, unless
 * `refusals: 'allowed'`: offered more than it can serve, a gateway should refuse, and only the sessions
 * it admitted are judged.
 */
export function meetsSlo(r: LoadReport, options: { refusals?: 'allowed' } = {}): { ok: boolean; why: string[] } {
  const why: string[] = [];
  if (options.refusals !== 'allowed' && r.sessions.refused > SLO.refusedSessions) why.push(`${r.sessions.refused} sessions refused`);
  if (r.frames.lost > SLO.lostFrames) why.push(`${r.frames.lost} frames lost`);
  if (r.sessions.failed > SLO.failedSessions) why.push(`${r.sessions.failed} sessions failed`);
  if (r.intervalMs.p99 === null || r.ttfaMs.p99 === null) why.push('no audio arrived');
  if (r.intervalMs.p99 !== null && r.intervalMs.p99 > SLO.intervalP99Ms) why.push(`p99 frame interval ${r.intervalMs.p99} ms > ${SLO.intervalP99Ms} ms`);
  if (r.ttfaMs.p99 !== null && r.ttfaMs.p99 > SLO.ttfaP99Ms) why.push(`p99 time to first audio ${r.ttfaMs.p99} ms > ${SLO.ttfaP99Ms} ms`);
  const at120 = r.underruns['120'];
  if (at120 === undefined) why.push('no 120 ms buffer was modelled');
  else if (at120.underruns > SLO.underrunsAt120) why.push(`${at120.underruns} underruns at a 120 ms buffer`);
  return { ok: why.length === 0, why };
}

export interface Probe {
  sessions: number;
  ok: boolean;
  why: string[];
  report: LoadReport;
}

/**
 * Probes `low`, doubles while the SLO holds (up to `high`), then bisects between the last size that held
 * and the first that did not until they are `step` apart. When even `low` fails, it bisects below it.
 * Answers the largest size that held (0 if none did) and every probe in order. At most
 * log2(high / low) + log2(high / step) + 2 probes.
 */
export async function findCapacity(
  probe: (sessions: number) => Promise<LoadReport>,
  options: { low: number; high: number; step?: number },
  onProbe?: (p: Probe) => void,
): Promise<{ sessions: number; reports: Probe[] }> {
  const step = Math.max(1, options.step ?? 10);
  const reports: Probe[] = [];
  const held = async (sessions: number): Promise<boolean> => {
    const report = await probe(sessions);
    const p = { sessions, ...meetsSlo(report), report };
    reports.push(p);
    onProbe?.(p);
    return p.ok;
  };
  let good = 0;
  let bad = options.high + 1;
  for (let n = Math.min(options.low, options.high); ; n = Math.min(options.high, n * 2)) {
    if (!(await held(n))) {
      bad = n;
      break;
    }
    good = n;
    if (n >= options.high) break;
  }
  while (bad - good > step && bad <= options.high) {
    const mid = Math.floor((good + bad) / 2);
    if (await held(mid)) good = mid;
    else bad = mid;
  }
  return { sessions: good, reports };
}
