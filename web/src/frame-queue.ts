// The player's jitter buffer: whole frames in arrival order, read out one output sample at a time at the
// AudioContext's rate (linear interpolation when the frames' rate differs). Reading allocates nothing: it
// runs on the audio thread, once per output sample. Frames are only ever read forward, so none plays
// twice or out of order.

export class FrameQueue {
  /** A ring of frames; it grows (when a frame arrives, never while reading) to hold a whole burst. */
  private frames: (Float32Array | undefined)[] = new Array<Float32Array | undefined>(64);
  private head = 0;
  private count = 0;
  /** The next unread sample of the head frame. */
  private offset = 0;
  /** Where the next output sample falls, in source samples from the head sample (may pass the end). */
  private pos = 0;
  private sourceRate: number;
  /** Source samples per output sample. */
  private step = 1;
  /** Source samples not yet read. */
  buffered = 0;
  /** Seconds read before the head frame: whole frames, and the parts of frames a flush dropped. */
  private secondsDone = 0;
  framesDone = 0;

  constructor(private readonly outputRate: number) {
    this.sourceRate = outputRate;
  }

  /** Frames at another rate are coming; call on an empty queue (clear first). */
  setSourceRate(rate: number): void {
    this.sourceRate = rate;
    this.step = rate / this.outputRate;
  }

  get rate(): number {
    return this.sourceRate;
  }

  push(frame: Float32Array): void {
    if (this.count === this.frames.length) this.grow();
    this.frames[(this.head + this.count) % this.frames.length] = frame;
    this.count++;
    this.buffered += frame.length;
  }

  /** Drops everything buffered; returns how many frames went (a frame begun counts). */
  clear(): number {
    const dropped = this.count;
    this.secondsDone += this.offset / this.sourceRate;
    this.frames.fill(undefined);
    this.head = this.count = this.offset = this.buffered = 0;
    this.pos = 0;
    return dropped;
  }

  /** Seconds read so far: what has been played. */
  get playedSeconds(): number {
    return this.secondsDone + this.offset / this.sourceRate;
  }

  /**
   * Whether the next output sample can be made: the two samples it lies between have arrived, or, at the
   * end of a reply (`last`), the one before it.
   */
  canRead(last: boolean): boolean {
    const whole = Math.floor(this.pos);
    return this.buffered > whole + (this.pos > whole && !last ? 1 : 0);
  }

  /** The next output sample; call only when canRead. */
  read(): number {
    const whole = Math.floor(this.pos);
    const s0 = this.at(whole);
    const frac = this.pos - whole;
    const s1 = frac > 0 && whole + 1 < this.buffered ? this.at(whole + 1) : s0;
    this.pos += this.step;
    this.skip(Math.min(Math.floor(this.pos), this.buffered));
    return s0 + (s1 - s0) * frac;
  }

  /** The reply ended between two samples: the rest, too short to read, counts as played. */
  finish(): void {
    this.skip(this.buffered);
    this.pos = 0;
  }

  /** The sample `i` places after the next unread one (i < buffered). */
  private at(i: number): number {
    let index = this.head;
    let o = this.offset + i;
    for (;;) {
      const frame = this.frames[index]!;
      if (o < frame.length) return frame[o]!;
      o -= frame.length;
      index = (index + 1) % this.frames.length;
    }
  }

  private skip(samples: number): void {
    this.pos -= samples;
    while (samples > 0) {
      const frame = this.frames[this.head]!;
      const rest = frame.length - this.offset;
      if (samples < rest) {
        this.offset += samples;
        this.buffered -= samples;
        return;
      }
      samples -= rest;
      this.buffered -= rest;
      this.secondsDone += frame.length / this.sourceRate;
      this.framesDone++;
      this.frames[this.head] = undefined;
      this.head = (this.head + 1) % this.frames.length;
      this.count--;
      this.offset = 0;
    }
  }

  private grow(): void {
    const frames = new Array<Float32Array | undefined>(this.frames.length * 2);
    for (let i = 0; i < this.count; i++) frames[i] = this.frames[(this.head + i) % this.frames.length];
    this.frames = frames;
    this.head = 0;
  }
}
