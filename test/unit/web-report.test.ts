import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { noFigures, type PlayerFigures } from '../../web/src/player-messages.ts';
import type { ClientMessage } from '../../web/src/protocol.ts';
import { PlayoutReport } from '../../web/src/report.ts';

// The browser client's playout reports (web/src/report.ts), on a fake clock: at most one a second, plus
// one when a reply finishes playing, as docs/protocol.md asks.

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

function reporter() {
  const sent: ClientMessage[] = [];
  let figures: PlayerFigures = noFigures();
  const report = new PlayoutReport(
    (m) => (sent.push(m), true),
    () => figures,
    () => Date.now(),
  );
  /** The player posts figures: `playedMs` so far, the event, playing or not. */
  const post = (playedMs: number, event: PlayerFigures['event'] = 'tick', playing = true) => {
    figures = { ...figures, playedMs, event, playing };
    report.figures(figures);
  };
  report.start(figures);
  return { sent, report, post, played: () => sent.map((m) => (m.type === 'playout' ? m.playedMs : -1)) };
}

it('while a reply plays: one report at its start, then one a second', () => {
  const r = reporter();
  for (let ms = 0; ms <= 2500; ms += 50) {
    r.post(ms, ms === 0 ? 'started' : 'tick');
    vi.advanceTimersByTime(50);
  }
  // The second's report carries the latest figures then, posted 50 ms before.
  expect(r.played()).toEqual([0, 950, 1950]);
});

it("a reply's end is reported at once; a stop waits for its second, unless the end that follows carries it", () => {
  const r = reporter();
  r.post(0, 'started');
  vi.advanceTimersByTime(300);
  r.post(300, 'stopped', false);
  expect(r.played()).toEqual([0]);
  r.post(300, 'drained', false);
  expect(r.played()).toEqual([0, 300]);
  vi.advanceTimersByTime(2000);
  expect(r.played()).toEqual([0, 300]);
  // A stop with no end after it (the reply had ended before the barge-in) goes when its second is up.
  r.post(300, 'started');
  vi.advanceTimersByTime(200);
  r.post(500, 'stopped', false);
  expect(r.played()).toEqual([0, 300, 300]);
  vi.advanceTimersByTime(1000);
  expect(r.played()).toEqual([0, 300, 300, 500]);
});

it('an end with nothing new since the last report, or after the session, sends nothing', () => {
  const r = reporter();
  r.post(0, 'drained', false);
  expect(r.sent).toEqual([]);
  r.post(100, 'started');
  r.report.end();
  r.post(200, 'drained', false);
  vi.advanceTimersByTime(2000);
  expect(r.played()).toEqual([100]);
});
