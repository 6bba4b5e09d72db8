import { describe, expect, it } from 'vitest';
import type { ProcessSample } from '../../src/cli/loadtest/process-stats.ts';
import { meetsSlo } from '../../src/cli/loadtest/capacity.ts';
import { buildHtml } from '../../src/cli/loadtest/html.ts';
import { ReplyTrack } from '../../src/cli/loadtest/reply.ts';
import { buildReport, type Observations, type RunInfo, type SendTimes } from '../../src/cli/loadtest/report.ts';
import type { SessionRecord } from '../../src/cli/loadtest/session.ts';
import { summaryText } from '../../src/cli/loadtest/summary.ts';

// A fake clock: the run starts at t = 10 000 ms (performance.now() values), every time is synthetic.
const T0 = 10_000;

const RUN: RunInfo = {
  url: 'ws://127.0.0.1:1/v1/voice',
  sessions: 3,
  replies: 1,
  rampS: 0,
  input: 'text: hi',
  codec: 'pcm16',
  rate: 24000,
  transport: 'binary',
  pacing: 'none',
  prebufferMs: 0,
  buffersMs: [60, 120],
  bargeIn: 0,
  slow: 0,
  seed: 1,
  upstream: 'test',
  startedAt: '2026-01-01T00:00:00.000Z',
};

/** A reply whose input ended at `inputAt` and whose frames (60 ms each) arrived at `arrivals`. */
function reply(turn: number, inputAt: number, arrivals: number[], options: { abortAfter?: number; end?: 'ready' | 'closed' } = {}): ReplyTrack {
  const r = new ReplyTrack(turn, RUN.buffersMs);
  r.inputEndedAt = inputAt;
  arrivals.forEach((t, i) => {
    r.frame(t, 60);
    if (i + 1 === options.abortAfter) r.abort(t);
  });
  r.finish((arrivals.at(-1) ?? inputAt) + 5, options.end ?? 'ready');
  return r;
}

function session(tag: string, replies: ReplyTrack[], outcome: SessionRecord['outcome'] = 'ok', closeCode = 1000): SessionRecord {
  return {
    slow: outcome === 'slow',
    tag,
    startedAt: T0,
    openedAt: T0 + 10,
    closedAt: T0 + 2500,
    outcome,
    failure: outcome === 'failed' ? 'closed 4002' : undefined,
    refusedAfterMs: undefined,
    closeCode,
    errors: [],
    replies,
  };
}

/** A session the gateway turned away `afterMs` after its upgrade request: `error overloaded`, then close 1013. */
function refused(afterMs: number): SessionRecord {
  return { ...session('r', [], 'refused', 1013), openedAt: undefined, closedAt: T0 + afterMs, refusedAfterMs: afterMs, errors: ['overloaded'] };
}

/** `n` frames every 60 ms from `start`. */
const paced = (n: number, start: number) => Array.from({ length: n }, (_, i) => start + i * 60);

function observe(sessions: SessionRecord[], sendTimes?: SendTimes, gateway?: ProcessSample[]): Observations {
  return {
    run: RUN,
    startedAt: T0,
    endedAt: T0 + 2600,
    sessions,
    sendTimes,
    gateway: gateway === undefined ? undefined : { source: 'proc', samples: gateway },
    tool: {
      samples: [
        { t: T0, cpuSeconds: 1 },
        { t: T0 + 2000, cpuSeconds: 1.5 },
      ],
      loopDelayP99Ms: 11.5,
      loopDelayMaxMs: 30.04,
    },
    machine: {
      cores: 2,
      samples: [
        { t: T0, cpuSeconds: 5000 },
        { t: T0 + 1000, cpuSeconds: 5001.5 },
        { t: T0 + 2000, cpuSeconds: 5002.5 },
      ],
    },
  };
}

