// The listener model: how one reply sounds to a client that plays it through a jitter buffer.
// Pure: it is fed arrival times, so tests drive it with a fake clock.

/**
 * A jitter buffer of `bufferMs` for one reply. Playback starts `bufferMs` after the first frame arrives;
 * each frame then has a playout slot right after the previous frame's audio. A frame that arrives after
 * its slot is an underrun: the listener hears a gap, and the buffer waits for the frame and plays it as
 * it arrives (the timeline re-anchors there; it does not refill the buffer first, as most players do not).
 */
export class PlayoutBuffer {
  /** When the next frame is due to start playing; undefined until the first frame arrives. */
  private due: number | undefined;
  underruns = 0;
  /** Silence heard in the middle of the reply because frames came late. */
  stalledMs = 0;

  constructor(readonly bufferMs: number) {}

  /** A frame of `durationMs` arrived at `t` (ms): true when it came after its playout slot. */
  arrive(t: number, durationMs: number): boolean {
    if (this.due === undefined) {
      this.due = t + this.bufferMs + durationMs;
      return false;
    }
    const late = t > this.due;
    if (late) {
      this.underruns++;
      this.stalledMs += t - this.due;
      this.due = t;
    }
    this.due += durationMs;
    return late;
  }
}
