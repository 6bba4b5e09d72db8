// A WAV file as a client speaks it: cut into uplink frames, as PCM or as Opus packets. The CLI client
// and the load tool both send utterances this way.
import { readFileSync } from 'node:fs';
import opus from '@discordjs/opus';
import wavefile from 'wavefile';
import { isOpusRate, OPUS_BITRATE, pcmFrames } from '../protocol/audio.ts';

/** Uplink frames are cut at this length, the protocol's default `uplink.frameMs`. */
export const UPLINK_FRAME_MS = 60;

export interface Utterance {
  codec: 'pcm16' | 'opus';
  sampleRate: number;
  /** One UPLINK_FRAME_MS frame each: PCM bytes, or an Opus packet. */
  frames: Buffer[];
}

/**
 * The WAV cut into UPLINK_FRAME_MS frames, as PCM or Opus packets: made once and sent by every session.
 * Throws with a message fit for the user when the file is not mono 16-bit PCM at a protocol rate.
 */
export function readUtterance(path: string, codec: 'pcm16' | 'opus'): Utterance {
  const wav = new wavefile.WaveFile(readFileSync(path));
  const fmt = wav.fmt as { numChannels: number; sampleRate: number; bitsPerSample: number };
  if (fmt.numChannels !== 1 || fmt.bitsPerSample !== 16 || !isOpusRate(fmt.sampleRate)) {
    throw new Error(`${path}: need mono 16-bit PCM at 8, 12, 16, 24 or 48 kHz, not ${fmt.numChannels} ch ${fmt.bitsPerSample} bit ${fmt.sampleRate} Hz`);
  }
  const samples = wav.getSamples(false, Int16Array) as unknown as Int16Array;
  const pcm = Buffer.from(samples.buffer, samples.byteOffset, samples.byteLength);
  const frames = pcmFrames(pcm, fmt.sampleRate, UPLINK_FRAME_MS);
  if (frames.length === 0) throw new Error(`${path}: no audio in it`);
  if (codec === 'pcm16') return { codec, sampleRate: fmt.sampleRate, frames };
  const encoder = new opus.OpusEncoder(fmt.sampleRate, 1);
  encoder.setBitrate(OPUS_BITRATE);
  return { codec, sampleRate: fmt.sampleRate, frames: frames.map((f) => encoder.encode(f)) };
}
