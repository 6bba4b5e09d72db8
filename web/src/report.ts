// The playout report (docs/protocol.md): what this listener hears, for the gateway's metrics. As the
// protocol asks: at most one a second, plus one when a reply finishes playing (the player's `drained`).
// A barge-in's stop is news too, but it waits its turn in the once a second; usually the `drained` of
// the interrupted reply, which follows it when the gateway's state moves on, carries it at once.
// Its counters are the session's: they start again at each new session's hello.
import type { PlayerFigures } from './player-messages.ts';
import type { ClientMessage } from './protocol.ts';

const EVERY_MS = 1000;

type Counters = { underruns: number; playedMs: number };

export class PlayoutReport {
  /** The player's counters when the session began; undefined while no session is up. */
  private base: Counters | undefined;
  /** What the last report said, and when it went. */
  private last: Counters = { underruns: 0, playedMs: 0 };
  private lastAt = -Infinity;
  /** A report waits for the end of the current second. */
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly send: (message: ClientMessage) => boolean,
    /** The player's figures now. */
    private readonly current: () => PlayerFigures,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The gateway's hello: reports are accepted from now on. */
  start(figures: PlayerFigures): void {
    this.end();
    this.base = { underruns: figures.underruns, playedMs: figures.playedMs };
    this.last = { underruns: 0, playedMs: 0 };
    this.lastAt = -Infinity;
  }

  end(): void {
    this.base = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The player posted its figures. */
  figures(f: PlayerFigures): void {
    if (this.base === undefined) return;
    if (f.event === 'drained') {
      if (this.news(f)) this.report(f);
    } else if (f.playing || f.event === 'stopped') {
      const wait = this.lastAt + EVERY_MS - this.now();
      if (wait <= 0) this.report(f);
      else this.timer ??= setTimeout(() => this.onTime(), wait);
    }
  }

  private onTime(): void {
    this.timer = undefined;
    const f = this.current();
    if (this.base !== undefined && this.news(f)) this.report(f);
  }

  /** Whether the counters have moved since the last report. */
  private news(f: PlayerFigures): boolean {
    const c = this.counters(f);
    return c.underruns !== this.last.underruns || c.playedMs !== this.last.playedMs;
  }

  private counters(f: PlayerFigures): Counters {
    const base = this.base!;
    return { underruns: f.underruns - base.underruns, playedMs: Math.round(f.playedMs - base.playedMs) };
  }

  private report(f: PlayerFigures): void {
    const c = this.counters(f);
    if (!this.send({ type: 'playout', bufferedMs: Math.round(f.bufferedMs), ...c })) return;
    this.last = c;
    this.lastAt = this.now();
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
