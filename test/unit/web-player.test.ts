import fc from 'fast-check';
import { expect, it } from 'vitest';
import { PlayerCore, QUANTUM } from '../../web/src/player-core.ts';
import type { PlayerEvent } from '../../web/src/player-messages.ts';

// The player worklet's logic (web/src/player-core.ts) is plain TypeScript: here it runs in Node, one render
// quantum at a time, as the audio thread would run it, with commands between quanta as the page's port
// delivers them. Frames carry a ramp from 1 (each sample's value is its place in the stream), so that
// silence (0) stands apart and what comes out shows whether any sample played twice, out of order, or not
// at all.

const RATE = 48000;
/** 60 ms at the output rate: one frame of the voice service. */
const FRAME = 2880;

/** A player at RATE with a 120 ms target, whose clock the test moves. */
function player(targetMs = 120) {
  let clock = 1_000_000;
  const core = new PlayerCore(RATE, targetMs, () => clock);
  let next = 1;
  const events: PlayerEvent[] = [];
  const played: number[] = [];
  return {
    core,
    events,
    played,
    /** Pushes a frame of `n` samples of the ramp. */
    frame(n = FRAME) {
      core.command({ type: 'frame', samples: Float32Array.from({ length: n }, () => next++), sampleRate: RATE });
    },
    /** Renders `n` quanta; returns the last one. */
    run(n = 1): Float32Array {
      const out = new Float32Array(QUANTUM);
      for (let i = 0; i < n; i++) {
        out.fill(NaN);
        clock += (QUANTUM / RATE) * 1000;
        if (core.process(out)) events.push(core.figures.event);
        for (const s of out) if (s !== 0) played.push(s);
      }
      return out;
    },
    now: () => clock,
    get sent() {
      return next - 1;
    },
  };
}

/** Quanta enough to play `ms` of audio. */
const quanta = (ms: number) => Math.ceil((ms / 1000) * RATE / QUANTUM);

it('a buffer that runs dry and then gets more of the same reply counts one underrun, and plays every sample once', () => {
  const p = player();
  p.frame();
  p.frame();
  p.run(quanta(200));
  expect(p.core.figures.playing).toBe(false);
  expect(p.core.figures.underruns).toBe(0);
  p.frame();
  expect(p.core.figures.underruns).toBe(1);
  p.core.command({ type: 'end' });
  p.run(quanta(100));
  expect(p.core.figures.underruns).toBe(1);
  expect(p.events.filter((e) => e !== 'tick')).toEqual(['started', 'underrun', 'drained']);
  expect(p.played).toEqual(Array.from({ length: p.sent }, (_, i) => i + 1));
  expect([p.core.figures.framesPlayed, p.core.figures.playedMs]).toEqual([3, 180]);
});

it('a buffer that runs dry and then hears the reply has ended counts no underrun', () => {
  const p = player();
  p.frame();
  p.frame();
  p.run(quanta(200));
  p.core.command({ type: 'end' });
  p.run(2);
  expect(p.core.figures.underruns).toBe(0);
  expect(p.events.filter((e) => e !== 'tick')).toEqual(['started', 'drained']);
  // The next reply starts afresh: its first frame is no underrun either.
  p.frame();
  p.frame();
  p.run(quanta(200));
  expect(p.core.figures.underruns).toBe(0);
});

it('a flush while dry counts no underrun, nor does the next reply', () => {
  const p = player();
  p.frame();
  p.frame();
  p.run(quanta(200));
  p.core.command({ type: 'flush', at: p.now() });
  p.frame();
  p.frame();
  p.run(quanta(50));
  expect(p.core.figures.underruns).toBe(0);
  // Nothing was audible at the flush: no stop to time.
  expect(p.core.figures.lastStopMs).toBeNull();
});

it('a flush silences the very next quantum, and nothing buffered before it is ever played', () => {
  const p = player();
  for (let i = 0; i < 5; i++) p.frame();
  p.run(quanta(100));
  expect(p.core.figures.playing).toBe(true);
  const before = p.played.length;
  p.core.command({ type: 'flush', at: p.now() });
  const out = p.run();
  expect(Array.from(out).every((s) => s === 0)).toBe(true);
  expect(p.played.length).toBe(before);
  expect(p.core.figures.event).toBe('stopped');
  // One quantum at 48 kHz: 2.67 ms from the flush to the silent quantum's end.
  expect(p.core.figures.lastStopMs).toBeCloseTo((QUANTUM / RATE) * 1000, 6);
  expect([p.core.figures.playing, p.core.figures.bufferedMs]).toEqual([false, 0]);
  expect(p.core.figures.framesDropped).toBe(4);
  // The next reply plays from its own first sample on.
  p.frame();
  p.core.command({ type: 'end' });
  p.run(quanta(100));
  expect(p.played.slice(before)).toEqual(Array.from({ length: FRAME }, (_, i) => 5 * FRAME + 1 + i));
});

it('whenever frames, quanta, ends and a target come, no sample plays twice or out of order, and each reply plays whole', () => {
  const step = fc.oneof(
    fc.record({ frame: fc.integer({ min: 1, max: 3000 }) }),
    fc.record({ quanta: fc.integer({ min: 1, max: 40 }) }),
    fc.constant({ end: true }),
  );
  fc.assert(
    fc.property(fc.array(step, { maxLength: 60 }), fc.integer({ min: 0, max: 300 }), (steps, targetMs) => {
      const p = player(targetMs);
      for (const s of steps) {
        if ('frame' in s) p.frame(s.frame);
        else if ('quanta' in s) p.run(s.quanta);
        else p.core.command({ type: 'end' });
      }
      p.core.command({ type: 'end' });
      p.run(quanta((p.sent / RATE) * 1000) + 2);
      expect(p.played).toEqual(Array.from({ length: p.sent }, (_, i) => i + 1));
      expect(p.core.figures.playing).toBe(false);
      expect(p.core.figures.bufferedMs).toBe(0);
      expect(p.core.figures.playedMs).toBeCloseTo((p.sent / RATE) * 1000, 6);
    }),
  );
});

it('every end is answered with drained once nothing is left, at once after a reply without audio', () => {
  const p = player();
  p.core.command({ type: 'end' });
  p.run();
  expect(p.events).toEqual(['drained']);
});

it('the time to first audio counts from the latest turn', () => {
  const p = player(0);
  p.core.command({ type: 'turn', at: p.now() - 500 });
  p.core.command({ type: 'turn', at: p.now() - 200 });
  p.frame();
  p.run();
  expect(p.core.figures.firstAudioMs).toBeCloseTo(200 + (QUANTUM / RATE) * 1000, 6);
});

it('posts figures at each event and every ~50 ms while there is audio, and nothing while idle', () => {
  const p = player();
  p.run(quanta(500));
  expect(p.events).toEqual([]);
  p.frame();
  p.frame();
  p.frame();
  p.run(quanta(500));
  const ticks = p.events.filter((e) => e === 'tick').length;
  // 180 ms of audio and a quantum or so: about four ticks of 50 ms, then silence.
  expect(ticks).toBeGreaterThanOrEqual(3);
  expect(ticks).toBeLessThanOrEqual(5);
  const posted = p.events.length;
  p.run(quanta(500));
  expect(p.events.length).toBe(posted);
});
