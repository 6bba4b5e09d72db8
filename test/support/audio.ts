import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import opus from '@discordjs/opus';
import wavefile from 'wavefile';

// Audio helpers for integration tests: the fixture utterance, PCM cut and encoded as a client would,
// and the envelope comparison that says whether audio that went round a lossy codec is still the same speech.

export const UTTERANCE_PATH = fileURLToPath(new URL('../fixtures/utterance-16k.wav', import.meta.url));

export interface Pcm {
  sampleRate: number;
  samples: Int16Array;
}

/** A mono 16-bit WAV file's samples. */
export function readWav(path: string): Pcm {
  const wav = new wavefile.WaveFile(readFileSync(path));
  const fmt = wav.fmt as { numChannels: number; sampleRate: number; bitsPerSample: number };
  if (fmt.numChannels !== 1 || fmt.bitsPerSample !== 16) throw new Error(`${path}: not mono 16-bit`);
  const samples = wav.getSamples(false, Int16Array) as unknown as Int16Array;
  return { sampleRate: fmt.sampleRate, samples: Int16Array.from(samples) };
}

/** Little-endian 16-bit PCM bytes, as a client sends them. */
export function pcmBytes(samples: Int16Array): Buffer {
  const out = Buffer.alloc(samples.length * 2);
  for (let i = 0; i < samples.length; i++) out.writeInt16LE(samples[i]!, i * 2);
  return out;
}

/** Samples of little-endian 16-bit PCM bytes (the gateway's pcm16 downlink). */
export function samplesOf(bytes: Buffer): Int16Array {
  if (bytes.length % 2 !== 0) throw new Error(`${bytes.length} bytes of pcm16 is not a whole number of samples`);
  const out = new Int16Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readInt16LE(i * 2);
  return out;
}

/** PCM bytes cut into chunks of the given sizes in samples, cycling through them until the audio runs out. */
export function chunks(bytes: Buffer, sizesInSamples: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const n = sizesInSamples[i % sizesInSamples.length]! * 2;
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

/**
 * PCM cut into `frameMs` frames, the last one padded with silence, each encoded as one Opus packet by one
 * fresh encoder at 24 kbit/s: what the gateway's pcm16 uplink and the CLI's opus uplink make of it.
 */
export function encodeFrames(pcm: Pcm, frameMs = 60, bitrate = 24_000): Buffer[] {
  const encoder = new opus.OpusEncoder(pcm.sampleRate, 1);
  encoder.setBitrate(bitrate);
  const bytes = pcmBytes(pcm.samples);
  const frameBytes = (pcm.sampleRate / 1000) * frameMs * 2;
  const packets: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += frameBytes) {
    const frame = Buffer.alloc(frameBytes);
    bytes.copy(frame, 0, at, at + frameBytes);
    packets.push(encoder.encode(frame));
  }
  return packets;
}

/** RMS of each whole `windowMs` window of `samples` from `from` on. */
export function envelope(samples: Int16Array, sampleRate: number, windowMs = 20, from = 0): number[] {
  const size = Math.round((sampleRate * windowMs) / 1000);
  const out: number[] = [];
  for (let start = from; start + size <= samples.length; start += size) {
    let sum = 0;
    for (let i = start; i < start + size; i++) sum += samples[i]! * samples[i]!;
    out.push(Math.sqrt(sum / size));
  }
  return out;
}

/** Pearson's correlation of the common prefix of two series (0 when either is constant). */
export function pearson(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  if (n < 2) return 0;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i]!;
    mb += b[i]!;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i]! - ma;
    const db = b[i]! - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  return saa === 0 || sbb === 0 ? 0 : sab / Math.sqrt(saa * sbb);
}

/** Resamples by linear interpolation: enough to compare 20 ms envelopes of audio at different rates. */
export function resample(samples: Int16Array, from: number, to: number): Int16Array {
  if (from === to) return samples;
  const out = new Int16Array(Math.floor((samples.length * to) / from));
  for (let i = 0; i < out.length; i++) {
    const x = (i * from) / to;
    const i0 = Math.floor(x);
    const i1 = Math.min(i0 + 1, samples.length - 1);
    out[i] = Math.round(samples[i0]! + (samples[i1]! - samples[i0]!) * (x - i0));
  }
  return out;
}

/**
 * How well the output's loudness follows the input's: Pearson's r of their RMS envelopes (`windowMs`
 * windows), at the lag of the output behind the input (codec delay; searched in 1 ms steps within
 * ±`maxLagMs`) that correlates best. The output is brought to the input's rate first.
 */
export function envelopeCorrelation(input: Pcm, output: Pcm, options: { windowMs?: number; maxLagMs?: number } = {}): { r: number; lagMs: number } {
  const windowMs = options.windowMs ?? 20;
  const maxLagMs = options.maxLagMs ?? 100;
  const rate = input.sampleRate;
  const out = resample(output.samples, output.sampleRate, rate);
  const perMs = rate / 1000;
  let best = { r: -Infinity, lagMs: 0 };
  for (let lagMs = -maxLagMs; lagMs <= maxLagMs; lagMs++) {
    // A positive lag: the output is late, so its sample lag·rate lines up with the input's sample 0.
    const shift = lagMs * perMs;
    const a = envelope(input.samples, rate, windowMs, Math.max(0, -shift));
    const b = envelope(out, rate, windowMs, Math.max(0, shift));
    const r = pearson(a, b);
    if (r > best.r) best = { r, lagMs };
  }
  return best;
}