describe('The load report', () => {
  it('counts replies complete, cut and aborted, and frames lost and duplicated against what the simulator sent', () => {
    const sent: SendTimes = new Map([
      ['a', [paced(10, T0 + 98)]],
      ['b', [paced(10, T0 + 98)]],
      ['c', [paced(10, T0 + 98)]],
      ['d', [paced(10, T0 + 98)]],
      ['e', [[]]],
    ]);
    const report = buildReport(
      observe(
        [
          session('a', [reply(0, T0 + 90, paced(10, T0 + 100))]), // complete
          session('b', [reply(0, T0 + 90, paced(8, T0 + 100))]), // two frames short: cut
          session('c', [reply(0, T0 + 90, paced(4, T0 + 100), { abortAfter: 3 })]), // aborted: owes nothing more
          session('d', [reply(0, T0 + 90, paced(11, T0 + 100))]), // one frame too many: complete, one duplicated
          session('e', [reply(0, T0 + 90, [])]), // `state ready` and no audio at all: cut
        ],
        sent,
      ),
    );
    // An extra frame does not make a reply incomplete; it is counted as duplicated.
    expect(report.replies).toEqual({ complete: 2, cut: 2, aborted: 1 });
    expect(report.frames).toEqual({ expected: 34, received: 33, lost: 2, duplicated: 1, accountedBy: ['simulator'] });
    expect(report.sessions).toMatchObject({ ok: 5, failed: 0, slow: 0, byClose: { '1000': 5 } });
  });

  it('reports time to first audio, frame intervals and gateway latency from arrival and send times', () => {
    const sent: SendTimes = new Map([['a', [paced(5, T0 + 100)]]]);
    const report = buildReport(observe([session('a', [reply(0, T0 + 80, [T0 + 102, T0 + 162, T0 + 222, T0 + 302, T0 + 342])])], sent));
    // HdrHistogram answers a percentile as the top of its bucket: within 0.1% (3 significant digits).
    expect(report.ttfaMs).toMatchObject({ max: 22, count: 1 });
    expect(report.ttfaMs.p99).toBeCloseTo(22, 1);
    // Intervals 60, 60, 80, 40.
    expect(report.intervalMs.count).toBe(4);
    expect(report.intervalMs.p50).toBeCloseTo(60, 1);
    expect(report.intervalMs.max).toBeCloseTo(80, 1);
    // Sent at 100, 160, 220, 280, 340; arrived 2, 2, 2, 22, 2 ms later.
    expect(report.gatewayLatencyMs).toMatchObject({ count: 5 });
    expect(report.gatewayLatencyMs!.p50).toBeCloseTo(2, 2);
    expect(report.gatewayLatencyMs!.max).toBeCloseTo(22, 1);
    expect(report.intervalHistogram.reduce((n, b) => n + b.count, 0)).toBe(4);
    expect(report.intervalHistogram[0]!.ms).toBe(0);
  });

  it('counts underruns and the replies that had any, per buffer size', () => {
    // Frame 4 comes 100 ms late: an underrun at 60 ms, absorbed at 120 ms. Frame 8 comes 200 ms late: both.
    const late = paced(12, T0 + 100).map((t, i) => t + (i >= 8 ? 300 : i >= 4 ? 100 : 0));
    const report = buildReport(observe([session('a', [reply(0, T0, late)]), session('b', [reply(0, T0, paced(12, T0 + 100))])]));
    expect(report.underruns['60']).toMatchObject({ underruns: 2, repliesWithUnderrun: 1 });
    expect(report.underruns['120']).toMatchObject({ underruns: 1, repliesWithUnderrun: 1 });
    // Second by second: frame 4 arrived at 10 440 ms and frame 8 at 10 880 ms, both in the first second.
    expect(report.timeline[0]!.underruns).toEqual({ '60': 2, '120': 1 });
  });

  it('puts each event in the second it happened, and counts sessions open at the end of each second', () => {
    const early = reply(0, T0 + 50, paced(3, T0 + 100));
    const later = reply(0, T0 + 1400, paced(3, T0 + 1500));
    const report = buildReport(observe([session('a', [early]), { ...session('b', [later]), openedAt: T0 + 1200 }]));
    expect(report.timeline.map((e) => e.t)).toEqual([0, 1, 2]);
    expect(report.timeline.map((e) => e.sessionsOpen)).toEqual([1, 2, 0]);
    expect(report.timeline.map((e) => e.frames)).toEqual([3, 3, 0]);
    expect(report.timeline[0]!.ttfaP50).toBeCloseTo(50, 1);
    expect(report.timeline[1]!.ttfaP50).toBeCloseTo(100, 1);
    expect(report.timeline[2]!.ttfaP50).toBeNull();
  });

  it('counts failed sessions by reason and close code, and leaves slow sessions out of what listeners hear', () => {
    const slow = { ...session('s', [reply(0, T0, paced(3, T0 + 5000))], 'slow', 4003) };
    const report = buildReport(observe([session('a', [reply(0, T0, paced(3, T0 + 100), { end: 'closed' })], 'failed', 4002), slow]));
    expect(report.sessions).toEqual({ ok: 0, failed: 1, slow: 1, refused: 0, byClose: { '4002': 1, '4003': 1 }, byError: {}, failures: { 'closed 4002': 1 } });
    expect(report.frames.received).toBe(3);
    expect(report.replies).toEqual({ complete: 0, cut: 1, aborted: 0 });
  });

  it('counts sessions refused at capacity apart from failures, with the time each took to be refused, and judges the SLO on the admitted', () => {
    const report = buildReport(observe([session('a', [reply(0, T0 + 90, paced(10, T0 + 100))]), refused(12), refused(40), refused(900)]));
    expect(report.sessions).toMatchObject({ ok: 1, failed: 0, refused: 3, byClose: { '1000': 1, '1013': 3 }, byError: { overloaded: 3 } });
    expect(report.refusalMs).toMatchObject({ count: 3, max: 900 });
    expect(report.refusalMs.p50).toBeCloseTo(40, 1);
    // Nothing a refused session did not hear is lost, and the one admitted met the SLO.
    expect(report.frames).toMatchObject({ received: 10, lost: 0 });
    expect(report.timeline[0]!.sessionsOpen).toBe(1);
    expect(meetsSlo(report, { refusals: 'allowed' })).toEqual({ ok: true, why: [] });
    const text = summaryText(report);
    expect(text).toMatch(/^sessions\s+1 ok, 0 failed, 3 refused/m);
    expect(text).toMatch(/^refused in\s+p50 40\.0 ms, p99 900\.\d ms, max 900\.0 ms/m);
    expect(summaryText(buildReport(observe([session('a', [])])))).not.toMatch(/refused/);
  });

  it('derives the gateway CPU per frame, its CPU share and peak memory from process samples', () => {
    const samples: ProcessSample[] = [
      { t: T0, cpuSeconds: 10, rssBytes: 100e6 },
      { t: T0 + 1000, cpuSeconds: 10.2, rssBytes: 130e6 },
      { t: T0 + 2000, cpuSeconds: 10.3, rssBytes: 120e6 },
    ];
    const report = buildReport(observe([session('a', [reply(0, T0, paced(30, T0 + 100))])], undefined, samples));
    expect(report.gateway).toMatchObject({ source: 'proc', startRssBytes: 100e6, peakRssBytes: 130e6 });
    expect(report.gateway!.cpuSecondsPerFrame).toBeCloseTo(0.01, 9);
    expect(report.gateway!.cpuShare).toBeCloseTo(0.15, 9);
    expect(report.tool.cpuShare).toBeCloseTo(0.25, 9);
    expect(report.tool).toMatchObject({ loopDelayP99Ms: 11.5, loopDelayMaxMs: 30 });
    expect(report.machine!.cores).toBe(2);
    expect(report.machine!.busyCores).toBeCloseTo(1.25, 9);
    expect(report.timeline.map((e) => e.machineBusyCores)).toEqual([null, 1.5, 1]);
    expect(report.timeline[0]!.gatewayCpuShare).toBeNull();
    expect(report.timeline[1]!.gatewayCpuShare).toBe(0.2);
    expect(report.timeline[2]!.gatewayRssBytes).toBe(120e6);
    expect(report.frames.accountedBy).toEqual([]);
  });

  it('prints a summary table and writes a self-contained HTML page with the chart library and the data', () => {
    const report = buildReport(observe([session('a', [reply(0, T0, paced(10, T0 + 100))])]));
    const text = summaryText(report);
    expect(text).toMatch(/^sessions\s+1 ok, 0 failed$/m);
    expect(text).toMatch(/^replies\s+1 complete, 0 cut, 0 aborted$/m);
    expect(text).toMatch(/^underruns, 120 ms buffer\s+0 in 0 replies/m);
    const html = buildHtml(report);
    expect(html).toContain('var uPlot'); // the library itself, not a link to it
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/);
    const json = /<script type="application\/json" id="report">(.*?)<\/script>/s.exec(html)![1]!;
    expect(JSON.parse(json)).toEqual(JSON.parse(JSON.stringify(report)));
    // The page's own drawing code parses (it runs in a browser, where a typo would leave it blank).
    const scripts = [...html.matchAll(/<script>(.*?)<\/script>/gs)].map((m) => m[1]!);
    expect(scripts).toHaveLength(2);
    for (const code of scripts) expect(() => new Function(code)).not.toThrow();
  });
});
