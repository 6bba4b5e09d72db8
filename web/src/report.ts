// The playout report (docs/protocol.md): what this listener hears, for the gateway's metrics. At most one
// a second while a reply plays, plus one each time playback stops (the reply's end, or a barge-in). Its
// counters are the session's: they start again at each new session's hello.
import type { PlayerFigures } from './player-messages.ts';
import type { ClientMessage } from './protocol.ts';

const EVERY_MS = 1000;

export class PlayoutReport {
  /** The player's counters when the session began; undefined while no session is up. */
  private base: { underruns: number; playedMs: number } | undefined;
  private lastAt = -Infinity;

  constructor(private readonly send: (message: ClientMessage) => boolean) {}

  /** The gateway's hello: reports are accepted from now on. */
  start(figures: PlayerFigures): void {
    this.base = { underruns: figures.underruns, playedMs: figures.playedMs };
    this.lastAt = -Infinity;
  }

  end(): void {
    this.base = undefined;
  }

  figures(f: PlayerFigures, now: number): void {
    if (this.base === undefined) return;
    const stopped = f.event === 'drained' || f.event === 'stopped';
    if (!stopped && !(f.playing && now - this.lastAt >= EVERY_MS)) return;
    const report = {
      type: 'playout' as const,
      bufferedMs: Math.round(f.bufferedMs),
      underruns: f.underruns - this.base.underruns,
      playedMs: Math.round(f.playedMs - this.base.playedMs),
    };
    if (this.send(report)) this.lastAt = now;
  }
}
