// The report as a two-column table: printed at the end of a run, and shown at the top of the HTML report.
import type { LoadReport } from './report.ts';

const ms = (v: number | null) => (v === null ? '-' : `${v.toFixed(1)} ms`);
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;
const pct = (share: number) => `${(share * 100).toFixed(0)}%`;
const counts = (r: Record<string, number>) =>
  Object.keys(r).length === 0
    ? 'none'
    : Object.entries(r)
        .sort((a, b) => b[1] - a[1])
        .map(([k, n]) => `${k} ×${n}`)
        .join(', ');

export function summaryRows(r: LoadReport): [string, string][] {
  const run = r.run;
  const rows: [string, string][] = [
    ['run', `${run.sessions} sessions × ${run.replies} replies, ramp ${run.rampS} s, ${run.input}`],
    ['downlink', `${run.codec} ${run.rate} Hz ${run.transport}, pacing ${run.pacing}${run.pacing === 'realtime' ? ` (prebuffer ${run.prebufferMs} ms)` : ''}`],
    ['gateway', `${run.url}${run.upstream === undefined ? '' : ` (upstream: ${run.upstream})`}`],
    ['duration', `${run.durationS} s`],
    [
      'sessions',
      `${r.sessions.ok} ok, ${r.sessions.failed} failed${run.slow > 0 ? `, ${r.sessions.slow} slow` : ''}` +
        (r.sessions.refused > 0 ? `, ${r.sessions.refused} refused (at capacity: not failures; the figures below are the admitted sessions')` : ''),
    ],
  ];
  if (r.sessions.failed > 0) rows.push(['failed because', counts(r.sessions.failures)]);
  if (r.sessions.refused > 0) {
    const t = r.refusalMs;
    rows.push(['refused in', `p50 ${ms(t.p50)}, p99 ${ms(t.p99)}, max ${ms(t.max)} from the upgrade request to the close`]);
  }
  rows.push(
    ['close codes', counts(r.sessions.byClose)],
    ['error codes', counts(r.sessions.byError)],
    ['replies', `${r.replies.complete} complete, ${r.replies.cut} cut, ${r.replies.aborted} aborted`],
    [
      'frames',
      `${r.frames.received} received of ${r.frames.expected} expected, ${r.frames.lost} lost, ${r.frames.duplicated} duplicated` +
        (r.frames.accountedBy.length === 0 ? ' (losses not knowable: binary transport, unknown upstream)' : ` (known from ${r.frames.accountedBy.join(' and ')})`),
    ],
    ['throughput', `${r.framesPerSecond} frames/s`],
    ['time to first audio', `p50 ${ms(r.ttfaMs.p50)}, p95 ${ms(r.ttfaMs.p95)}, p99 ${ms(r.ttfaMs.p99)}, max ${ms(r.ttfaMs.max)}`],
    ['frame interval', `p50 ${ms(r.intervalMs.p50)}, p99 ${ms(r.intervalMs.p99)}, max ${ms(r.intervalMs.max)}`],
  );
  if (r.gatewayLatencyMs !== undefined) {
    rows.push(['gateway latency', `p50 ${ms(r.gatewayLatencyMs.p50)}, p99 ${ms(r.gatewayLatencyMs.p99)}, max ${ms(r.gatewayLatencyMs.max)}`]);
  }
  for (const [buffer, u] of Object.entries(r.underruns)) {
    rows.push([`underruns, ${buffer} ms buffer`, `${u.underruns} in ${u.repliesWithUnderrun} replies (${u.stalledMs.toFixed(0)} ms of silence)`]);
  }
  if (r.gateway !== undefined) {
    const g = r.gateway;
    rows.push(
      ['gateway CPU', `${pct(g.cpuShare)} of a core, ${(g.cpuSecondsPerFrame * 1e6).toFixed(1)} µs per frame received (${g.source === 'proc' ? '/proc' : '/metrics'})`],
      ['gateway RSS', `peak ${mb(g.peakRssBytes)}, ${mb(g.startRssBytes)} at start`],
    );
  }
  if (r.machine !== undefined) {
    const known = (r.gateway?.source === 'proc' ? r.gateway.cpuShare : 0) + r.tool.cpuShare;
    rows.push(['machine', `${r.machine.busyCores.toFixed(2)} of ${r.machine.cores} cores busy, ${Math.max(0, r.machine.busyCores - known).toFixed(2)} of them neither the gateway nor the load tool`]);
  }
  const busy = r.tool.cpuShare > 0.9 || r.tool.loopDelayP99Ms > 20;
  rows.push([
    'load tool',
    `CPU ${pct(r.tool.cpuShare)} of a core, event-loop delay p99 ${ms(r.tool.loopDelayP99Ms)}, max ${ms(r.tool.loopDelayMaxMs)}` +
      (busy ? ': the tool itself was late, so its timings are pessimistic' : ''),
  ]);
  return rows;
}

export function summaryText(r: LoadReport): string {
  const rows = summaryRows(r);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}
