import opus from '@discordjs/opus';
import { from, lastValueFrom, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { encodeOpus, FLUSH, RESET, type UplinkPcm } from '../../src/streams/encode-opus.ts';
import { opusPacketDurationMs } from '../../src/protocol/audio.ts';

/** A 440 Hz tone at 16 kHz: `ms` milliseconds of it as 16-bit little-endian PCM. */
function tone(ms: number, rate = 16000): Buffer {
  const samples = (rate / 1000) * ms;
  const out = Buffer.alloc(samples * 2);
  for (let i = 0; i < samples; i++) out.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), i * 2);
  return out;
}

const encode = (input: UplinkPcm[], rate = 16000, frameMs = 60) => lastValueFrom(from(input).pipe(encodeOpus(rate, frameMs), toArray()));

/** What a fresh encoder makes of whole frames, for comparison byte for byte. */
function reference(pcm: Buffer, rate = 16000, frameMs = 60): Buffer[] {
  const encoder = new opus.OpusEncoder(rate, 1);
  encoder.setBitrate(24_000);
  const frameBytes = (rate / 1000) * frameMs * 2;
  const packets: Buffer[] = [];
  for (let offset = 0; offset < pcm.length; offset += frameBytes) {
    const frame = Buffer.alloc(frameBytes);
    pcm.copy(frame, 0, offset, offset + frameBytes);
    packets.push(encoder.encode(frame));
  }
  return packets;
}

describe('encodeOpus', () => {
  it('cuts chunks of any whole number of samples into the same packets a reference encoder makes of whole frames', async () => {
    const pcm = tone(300);
    const sizes = [2, 1184, 1182, 1920, 3554, 6];
    const input: Buffer[] = [];
    let offset = 0;
    for (const size of sizes) {
      input.push(pcm.subarray(offset, offset + size));
      offset += size;
    }
    input.push(pcm.subarray(offset));
    const packets = await encode(input);
    expect(packets).toEqual(reference(pcm));
  });

  it('holds a partial frame back until FLUSH pads it with silence', async () => {
    const pcm = tone(90);
    const withoutFlush = await encode([pcm]);
    const withFlush = await encode([pcm, FLUSH]);
    expect(withoutFlush).toHaveLength(1);
    expect(withFlush).toHaveLength(2);
    expect(withFlush).toEqual(reference(pcm));
  });

  it('sends nothing on FLUSH when no partial frame is held', async () => {
    expect(await encode([tone(120), FLUSH, FLUSH])).toHaveLength(2);
  });

  it('drops the partial frame on RESET, so the next utterance starts on a frame boundary', async () => {
    const packets = await encode([tone(30), RESET, tone(120), FLUSH]);
    expect(packets).toHaveLength(2);
  });

  it('encodes at the frame length and rate asked for', async () => {
    for (const frameMs of [20, 40, 60]) {
      const packets = await encode([tone(120, 48000)], 48000, frameMs);
      expect(packets).toHaveLength(120 / frameMs);
      for (const p of packets) expect(opusPacketDurationMs(p)).toBe(frameMs);
    }
  });

  it('gives each subscription its own encoder', async () => {
    const pcm = tone(180);
    const operator = encodeOpus(16000, 60);
    const [a, b] = await Promise.all([lastValueFrom(from([pcm]).pipe(operator, toArray())), lastValueFrom(from([pcm]).pipe(operator, toArray()))]);
    expect(a).toEqual(b);
    expect(a).toEqual(reference(pcm));
  });
});
