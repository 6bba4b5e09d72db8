// The microphone: an AudioWorkletProcessor ('voicegw-mic') that turns the context's audio into pcm16 at
// 16 kHz, the uplink the page announces, and posts it in 20 ms chunks. It low-passes below 16 kHz's
// Nyquist before it takes every n-th sample (else what is above 8 kHz folds back into speech), and
// interpolates between input samples. process() allocates nothing of its own: one chunk buffer is
// reused, and postMessage's copy of it, once per chunk (every 20 ms, not every quantum), is the only one.

const OUT_RATE = 16000;
const CHUNK_SAMPLES = 320;

/** One second-order section of a Butterworth low-pass (RBJ cookbook), in direct form II transposed. */
class Biquad {
  private readonly b0: number;
  private readonly b1: number;
  private readonly a1: number;
  private readonly a2: number;
  private z1 = 0;
  private z2 = 0;

  constructor(cutoff: number, q: number) {
    const w = (2 * Math.PI * cutoff) / sampleRate;
    const alpha = Math.sin(w) / (2 * q);
    const a0 = 1 + alpha;
    this.b0 = (1 - Math.cos(w)) / 2 / a0;
    this.b1 = (1 - Math.cos(w)) / a0;
    this.a1 = (-2 * Math.cos(w)) / a0;
    this.a2 = (1 - alpha) / a0;
  }

  run(x: number): number {
    // b2 equals b0 in a low-pass.
    const y = this.b0 * x + this.z1;
    this.z1 = this.b1 * x - this.a1 * y + this.z2;
    this.z2 = this.b0 * x - this.a2 * y;
    return y;
  }
}

class MicProcessor extends AudioWorkletProcessor {
  private readonly chunk = new Int16Array(CHUNK_SAMPLES);
  private filled = 0;
  private readonly step = sampleRate / OUT_RATE;
  /** Where the next output sample falls, in input samples from the start of the current quantum. */
  private pos = 0;
  /** The previous quantum's last filtered sample: the next output may lie between it and this quantum's first. */
  private previous = 0;
  // A fourth-order Butterworth low-pass at 7 kHz: two sections with the Q of each pole pair.
  private readonly low1 = new Biquad(Math.min(7000, 0.45 * sampleRate), 0.5412);
  private readonly low2 = new Biquad(Math.min(7000, 0.45 * sampleRate), 1.3066);

  override process(inputs: Float32Array[][]): boolean {
    const input = inputs[0]?.[0];
    if (input === undefined) return true;
    for (let j = 0; j < input.length; j++) {
      const x = this.low2.run(this.low1.run(input[j]!));
      while (this.pos <= j) {
        const t = this.pos - (j - 1);
        this.emit(this.previous + (x - this.previous) * t);
        this.pos += this.step;
      }
      this.previous = x;
    }
    this.pos -= input.length;
    return true;
  }

  private emit(sample: number): void {
    this.chunk[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(sample * 32768)));
    if (this.filled < CHUNK_SAMPLES) return;
    this.port.postMessage(this.chunk);
    this.filled = 0;
  }
}

registerProcessor('voicegw-mic', MicProcessor);
