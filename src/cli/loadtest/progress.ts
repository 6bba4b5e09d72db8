// The progress bar on stderr while a run goes: replies done of all asked, sessions open, failures and
// underruns so far, elapsed time and an estimate of what remains.
import cliProgress from 'cli-progress';
import type { Progress } from './run.ts';

export interface ProgressBar {
  update(p: Progress): void;
  stop(): void;
}

export function progressBar(sessions: number): ProgressBar {
  const bar = new cliProgress.SingleBar(
    {
      format: 'loadtest |{bar}| {value}/{total} replies | {open} open, {started}/{sessions} started | {failed} failed | underruns {underruns} | {duration_formatted}, ETA {eta_formatted}',
      barsize: 24,
      hideCursor: true,
      etaBuffer: 50,
      // Until a reply is done there is no rate to estimate from: cli-progress would print "NF".
      formatTime: (t, options, round) => (typeof t === 'number' && Number.isFinite(t) ? cliProgress.Format.TimeFormat(t, options, round) : '?'),
      stream: process.stderr,
    },
    cliProgress.Presets.shades_classic,
  );
  let begun = false;
  return {
    update: (p) => {
      const payload = {
        open: p.sessionsOpen,
        started: p.sessionsStarted,
        sessions,
        failed: p.failed,
        underruns: Object.entries(p.underruns)
          .map(([ms, n]) => `${n}@${ms}ms`)
          .join(' '),
      };
      if (!begun) bar.start(p.repliesTotal, p.repliesDone, payload);
      else bar.update(p.repliesDone, payload);
      begun = true;
    },
    stop: () => bar.stop(),
  };
}
