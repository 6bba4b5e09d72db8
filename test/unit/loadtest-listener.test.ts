import { describe, expect, it } from 'vitest';
import { frameMs, opusPacketMs } from '../../src/cli/loadtest/audio.ts';
import { PlayoutBuffer } from '../../src/cli/loadtest/listener.ts';
import { ReplyTrack, SeqCheck } from '../../src/cli/loadtest/reply.ts';

/** Feeds a buffer frames of `ms` arriving at the given times; answers which frames (by index) underran. */
function play(bufferMs: number, arrivals: number[], ms = 60): { late: number[]; buffer: PlayoutBuffer } {
  const buffer = new PlayoutBuffer(bufferMs);
  const late = arrivals.flatMap((t, i) => (buffer.arrive(t, ms) ? [i] : []));
  return { late, buffer };
}

/** Arrival times of `n` frames sent every 60 ms from `start`, each delayed by `jitter(i)`. */
const paced = (n: number, start = 0, jitter: (i: number) => number = () => 0) => Array.from({ length: n }, (_, i) => start + i * 60 + jitter(i));

describe('The listener model (a jitter buffer per reply)', () => {
  it('hears no underrun when frames arrive exactly at the audio rate', () => {
    const { late, buffer } = play(120, paced(100, 1000));
    expect(late).toEqual([]);
    expect(buffer.stalledMs).toBe(0);
  });

  it('absorbs jitter smaller than the buffer, and not jitter larger than it', () => {
    const jitter = (i: number) => (i === 10 ? 100 : 0);
    expect(play(120, paced(30, 0, jitter)).late).toEqual([]);
    expect(play(60, paced(30, 0, jitter)).late).toEqual([10]);
  });

  it('counts a frame that arrives exactly in its slot as on time', () => {
    // Playback starts at 120 ms; frame 1 is due at 180 ms.
    expect(play(120, [0, 180]).late).toEqual([]);
    expect(play(120, [0, 180.001]).late).toEqual([1]);
  });

  it('waits for a late frame and plays on from it, so one stall is one underrun', () => {
    // Frame 5 is 500 ms late and the rest follow it at the audio rate: the buffer re-anchors at frame 5.
    const arrivals = paced(20, 0, (i) => (i >= 5 ? 500 : 0));
    const { late, buffer } = play(120, arrivals);
    expect(late).toEqual([5]);
    // Frame 5 was due at 120 + 5 × 60 = 420 ms and came at 800 ms.
    expect(buffer.stalledMs).toBeCloseTo(380, 6);
  });

  it('does not refill the buffer after an underrun: a later, smaller delay is another underrun', () => {
    const arrivals = paced(20, 0, (i) => (i >= 5 ? 500 : 0) + (i === 12 ? 30 : 0));
    expect(play(120, arrivals).late).toEqual([5, 12]);
  });

  it('takes an xiaozhi-paced sentence (five frames at once, then one per 60 ms) without an underrun at 120 ms', () => {
    const arrivals = Array.from({ length: 40 }, (_, i) => Math.max(0, i - 4) * 60);
    expect(play(120, arrivals).late).toEqual([]);
    // A buffer of 0 still has the burst's four frames in hand.
    expect(play(0, arrivals).late).toEqual([]);
  });

  it('judges each frame by its own duration', () => {
    const buffer = new PlayoutBuffer(0);
    expect(buffer.arrive(0, 20)).toBe(false);
    expect(buffer.arrive(20, 60)).toBe(false);
    expect(buffer.arrive(80, 20)).toBe(false);
    expect(buffer.arrive(101, 20)).toBe(true);
  });
});

describe('A reply as the client received it', () => {
  it('measures time to first audio from the end of the input', () => {
    const r = new ReplyTrack(0, [120]);
    r.inputEndedAt = 1000;
    r.frame(1042.5, 60);
    r.frame(1043, 60);
    expect(r.ttfaMs).toBe(42.5);
  });

  it('keeps counting frames after an abort but no longer plays them', () => {
    const r = new ReplyTrack(0, [60, 120]);
    r.frame(0, 60);
    r.frame(60, 60);
    r.abort(70);
    // A frame in flight when the abort left, very late: received, not heard, no underrun.
    expect(r.frame(900, 60)).toEqual([]);
    expect(r.arrivals).toEqual([0, 60, 900]);
    expect(r.heard).toBe(2);
    expect(r.heardMs).toBe(120);
  });

  it('records underruns per buffer size with their times', () => {
    const r = new ReplyTrack(0, [60, 250]);
    for (const t of paced(10, 0, (i) => (i === 6 ? 150 : 0))) r.frame(t, 60);
    expect(r.underrunTimes).toEqual([[510], []]);
    expect(r.stalledMs[0]).toBeCloseTo(90, 6);
  });

  it('counts sequence gaps as lost unless an abort explains them, and repeats as duplicates', () => {
    const seq = new SeqCheck();
    const r = new ReplyTrack(0, []);
    for (const n of [0, 1, 2, 5, 5, 6]) seq.see(n, r, false);
    expect(r.seqGaps).toBe(2);
    expect(r.seqRepeats).toBe(1);
    const after = new ReplyTrack(1, []);
    seq.see(20, after, true);
    expect(after.seqGaps).toBe(0);
  });
});

describe('Frame durations', () => {
  it('reads pcm16 durations from the length and the rate', () => {
    expect(frameMs('pcm16', 24000, new Uint8Array(2880), 0)).toBe(60);
    expect(frameMs('pcm16', 16000, new Uint8Array(640), 0)).toBe(20);
  });

  it('reads Opus durations from the TOC byte (RFC 6716)', () => {
    expect(opusPacketMs(Uint8Array.of((1 << 3) | 0))).toBe(20); // SILK NB 20 ms, one frame
    expect(opusPacketMs(Uint8Array.of((3 << 3) | 0))).toBe(60); // SILK NB 60 ms
    expect(opusPacketMs(Uint8Array.of((13 << 3) | 1))).toBe(40); // Hybrid 20 ms, two frames
    expect(opusPacketMs(Uint8Array.of((31 << 3) | 3, 3))).toBe(60); // CELT 20 ms, three frames (code 3)
    expect(opusPacketMs(Uint8Array.of((16 << 3) | 0))).toBe(2.5);
  });

  it('gives an empty Opus packet (a lost one) the length of the frame before', () => {
    expect(opusPacketMs(new Uint8Array(0))).toBeUndefined();
    expect(frameMs('opus', 48000, new Uint8Array(0), 60)).toBe(60);
  });
});
