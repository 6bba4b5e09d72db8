// Admission by load, per worker: whether this worker can serve one more session well, decided once per
// window from what its load was over that window. Pure: the gateway samples the load and acts on the answer.

/** One window's load. */
export interface LoadSample {
  /** The event loop's delay over the window (its p99), in milliseconds. */
  lagMs: number;
  /** How late the window's audio frames left for their clients, in milliseconds. */
  latenessMs: number;
  /** When the window ended (performance.now()). */
  now: number;
}

export interface AdmissionBounds {
  maxLagMs: number;
  maxLatenessMs: number;
}

export type OverloadReason = 'lag' | 'lateness';

export interface AdmissionState {
  accepting: boolean;
  /** When `accepting` last changed. */
  since: number;
  /** Why the worker refuses, while it does. */
  reason: OverloadReason | undefined;
  /** While refusing: consecutive windows so far with both figures under CALM_SHARE of their bounds. */
  calm: number;
}

/**
 * Back to admitting only below this share of each bound: a worker hovering at its bound would otherwise
 * flip every window, and every session it let in on a good second would push it over again.
 */
export const CALM_SHARE = 0.5;

/**
 * Consecutive calm windows (one a second) before admitting again. One calm second is not enough: load
 * made of stalls (major GCs, a throttled container) leaves quiet seconds between bad ones. Three seconds
 * is still short beside how often a balancer probes /readyz, and beside how long a refused client waits
 * before it tries again.
 */
export const CALM_WINDOWS = 3;

export const initialAdmission = (now: number): AdmissionState => ({ accepting: true, since: now, reason: undefined, calm: 0 });

/**
 * The next state after a window. Over either bound: refuse, at once (a worker that lets sessions in while
 * it stutters makes every session stutter). Back to accepting after CALM_WINDOWS windows in a row under
 * CALM_SHARE of both bounds; a window between the two resets that count without refusing anew. Returns
 * the same object when nothing changed.
 */
export function admission(state: AdmissionState, sample: LoadSample, bounds: AdmissionBounds): AdmissionState {
  const over: OverloadReason | undefined =
    sample.lagMs > bounds.maxLagMs ? 'lag' : sample.latenessMs > bounds.maxLatenessMs ? 'lateness' : undefined;
  if (over !== undefined) {
    if (state.accepting) return { accepting: false, since: sample.now, reason: over, calm: 0 };
    return state.calm === 0 ? state : { ...state, calm: 0 };
  }
  if (state.accepting) return state;
  const calm = sample.lagMs <= bounds.maxLagMs * CALM_SHARE && sample.latenessMs <= bounds.maxLatenessMs * CALM_SHARE ? state.calm + 1 : 0;
  if (calm >= CALM_WINDOWS) return initialAdmission(sample.now);
  return calm === state.calm ? state : { ...state, calm };
}
