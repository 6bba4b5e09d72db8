import { describe, expect, it } from 'vitest';
import { Subject, from, lastValueFrom, toArray } from 'rxjs';
import { decodeOpus } from '../../src/streams/decode-opus.ts';
import type { AudioFrame, UpstreamEvent } from '../../src/streams/events.ts';
import { loadSpeech } from '../../src/sim/speech.ts';
import { CORRUPT_PACKET } from '../../src/sim/simulator.ts';

const RATES = [8000, 12000, 16000, 24000, 48000] as const;
const speech = loadSpeech();
const packets = speech.sentences.flatMap((s) => s.packets);
const FRAME_MS = 60;

const opusFrame = (data: Buffer, arrivedAt = 0, durationMs = FRAME_MS): AudioFrame => ({ kind: 'audio', data, arrivedAt, durationMs, concealed: false });
const decode = (events: readonly UpstreamEvent[], rate: number) => lastValueFrom(from(events).pipe(decodeOpus(rate), toArray()));

const audioOf = (events: UpstreamEvent[]): AudioFrame[] => events.filter((e): e is AudioFrame => e.kind === 'audio');

function rms(pcm: Buffer): number {
  let sum = 0;
  const n = pcm.length / 2;
  for (let i = 0; i < n; i++) sum += pcm.readInt16LE(i * 2) ** 2;
  return Math.sqrt(sum / n);
}

describe('decodeOpus', () => {
  it('the fixture holds real speech in 60 ms packets', () => {
    expect(speech.frameMs).toBe(FRAME_MS);
    expect(packets.length).toBeGreaterThan(20);
  });

  it.each(RATES)('decodes each packet to one PCM frame of exactly 60 ms at %i Hz', async (rate) => {
    const out = audioOf(await decode(packets.map((p, i) => opusFrame(p, i)), rate));
    expect(out).toHaveLength(packets.length);
    const bytes = rate * 0.06 * 2;
    out.forEach((frame, i) => {
      expect(frame.data.length).toBe(bytes);
      expect(frame.durationMs).toBe(FRAME_MS);
      expect(frame.concealed).toBe(false);
      expect(frame.arrivedAt).toBe(i);
    });
  });

  it('passes every other event through untouched and in order', async () => {
    const start: UpstreamEvent = { kind: 'message', message: { type: 'tts', state: 'start' } };
    const sentence: UpstreamEvent = { kind: 'message', message: { type: 'tts', state: 'sentence_start', text: 'Hello!' } };
    const invalid: UpstreamEvent = { kind: 'invalid', detail: 'not valid JSON' };
    const stop: UpstreamEvent = { kind: 'message', message: { type: 'tts', state: 'stop' } };
    const input: UpstreamEvent[] = [start, sentence, opusFrame(packets[0]!), invalid, opusFrame(packets[1]!), stop];
    const out = await decode(input, 24000);
    expect(out.map((e) => e.kind)).toEqual(['message', 'message', 'audio', 'invalid', 'audio', 'message']);
    expect(out[0]).toBe(start);
    expect(out[1]).toBe(sentence);
    expect(out[3]).toBe(invalid);
    expect(out[5]).toBe(stop);
  });

  it.each(RATES)('turns a corrupt packet into exactly one concealment frame at %i Hz, and decodes what follows', async (rate) => {
    const input = [...packets.slice(0, 5), CORRUPT_PACKET, ...packets.slice(5, 10)].map((p, i) => opusFrame(p, i));
    const out = audioOf(await decode(input, rate));
    expect(out).toHaveLength(11);
    const bytes = rate * 0.06 * 2;
    expect(out.map((f) => f.concealed)).toEqual([false, false, false, false, false, true, false, false, false, false, false]);
    for (const frame of out) {
      expect(frame.data.length).toBe(bytes);
      expect(frame.durationMs).toBe(FRAME_MS);
    }
    expect(out[5]!.arrivedAt).toBe(5);
    expect(out.slice(6).some((f) => rms(f.data) > 100)).toBe(true);
  });

  it('conceals for the duration the corrupt packet claims', async () => {
    const out = audioOf(await decode([opusFrame(packets[0]!), opusFrame(CORRUPT_PACKET, 0, 20)], 16000));
    expect(out[1]).toMatchObject({ concealed: true, durationMs: 20 });
    expect(out[1]!.data.length).toBe(16000 * 0.02 * 2);
  });

  it('conceals a corrupt first packet too', async () => {
    const out = audioOf(await decode([opusFrame(CORRUPT_PACKET), opusFrame(packets[0]!)], 24000));
    expect(out.map((f) => [f.concealed, f.data.length])).toEqual([
      [true, 2880],
      [false, 2880],
    ]);
  });

  it('decodes speech, not silence', async () => {
    const out = audioOf(await decode(packets.map((p) => opusFrame(p)), 24000));
    const all = Buffer.concat(out.map((f) => f.data));
    expect(rms(all)).toBeGreaterThan(300);
  });

  it('gives two subscriptions their own decoder: the same packets decode to the same bytes', async () => {
    const input = packets.slice(0, 30).map((p) => opusFrame(p));
    const shared = from(input).pipe(decodeOpus(16000), toArray());
    const [a, b] = await Promise.all([lastValueFrom(shared), lastValueFrom(shared)]);
    expect(audioOf(a)).toHaveLength(30);
    audioOf(a).forEach((frame, i) => expect(frame.data.equals(audioOf(b)[i]!.data)).toBe(true));
  });

  it('gives interleaved subscriptions their own decoder state', async () => {
    const input = packets.slice(0, 12).map((p) => opusFrame(p));
    const reference = audioOf(await decode(input, 24000));
    const operator = decodeOpus<UpstreamEvent>(24000);
    const a: Buffer[] = [];
    const b: Buffer[] = [];
    // Feed the two subscriptions one packet at a time, alternately.
    const subjectA = new Subject<UpstreamEvent>();
    const subjectB = new Subject<UpstreamEvent>();
    subjectA.pipe(operator).subscribe((e) => e.kind === 'audio' && a.push(e.data));
    subjectB.pipe(operator).subscribe((e) => e.kind === 'audio' && b.push(e.data));
    for (const event of input) {
      subjectA.next(event);
      subjectB.next(event);
    }
    subjectA.complete();
    subjectB.complete();
    expect(a).toHaveLength(12);
    expect(b).toHaveLength(12);
    a.forEach((pcm, i) => expect(pcm.equals(reference[i]!.data)).toBe(true));
    b.forEach((pcm, i) => expect(pcm.equals(reference[i]!.data)).toBe(true));
  });
});
