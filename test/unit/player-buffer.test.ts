import fc from 'fast-check';
import { expect, it } from 'vitest';
import { FrameQueue } from '../../web/src/frame-queue.ts';

// The player worklet's jitter buffer (web/src/frame-queue.ts) is plain TypeScript: here it runs in Node,
// fed a ramp (each sample's value is its place in the stream), so that what comes out shows whether any
// sample played twice, out of order, or not at all.

/** Frames of the given lengths holding the ramp 0, 1, 2, … across them. */
function ramp(lengths: number[]): Float32Array[] {
  let next = 0;
  return lengths.map((n) => Float32Array.from({ length: n }, () => next++));
}

const frameLengths = fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 30 });
/** After which frames the reader catches up with what has arrived (an underrun or a slow network). */
const pauses = fc.array(fc.boolean(), { maxLength: 30 });

it('at the output rate, every sample is read once and in order, whenever the frames arrive', () => {
  fc.assert(
    fc.property(frameLengths, pauses, (lengths, pause) => {
      const queue = new FrameQueue(48000);
      queue.setSourceRate(48000);
      const out: number[] = [];
      ramp(lengths).forEach((frame, i) => {
        queue.push(frame);
        while (pause[i] === true && queue.canRead(false)) out.push(queue.read());
      });
      while (queue.canRead(true)) out.push(queue.read());
      const total = lengths.reduce((a, b) => a + b, 0);
      expect(out).toEqual(Array.from({ length: total }, (_, i) => i));
      expect(queue.framesDone).toBe(lengths.length);
      expect(queue.playedSeconds).toBeCloseTo(total / 48000, 9);
    }),
  );
});

it('resampled, the output walks the stream forward at the rate ratio, to its last frame', () => {
  const rates = fc.constantFrom([48000, 44100], [24000, 44100], [16000, 48000], [48000, 16000]);
  fc.assert(
    fc.property(frameLengths, pauses, rates, (lengths, pause, [source, output]) => {
      const queue = new FrameQueue(output);
      queue.setSourceRate(source);
      const step = source / output;
      const out: number[] = [];
      ramp(lengths).forEach((frame, i) => {
        queue.push(frame);
        while (pause[i] === true && queue.canRead(false)) out.push(queue.read());
      });
      while (queue.canRead(true)) out.push(queue.read());
      queue.finish();
      const total = lengths.reduce((a, b) => a + b, 0);
      // On a ramp, linear interpolation is exact: output n is the stream at n × step.
      out.forEach((value, n) => expect(value).toBeCloseTo(Math.min(n * step, total - 1), 6));
      expect(out.length).toBe(Math.ceil(total / step));
      expect(queue.framesDone).toBe(lengths.length);
      expect(queue.buffered).toBe(0);
    }),
  );
});

it('a flush drops what is buffered, and what was played stays counted', () => {
  fc.assert(
    fc.property(frameLengths, fc.nat(), (lengths, readFirst) => {
      const queue = new FrameQueue(24000);
      queue.setSourceRate(24000);
      for (const frame of ramp(lengths)) queue.push(frame);
      const total = lengths.reduce((a, b) => a + b, 0);
      const reads = readFirst % total;
      for (let i = 0; i < reads; i++) queue.read();
      const played = queue.playedSeconds;
      const partial = lengths.filter((_, i) => lengths.slice(0, i + 1).reduce((a, b) => a + b, 0) <= reads).length;
      expect(queue.clear()).toBe(lengths.length - partial);
      expect([queue.buffered, queue.canRead(true)]).toEqual([0, false]);
      expect(queue.playedSeconds).toBe(played);
      expect(played).toBeCloseTo(reads / 24000, 9);
    }),
  );
});
