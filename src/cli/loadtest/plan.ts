// Who does what in a run, decided before it starts and reproducible from a seed: which sessions are
// slow, which replies are interrupted and after how much audio, when each session starts.

/** A barge-in interrupts after a uniformly random amount of received audio between these (ms). */
const BARGE_IN_MS = { min: 60, max: 3000 } as const;

export interface Plan {
  /** When each session starts, in ms from the start of the run. */
  startAtMs: number[];
  slow: boolean[];
  /** Per session, per turn: abort after this much audio (ms), or never. */
  bargeInAfterMs: (number | undefined)[][];
}

/** A small seeded generator (mulberry32): the same seed gives the same run plan. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * round(n × share) of n indices, spread evenly rather than drawn: a share of 0.05 of 20 is exactly one,
 * so that a small run always has what it asks for.
 */
export function spread(n: number, share: number): Set<number> {
  const count = Math.round(n * share);
  return new Set(Array.from({ length: count }, (_, j) => Math.floor(((j + 0.5) * n) / count)));
}

export function plan(o: { sessions: number; replies: number; rampS: number; bargeIn: number; slow: number; seed: number }): Plan {
  const next = random(o.seed);
  const slow = spread(o.sessions, o.slow);
  const normal = Array.from({ length: o.sessions }, (_, i) => i).filter((i) => !slow.has(i));
  const interrupted = spread(normal.length * o.replies, o.bargeIn);
  const bargeInAfterMs = Array.from({ length: o.sessions }, () => Array.from({ length: o.replies }, (): number | undefined => undefined));
  normal.forEach((session, n) => {
    for (let turn = 0; turn < o.replies; turn++) {
      if (interrupted.has(n * o.replies + turn)) bargeInAfterMs[session]![turn] = BARGE_IN_MS.min + next() * (BARGE_IN_MS.max - BARGE_IN_MS.min);
    }
  });
  return {
    startAtMs: Array.from({ length: o.sessions }, (_, i) => (o.sessions > 1 ? (i * o.rampS * 1000) / (o.sessions - 1) : 0)),
    slow: Array.from({ length: o.sessions }, (_, i) => slow.has(i)),
    bargeInAfterMs,
  };
}
