import { describe, expect, it } from 'vitest';
import { admission, CALM_WINDOWS, initialAdmission, type AdmissionState } from '../../src/actors/admission.ts';
import { windowQuantile } from '../../src/observability/load.ts';

const BOUNDS = { maxLagMs: 50, maxLatenessMs: 40 };

/** Runs windows of [lagMs, latenessMs], one a second from t = 1000, and returns the state after each. */
function run(windows: [number, number][], from: AdmissionState = initialAdmission(0)): AdmissionState[] {
  const states: AdmissionState[] = [];
  let state = from;
  windows.forEach(([lagMs, latenessMs], i) => {
    state = admission(state, { lagMs, latenessMs, now: 1000 * (i + 1) }, BOUNDS);
    states.push(state);
  });
  return states;
}

const accepting = (states: AdmissionState[]) => states.map((s) => s.accepting);

describe('admission by load', () => {
  it.each<[string, [number, number][], boolean[]]>([
    ['a calm worker keeps accepting', [[5, 1], [12, 3], [49, 39]], [true, true, true]],
    ['the lag at its bound is not over it', [[50, 0]], [true]],
    ['one window of lag over its bound refuses at once', [[51, 0]], [false]],
    ['one window of lateness over its bound refuses at once', [[0, 41]], [false]],
    ['three calm windows in a row admit again', [[80, 0], [10, 5], [10, 5], [10, 5]], [false, false, false, true]],
    ['two calm windows are not enough', [[80, 0], [10, 5], [10, 5]], [false, false, false]],
    ['a window under the bound but over half of it restarts the count', [[80, 0], [10, 5], [10, 5], [30, 5], [10, 5], [10, 5], [10, 5]], [false, false, false, false, false, false, true]],
    ['lateness over half its bound is not calm either', [[0, 60], [0, 21], [0, 20], [0, 20], [0, 20]], [false, false, false, false, true]],
    ['exactly half of both bounds is calm', [[80, 0], [25, 20], [25, 20], [25, 20]], [false, false, false, true]],
    ['overload between calm windows restarts the count', [[80, 0], [10, 5], [10, 5], [60, 0], [10, 5], [10, 5], [10, 5]], [false, false, false, false, false, false, true]],
    ['a frame histogram past its last bucket is over any bound', [[0, Infinity]], [false]],
  ])('%s', (_, windows, expected) => {
    expect(accepting(run(windows))).toEqual(expected);
  });

  it('waits the three calm windows the table above assumes', () => {
    expect(CALM_WINDOWS).toBe(3);
  });

  it('says why it refuses and since when, keeping both while it goes on refusing', () => {
    const [first, second, third] = run([[10, 50], [70, 0], [10, 5]]);
    expect(first).toEqual({ accepting: false, since: 1000, reason: 'lateness', calm: 0 });
    expect(second).toEqual({ accepting: false, since: 1000, reason: 'lateness', calm: 0 });
    expect(third).toEqual({ accepting: false, since: 1000, reason: 'lateness', calm: 1 });
  });

  it('names the lag when both figures are over their bounds', () => {
    expect(run([[70, 70]])[0]!.reason).toBe('lag');
  });

  it('clears the reason and restarts its clock when it admits again', () => {
    expect(run([[70, 0], [0, 0], [0, 0], [0, 0]]).at(-1)).toEqual({ accepting: true, since: 4000, reason: undefined, calm: 0 });
  });

  it('returns the very same state when a window changes nothing', () => {
    const calm = initialAdmission(0);
    expect(admission(calm, { lagMs: 1, latenessMs: 1, now: 1000 }, BOUNDS)).toBe(calm);
    const [refusing] = run([[70, 0]]);
    expect(admission(refusing!, { lagMs: 90, latenessMs: 0, now: 2000 }, BOUNDS)).toBe(refusing);
    expect(admission(refusing!, { lagMs: 30, latenessMs: 0, now: 2000 }, BOUNDS)).toBe(refusing);
  });
});

describe('the lateness of a window, from a frame histogram’s buckets', () => {
  const buckets = [0.001, 0.01, 0.1, 1];
  const snap = (counts: number[], over = 0) => ({ buckets, counts, count: counts.reduce((a, b) => a + b, 0) + over });

  // [what, before, after, frames above the last bucket, quantile, minimum frames, expected seconds]
  it.each<[string, number[], number[], number, number, number, number]>([
    ['nothing observed is 0', [0, 0, 0, 0], [0, 0, 0, 0], 0, 0.5, 1, 0],
    ['fewer frames than the minimum is 0', [0, 0, 0, 0], [0, 0, 99, 0], 0, 0.5, 100, 0],
    ['interpolates within the median’s bucket', [0, 0, 0, 0], [0, 0, 100, 0], 0, 0.5, 100, 0.055],
    ['counts only what came since the last snapshot', [0, 0, 1000, 0], [100, 0, 1000, 0], 0, 0.5, 1, 0.0005],
    ['the first bucket starts at 0', [0, 0, 0, 0], [10, 0, 0, 0], 0, 0.5, 1, 0.0005],
    ['a p99 lands on the slow tail', [0, 0, 0, 0], [98, 0, 0, 2], 0, 0.99, 1, 0.55],
    ['a tenth of slow frames cannot move the median', [0, 0, 0, 0], [90, 0, 0, 10], 0, 0.5, 1, (0.001 * 50) / 90],
    ['past the last bucket is Infinity', [0, 0, 0, 0], [0, 0, 0, 0], 10, 0.5, 1, Infinity],
  ])('%s', (_, before, after, over, q, minCount, expected) => {
    const figure = windowQuantile(snap(before), snap(after, over), q, minCount);
    if (expected === Infinity) expect(figure).toBe(Infinity);
    else expect(figure).toBeCloseTo(expected, 9);
  });

  it('starts afresh when the histogram was reset between the two snapshots', () => {
    expect(windowQuantile(snap([0, 0, 500, 0]), snap([0, 4, 0, 0]), 0.5)).toBeCloseTo(0.0055, 9);
  });
});
