import opus from '@discordjs/opus';
import { defer, finalize, mergeMap, type OperatorFunction } from 'rxjs';
import { OPUS_BITRATE, pcmFrameBytes } from '../protocol/audio.ts';

/** Marks the end of an utterance: the partial frame held back is padded with silence and sent. */
export const FLUSH = Symbol('flush');
/** Marks the start of an utterance: a partial frame left from the last one is not part of it. */
export const RESET = Symbol('reset');

export type UplinkPcm = Buffer | typeof FLUSH | typeof RESET;

const NO_PACKETS: readonly Buffer[] = [];

/**
 * Cuts 16-bit mono PCM chunks of any whole number of samples into `frameMs` frames and encodes each as
 * one Opus packet at `sampleRate` (an Opus packet decodes at any rate, so the upstream's 16 kHz decoder
 * takes it as it is). The remainder waits for the next chunk; FLUSH pads it with silence and sends it.
 * RESET drops it. The encoder is the subscriber's own: made on subscribe, released on teardown.
 *
 * ```
 * source (20 ms chunks, 60 ms frames):  --a--b--c--d--FLUSH--e--RESET--f--g--h--|
 * encodeOpus:                           --------p1-----p2-----------------p3----|
 * ```
 */
export function encodeOpus(sampleRate: number, frameMs: number): OperatorFunction<UplinkPcm, Buffer> {
  const frameBytes = pcmFrameBytes(sampleRate, frameMs);
  return (source) =>
    defer(() => {
      // As with the decoder, the binding frees libopus state when the wrapper is collected.
      let encoder: opus.OpusEncoder | undefined = new opus.OpusEncoder(sampleRate, 1);
      encoder.setBitrate(OPUS_BITRATE);
      const frame = Buffer.alloc(frameBytes);
      let filled = 0;
      return source.pipe(
        mergeMap((chunk): readonly Buffer[] => {
          if (encoder === undefined) return NO_PACKETS;
          if (chunk === RESET) {
            filled = 0;
            return NO_PACKETS;
          }
          if (chunk === FLUSH) {
            if (filled === 0) return NO_PACKETS;
            frame.fill(0, filled);
            filled = 0;
            return [encoder.encode(frame)];
          }
          let packets: Buffer[] | undefined;
          let offset = 0;
          while (offset < chunk.length) {
            const n = chunk.copy(frame, filled, offset, offset + frameBytes - filled);
            offset += n;
            filled += n;
            if (filled === frameBytes) {
              (packets ??= []).push(encoder.encode(frame));
              filled = 0;
            }
          }
          return packets ?? NO_PACKETS;
        }),
        finalize(() => {
          encoder = undefined;
        }),
      );
    });
}
