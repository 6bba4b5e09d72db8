// One reply as a client received it: when each frame came, how the listener heard it, and what the
// `audio_frame` sequence numbers say about frames lost or repeated. Pure: fed times, never reads a clock.
import { PlayoutBuffer } from './listener.ts';

/** How a reply ended: its closing `state ready`, the session closing under it, or the tool giving up. */
export type ReplyEnd = 'ready' | 'closed' | 'timeout';

export class ReplyTrack {
  /** Arrival time of every frame, those after an abort included. */
  readonly arrivals: number[] = [];
  /** Frames that arrived before the abort was sent: the ones a listener hears. */
  heard = 0;
  /** Per buffer size (in the order given), the arrival times of frames that came after their playout slot. */
  readonly underrunTimes: number[][];
  /** Per buffer size, silence heard mid-reply. */
  readonly stalledMs: number[];
  /** Audio received before the abort, in ms: where a barge-in decides to interrupt. */
  heardMs = 0;
  /** When the client's input ended (text sent, or `listen stop`): time to first audio counts from here. */
  inputEndedAt: number | undefined;
  abortedAt: number | undefined;
  end: ReplyEnd | undefined;
  endedAt: number | undefined;
  /** `audio_frame` sequence numbers skipped while no abort excuses it (json transport only). */
  seqGaps = 0;
  /** `audio_frame` sequence numbers seen again. */
  seqRepeats = 0;
  private readonly buffers: PlayoutBuffer[];

  constructor(
    readonly turn: number,
    buffersMs: readonly number[],
  ) {
    this.buffers = buffersMs.map((ms) => new PlayoutBuffer(ms));
    this.underrunTimes = buffersMs.map(() => []);
    this.stalledMs = buffersMs.map(() => 0);
  }

  /** A frame of `durationMs` arrived at `t`; answers which buffer sizes (by index) underran on it. */
  frame(t: number, durationMs: number): number[] {
    this.arrivals.push(t);
    if (this.abortedAt !== undefined || this.end !== undefined) return [];
    this.heard++;
    this.heardMs += durationMs;
    const late: number[] = [];
    this.buffers.forEach((buffer, i) => {
      if (!buffer.arrive(t, durationMs)) return;
      late.push(i);
      this.underrunTimes[i]!.push(t);
      this.stalledMs[i] = buffer.stalledMs;
    });
    return late;
  }

  /** The client interrupted: what arrives from now on is not played. */
  abort(t: number): void {
    this.abortedAt ??= t;
  }

  finish(t: number, how: ReplyEnd): void {
    if (this.end !== undefined) return;
    this.end = how;
    this.endedAt = t;
  }

  get ttfaMs(): number | undefined {
    const first = this.arrivals[0];
    return first === undefined || this.inputEndedAt === undefined ? undefined : first - this.inputEndedAt;
  }
}

/**
 * `audio_frame` sequence numbers of one session (they count from 0 within it). A gap is lost audio
 * unless an abort explains it: the frames an abort discards may have had their numbers already.
 */
export class SeqCheck {
  private next = 0;

  see(seq: number, reply: ReplyTrack, excused: boolean): void {
    if (seq < this.next) {
      reply.seqRepeats++;
      return;
    }
    if (seq > this.next && !excused) reply.seqGaps += seq - this.next;
    this.next = seq + 1;
  }
}
