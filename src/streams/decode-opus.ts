import opus from '@discordjs/opus';
import { defer, finalize, map, type OperatorFunction } from 'rxjs';
import type { UpstreamEvent } from './events.ts';

const LOST = Buffer.alloc(0);
const MAX_OPUS_FRAME_MS = 120;

/**
 * Decodes each audio frame's Opus packet to 16-bit mono PCM at `sampleRate`, whatever rate the upstream
 * encoded at (Opus decoders resample; the upstream hello's rate is not to be trusted). Other events pass.
 * The decoder is the subscriber's own: made on subscribe, released on teardown, never shared.
 * A packet that will not decode becomes one concealment frame of the same duration, marked `concealed`.
 *
 * ```
 * source:      --a(opus)--m--b(corrupt)--c(opus)--|
 * decodeOpus:  --a(pcm)---m--b(plc)------c(pcm)---|
 * ```
 */
export function decodeOpus(sampleRate: number): OperatorFunction<UpstreamEvent, UpstreamEvent> {
  const samplesPerMs = sampleRate / 1000;
  return (source) =>
    defer(() => {
      // The binding frees libopus state when its wrapper is collected: holding the only reference in
      // this closure makes the subscription the decoder's lifetime.
      let decoder: opus.OpusEncoder | undefined = new opus.OpusEncoder(sampleRate, 1);
      return source.pipe(
        map((event): UpstreamEvent => {
          if (event.kind !== 'audio' || decoder === undefined) return event;
          let pcm: Buffer | undefined;
          // An empty packet would not throw: libopus would conceal its maximum frame size instead.
          if (event.data.length > 0) {
            try {
              pcm = decoder.decode(event.data);
            } catch {
              pcm = undefined;
            }
          }
          if (pcm !== undefined) {
            return { kind: 'audio', data: pcm, arrivedAt: event.arrivedAt, durationMs: pcm.length / 2 / samplesPerMs, concealed: false };
          }
          const plc = conceal(decoder, Math.round(Math.min(event.durationMs, MAX_OPUS_FRAME_MS) * samplesPerMs));
          return { kind: 'audio', data: plc, arrivedAt: event.arrivedAt, durationMs: event.durationMs, concealed: true };
        }),
        finalize(() => {
          decoder = undefined;
        }),
      );
    });
}

// An empty packet asks libopus for concealment, but the binding always asks for its maximum frame
// size, so only the first `samples` of what comes back belong to the lost frame.
function conceal(decoder: opus.OpusEncoder, samples: number): Buffer {
  const plc = decoder.decode(LOST);
  return Buffer.from(plc.subarray(0, samples * 2));
}
