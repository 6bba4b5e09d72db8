import { describe, expect, it } from 'vitest';
import { findCapacity, meetsSlo } from '../../src/cli/loadtest/capacity.ts';
import type { LoadReport } from '../../src/cli/loadtest/report.ts';

/** A report that meets the SLO, with `changes` on top. */
function report(changes: { lost?: number; failed?: number; refused?: number; intervalP99?: number | null; ttfaP99?: number | null; underruns120?: number; buffers?: string[] } = {}): LoadReport {
  return {
    sessions: { ok: 10, failed: changes.failed ?? 0, refused: changes.refused ?? 0, slow: 0, byClose: {}, byError: {}, failures: {} },
    frames: { expected: 100, received: 100, lost: changes.lost ?? 0, duplicated: 0, accountedBy: ['simulator'] },
    intervalMs: { p50: 60, p99: changes.intervalP99 === undefined ? 70 : changes.intervalP99, max: 90, count: 99 },
    ttfaMs: { p50: 5, p95: 8, p99: changes.ttfaP99 === undefined ? 10 : changes.ttfaP99, max: 20, count: 10 },
    underruns: Object.fromEntries((changes.buffers ?? ['120']).map((b) => [b, { underruns: changes.underruns120 ?? 0, repliesWithUnderrun: 0, stalledMs: 0 }])),
  } as unknown as LoadReport;
}

describe('The capacity SLO', () => {
  it('holds for a run with no loss, no failure, steady intervals, quick first audio and no underrun at 120 ms', () => {
    expect(meetsSlo(report())).toEqual({ ok: true, why: [] });
  });

  it('names every way a run misses it', () => {
    const { ok, why } = meetsSlo(report({ lost: 3, failed: 1, intervalP99: 95, ttfaP99: 300, underruns120: 2 }));
    expect(ok).toBe(false);
    expect(why).toEqual(['3 frames lost', '1 sessions failed', 'p99 frame interval 95 ms > 80 ms', 'p99 time to first audio 300 ms > 250 ms', '2 underruns at a 120 ms buffer']);
  });

  it('counts refused sessions against capacity, and judges only the admitted ones of an overload run', () => {
    expect(meetsSlo(report({ refused: 5 })).why).toEqual(['5 sessions refused']);
    expect(meetsSlo(report({ refused: 5 }), { refusals: 'allowed' })).toEqual({ ok: true, why: [] });
  });

  it('is missed by a run where no audio arrived or no 120 ms buffer was modelled', () => {
    expect(meetsSlo(report({ intervalP99: null, ttfaP99: null })).why).toEqual(['no audio arrived']);
    expect(meetsSlo(report({ buffers: ['250'] })).why).toEqual(['no 120 ms buffer was modelled']);
  });
});

describe('The capacity search', () => {
  /** A gateway that holds the SLO up to `limit` sessions; records the sizes probed. */
  const gateway = (limit: number) => {
    const probed: number[] = [];
    const probe = async (n: number) => {
      probed.push(n);
      return report(n <= limit ? {} : { intervalP99: 120 });
    };
    return { probed, probe };
  };

  it('doubles from the start until the SLO breaks, then bisects to within the step', async () => {
    const { probed, probe } = gateway(137);
    const found = await findCapacity(probe, { low: 50, high: 1000, step: 5 });
    expect(probed.slice(0, 3)).toEqual([50, 100, 200]);
    expect(found.sessions).toBeLessThanOrEqual(137);
    expect(found.sessions).toBeGreaterThan(137 - 5);
    expect(found.reports.map((r) => r.sessions)).toEqual(probed);
    expect(found.reports.every((r) => r.ok === r.sessions <= 137)).toBe(true);
  });

  it('stops at the ceiling when the SLO holds all the way', async () => {
    const { probed, probe } = gateway(10_000);
    expect((await findCapacity(probe, { low: 100, high: 700 })).sessions).toBe(700);
    expect(probed).toEqual([100, 200, 400, 700]);
  });

  it('searches below the start when the start already fails, and answers 0 when nothing holds', async () => {
    expect((await findCapacity(gateway(30).probe, { low: 100, high: 1000, step: 1 })).sessions).toBe(30);
    expect((await findCapacity(gateway(0).probe, { low: 100, high: 1000, step: 10 })).sessions).toBe(0);
  });

  it('probes a bounded number of times', async () => {
    const { probed, probe } = gateway(12_345);
    await findCapacity(probe, { low: 1, high: 100_000, step: 1 });
    expect(probed.length).toBeLessThanOrEqual(Math.log2(100_000) * 2 + 2);
  });
});
