// The player: an AudioWorkletProcessor ('voicegw-player') that plays the downlink from a jitter buffer.
// It starts once the target is buffered (or the reply has ended), counts an underrun each time the
// buffer runs dry in the middle of a reply, and goes silent at the first render quantum after a flush.
// Its figures are counted here, where the audio is rendered, and posted to the page. process()
// allocates nothing: it reuses one figures object, which postMessage copies.
import { FrameQueue } from './frame-queue.ts';
import { noFigures, type PlayerCommand, type PlayerEvent } from './player-messages.ts';

/** How often the figures are posted without an event: about every 50 ms. */
const TICK_QUANTA = Math.max(1, Math.round((0.05 * sampleRate) / 128));

class PlayerProcessor extends AudioWorkletProcessor {
  private readonly queue = new FrameQueue(sampleRate);
  private targetMs: number;
  private playing = false;
  /** The reply's last frame is buffered: play it out without waiting for the target, and no underrun at its end. */
  private ended = false;
  // Times are Date.now(), the one clock the page and the audio thread share: the worklet has no
  // performance.now(), and the page's AudioContext.currentTime moves a whole audio callback at a time,
  // too coarse to time a stop that takes less.
  /** When the user's turn ended, until the reply starts (-1: none pending). */
  private turnAt = -1;
  /** The buffer ran dry before the reply ended: an underrun if more of it comes, else its end. */
  private dry = false;
  /** What to tell the page with the next figures. A stop outranks a start, should both fall in one quantum. */
  private event: PlayerEvent | undefined;
  /** When a flush silenced audible playback, until the next quantum renders silence (-1: none). */
  private stopAt = -1;
  private quanta = 0;
  private readonly figures = noFigures();

  constructor(options: AudioWorkletNodeOptions) {
    super(options);
    this.targetMs = (options.processorOptions as { targetMs: number }).targetMs;
    this.port.onmessage = (e: MessageEvent<PlayerCommand>) => this.command(e.data);
  }

  override process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    const out = outputs[0]![0]!;
    if (this.stopAt >= 0) {
      this.figures.lastStopMs = Date.now() - this.stopAt;
      this.stopAt = -1;
      this.event = 'stopped';
    }
    if (!this.playing && this.queue.buffered > 0 && (this.ended || this.bufferedMs() >= this.targetMs)) {
      this.playing = true;
      this.event ??= 'started';
      if (this.turnAt >= 0) this.figures.firstAudioMs = Date.now() - this.turnAt;
      this.turnAt = -1;
    }
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queue.canRead(this.ended)) out[i++] = this.queue.read();
      if (i < out.length) this.runDry();
    }
    out.fill(0, i);
    if (this.event !== undefined || ++this.quanta % TICK_QUANTA === 0) this.post();
    return true;
  }

  /**
   * The buffer cannot fill this quantum. If the reply has ended, that is its end. If not, it is an
   * underrun only if more of the reply comes: a server says a reply has ended some time after its last
   * frame (xiaozhi: tts stop ~0.4 s later), and a buffer that runs dry in that time is no gap.
   */
  private runDry(): void {
    this.playing = false;
    if (this.ended) this.drained();
    else this.dry = true;
  }

  private drained(): void {
    this.queue.finish();
    this.dry = false;
    this.event = 'drained';
  }

  private command(c: PlayerCommand): void {
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
        if (this.dry) this.drained();
        break;
      case 'turn':
        if (this.turnAt < 0) this.turnAt = c.at;
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

  private drop(): void {
    this.figures.framesDropped += this.queue.clear();
    this.playing = this.ended = this.dry = false;
  }

  private bufferedMs(): number {
    return (this.queue.buffered / this.queue.rate) * 1000;
  }

  private post(): void {
    const f = this.figures;
    f.event = this.event ?? 'tick';
    this.event = undefined;
    f.playing = this.playing;
    f.framesPlayed = this.queue.framesDone;
    f.playedMs = this.queue.playedSeconds * 1000;
    f.bufferedMs = this.bufferedMs();
    this.port.postMessage(f);
  }
}

registerProcessor('voicegw-player', PlayerProcessor);
