import type { Metrics } from '../observability/metrics.ts';

/** Between the client's clock and the gateway's: a report may be in flight this long. */
const CLOCK_SLACK_MS = 2000;
/** The shortest frame a client plays: it cannot run dry more often than once a frame. */
const MIN_FRAME_MS = 20;

export type ReplyOutcome = 'complete' | 'aborted' | 'upstream_lost' | 'shutdown' | 'client_gone';

/** A client's playout report (PROTOCOL.md `playout`): its buffer now, and its counters since the session began. */
export interface Playout {
  bufferedMs: number;
  underruns: number;
  playedMs: number;
}

/**
 * What one session tells operators beyond its frames: how its replies ended and how long they ran, what
 * its client reports hearing, and the one log line of its end. The session calls it as things happen;
 * it keeps only the numbers that line needs.
 */
export class SessionReport {
  private readonly startedAt = performance.now();
  private replyStartedAt = -1;
  private replies = 0;
  private underruns = 0;
  private playedMs = 0;

  constructor(private readonly metrics: Metrics) {}

  /** From `tts start`: the reply runs until one of the outcomes ends it. */
  replyStarted(): void {
    if (this.replyStartedAt < 0) this.replyStartedAt = performance.now();
  }

  replyEnded(outcome: ReplyOutcome): void {
    if (this.replyStartedAt < 0) return;
    this.metrics.replies.labels(outcome).inc();
    this.metrics.replyDuration.observe((performance.now() - this.replyStartedAt) / 1000);
    this.replyStartedAt = -1;
    this.replies++;
  }

  /**
   * Counts a playout report. Counters that go backwards, or claim more than the session's own clock
   * allows, make it a bad_message (the detail is returned): one client must not be able to skew what
   * operators see of every listener.
   */
  playout(report: Playout): string | undefined {
    const ageMs = performance.now() - this.startedAt;
    if (report.underruns < this.underruns) return `playout: underruns went back from ${this.underruns} to ${report.underruns}`;
    if (report.playedMs < this.playedMs) return `playout: playedMs went back from ${this.playedMs} to ${report.playedMs}`;
    if (report.playedMs > ageMs + CLOCK_SLACK_MS) return 'playout: playedMs is more audio than the session has lasted';
    if (report.underruns > (ageMs + CLOCK_SLACK_MS) / MIN_FRAME_MS) return 'playout: more underruns than the session has had frames';
    this.metrics.clientUnderruns.inc(report.underruns - this.underruns);
    this.metrics.clientPlayed.inc((report.playedMs - this.playedMs) / 1000);
    this.metrics.clientBuffer.observe(report.bufferedMs / 1000);
    this.underruns = report.underruns;
    this.playedMs = report.playedMs;
    return undefined;
  }

  /** The fields of the session's last log line; `frames` is what its sink counted. */
  summary(outcome: string, code: number, frames: { pushed: number; dropped: number; failed: number }) {
    return {
      outcome,
      code,
      durationMs: Math.round(performance.now() - this.startedAt),
      replies: this.replies,
      frames: { pushed: frames.pushed, dropped: frames.dropped, failed: frames.failed },
      underruns: this.underruns,
      playedMs: this.playedMs,
    };
  }
}
