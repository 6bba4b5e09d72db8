// The HTML report: one self-contained file that opens offline. uPlot (a ~50 kB charting library) is read
// from node_modules when the report is written and inlined, with the report's JSON beside it.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { LoadReport } from './report.ts';
import { summaryRows } from './summary.ts';

const require = createRequire(import.meta.url);

const escapeHtml = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** The charts, drawn in the page from the embedded report. Plain browser JavaScript. */
const RENDER = `
const report = JSON.parse(document.getElementById('report').textContent);
const tl = report.timeline;
const t = tl.map((e) => e.t);
const colors = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
// Two charts a row: the whole report fits a screen (or one screenshot) at 1400 px wide.
const width = () => Math.floor((Math.min(1400, document.body.clientWidth) - 60) / 2);

function chart(id, title, yLabel, series, x = t, extra = {}) {
  const el = document.getElementById(id);
  new uPlot({
    title, width: width(), height: 240, legend: { live: false },
    scales: { x: { time: false }, ...(extra.scales || {}) },
    axes: [{ label: extra.xLabel || 'seconds since the run began' }, { label: yLabel }, ...(extra.axes || [])],
    series: [{ label: extra.xLabel || 's' }, ...series.map((s, i) => ({ stroke: colors[i % colors.length], width: 2, spanGaps: false, ...s }))],
  }, [x, ...series.map((s) => s.data)], el);
}

const col = (key) => tl.map((e) => e[key]);
chart('sessions', 'Sessions open and frames received per second', 'sessions', [
  { label: 'sessions open', data: col('sessionsOpen') },
  { label: 'frames/s', data: col('frames'), scale: 'frames' },
], t, { axes: [{ scale: 'frames', side: 1, label: 'frames/s', grid: { show: false } }] });
chart('ttfa', 'Time to first audio, by the second its first frame arrived', 'ms', [
  { label: 'p50', data: col('ttfaP50') },
  { label: 'p99', data: col('ttfaP99') },
]);
chart('interval', 'Frame arrival interval within a reply', 'ms', [
  { label: 'p50', data: col('intervalP50') },
  { label: 'p99', data: col('intervalP99') },
]);
chart('underruns', 'Underruns per second, by jitter buffer size', 'underruns', report.run.buffersMs.map((ms) => ({
  label: ms + ' ms buffer', data: tl.map((e) => e.underruns[String(ms)]),
})));
if (tl.some((e) => e.gatewayCpuShare !== null || e.machineBusyCores !== null)) {
  chart('cpu', "CPU (100% = one core) and the gateway's memory", '% of a core', [
    { label: 'gateway CPU %', data: tl.map((e) => e.gatewayCpuShare === null ? null : e.gatewayCpuShare * 100) },
    { label: 'load tool CPU %', data: tl.map((e) => e.toolCpuShare === null ? null : e.toolCpuShare * 100) },
    { label: 'machine, all processes %', data: tl.map((e) => e.machineBusyCores === null ? null : e.machineBusyCores * 100), dash: [4, 4] },
    { label: 'gateway RSS MB', data: tl.map((e) => e.gatewayRssBytes === null ? null : e.gatewayRssBytes / 1048576), scale: 'mb' },
  ], t, { axes: [{ scale: 'mb', side: 1, label: 'MB', grid: { show: false } }] });
}
const bins = report.intervalHistogram;
chart('histogram', 'Frame arrival intervals, whole run (log scale)', 'frames', [
  { label: 'frames', data: bins.map((b) => b.count || null), fill: 'rgba(31,119,180,0.35)', paths: uPlot.paths.bars({ size: [0.9, 40], align: 1 }) },
], bins.map((b) => b.ms), { xLabel: 'interval, ms (bin start)', scales: { y: { distr: 3 } } });
`;

export function buildHtml(report: LoadReport): string {
  const uplot = readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
  const css = readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const rows = summaryRows(report)
    .map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`)
    .join('\n');
  // In a <script>, only "</script" (and "<!--") can end it early; JSON keeps its meaning with "<" escaped.
  const json = JSON.stringify(report).replace(/</g, '\\u003c');
  const script = (code: string) => code.replace(/<\/script/gi, '<\\/script');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>voicegw load test, ${escapeHtml(report.run.startedAt)}</title>
<style>${css}</style>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 20px; color: #222; }
h1 { font-size: 20px; margin: 0 0 12px; }
table { border-collapse: collapse; margin-bottom: 20px; }
th, td { text-align: left; padding: 3px 12px 3px 0; vertical-align: top; border-bottom: 1px solid #eee; }
th { font-weight: 600; white-space: nowrap; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 12px 20px; }
</style>
</head>
<body>
<h1>Load test, ${escapeHtml(report.run.startedAt)}</h1>
<table>
${rows}
</table>
<div class="charts">
<div id="sessions"></div>
<div id="underruns"></div>
<div id="ttfa"></div>
<div id="interval"></div>
<div id="histogram"></div>
<div id="cpu"></div>
</div>
<script type="application/json" id="report">${json}</script>
<script>${script(uplot)}</script>
<script>${RENDER}</script>
</body>
</html>
`;
}
