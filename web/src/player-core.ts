// The player's logic, apart from the AudioWorklet that runs it (player-worklet.ts), so that it can be
// tested in Node quantum by quantum. It plays the downlink from a jitter buffer: it starts once the target
// is buffered (or the reply has ended), counts an underrun each time the buffer runs dry in the middle of
// a reply, and goes silent at the first render quantum after a flush.
// process() runs on the audio thread once per render quantum (128 frames) and allocates nothing: the
// figures are one object, filled in place. Their copy, postMessage's, happens only when process() says so:
// at an event, or every ~50 ms while there is something to show (a reply playing or buffered, or a change).
import { FrameQueue } from './frame-queue.ts';
import { noFigures, type PlayerCommand, type PlayerEvent, type PlayerFigures } from './player-messages.ts';

/** Frames in a render quantum (Web Audio API 1.0: always 128). */
export const QUANTUM = 128;

export class PlayerCore {
  /** What the page is told: filled in place, valid when process() has returned true. */
  readonly figures: PlayerFigures = noFigures();
  private readonly queue: FrameQueue;
  /** How often the figures are posted without an event: about every 50 ms. */
  private readonly tickQuanta: number;
  private playing = false;
  /** The reply's last frame is buffered: play it out without waiting for the target, and no underrun at its end. */
  private ended = false;
  /** The buffer ran dry before the reply ended: an underrun if more of it comes, else its end. */
  private dry = false;
  // Times are the page's Date.now(), the one clock the page and the audio thread share: the worklet has no
  // performance.now(), and the page's AudioContext.currentTime moves a whole audio callback at a time, too
  // coarse to time a stop that takes less.
  /** When the user's last turn ended, until the reply starts (-1: none pending). */
  private turnAt = -1;
  /** When a flush silenced audible playback, until the next quantum renders silence (-1: none). */
  private stopAt = -1;
  /** What to tell the page with the next figures. A stop outranks a start, should both fall in one quantum. */
  private event: PlayerEvent | undefined;
  /** A command changed the figures since they were last posted. */
  private changed = false;
  private quanta = 0;

  constructor(
    outputRate: number,
    private targetMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.queue = new FrameQueue(outputRate);
    this.tickQuanta = Math.max(1, Math.round((0.05 * outputRate) / QUANTUM));
  }

  /** Renders one quantum into `out`; returns whether `figures` should be posted to the page now. */
  process(out: Float32Array): boolean {
    if (this.stopAt >= 0) {
      this.figures.lastStopMs = this.now() - this.stopAt;
      this.stopAt = -1;
      this.event = 'stopped';
    }
    if (!this.playing && this.queue.buffered > 0 && (this.ended || this.bufferedMs() >= this.targetMs)) {
      this.playing = true;
      this.event ??= 'started';
      if (this.turnAt >= 0) this.figures.firstAudioMs = this.now() - this.turnAt;
      this.turnAt = -1;
    }
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queue.canRead(this.ended)) out[i++] = this.queue.read();
      if (i < out.length) this.runDry();
    }
    out.fill(0, i);
    const tick = ++this.quanta % this.tickQuanta === 0;
    if (this.event === undefined && !(tick && (this.changed || this.playing || this.queue.buffered > 0))) return false;
    this.fill();
    return true;
  }

  command(c: PlayerCommand): void {
    this.changed = true;
    switch (c.type) {
      case 'frame':
        if (c.sampleRate !== this.queue.rate) {
          this.drop();
          this.queue.setSourceRate(c.sampleRate);
        }
        if (this.dry) {
          this.dry = false;
          this.figures.underruns++;
          this.event ??= 'underrun';
        }
        this.queue.push(c.samples);
        this.ended = false;
        this.figures.framesReceived++;
        break;
      case 'end':
        this.ended = true;
        // Every end is answered with `drained` once nothing is left to play, at once if nothing is: the
        // page waits for it (hands-free listens again), even after a reply without audio, or a flushed one.
        if (this.dry || (!this.playing && this.queue.buffered === 0)) this.drained();
        break;
      case 'turn':
        // The latest turn counts: an earlier one whose reply never played (a barge-in) measures nothing.
        this.turnAt = c.at;
        break;
      case 'flush':
        if (this.playing) this.stopAt = c.at;
        this.drop();
        this.turnAt = -1;
        break;
      case 'target':
        this.targetMs = c.ms;
        break;
    }
  }

  /**
   * The buffer cannot fill this quantum. If the reply has ended, that is its end. If not, it is an
   * underrun only if more of the reply comes: a server says a reply has ended some time after its last
   * frame (xiaozhi: tts stop ~0.4 s later), and a buffer that runs dry in that time is no gap.
   */
  private runDry(): void {
    this.playing = false;
    // No event, but the page must learn that nothing plays: the next tick tells it.
    this.changed = true;
    if (this.ended) this.drained();
    else this.dry = true;
  }

  private drained(): void {
    this.queue.finish();
    this.playing = this.dry = false;
    this.event = 'drained';
  }

  private drop(): void {
    this.figures.framesDropped += this.queue.clear();
    this.playing = this.ended = this.dry = false;
  }

  private bufferedMs(): number {
    return (this.queue.buffered / this.queue.rate) * 1000;
  }

  private fill(): void {
    const f = this.figures;
    f.event = this.event ?? 'tick';
    f.playing = this.playing;
    f.framesPlayed = this.queue.framesDone;
    f.playedMs = this.queue.playedSeconds * 1000;
    f.bufferedMs = this.bufferedMs();
    this.event = undefined;
    this.changed = false;
  }
}
