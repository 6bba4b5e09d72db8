import opus from '@discordjs/opus';
import { defer, filter, finalize, map, type OperatorFunction } from 'rxjs';
import { MAX_OPUS_PACKET_MS } from '../protocol/audio.ts';
import type { AudioFrame } from './events.ts';
import type { REPLY_END } from './to-client.ts';

const LOST = Buffer.alloc(0);
const noop = (): void => {};

/**
 * Decodes each audio frame's Opus packet to 16-bit mono PCM at `sampleRate`, whatever rate the upstream
 * encoded at (Opus decoders resample; the upstream hello's rate is not to be trusted). Other items pass.
 * The decoder is the subscriber's own, never shared, and a reply's: made at the reply's first frame,
 * released at `reply-end` (which it takes out of the stream) and on teardown. Each reply is a stream of
 * its own, from whichever upstream connection carried it, and a session between replies holds none.
 * A packet that will not decode becomes one concealment frame of the same duration, marked `concealed`
 * (and told to `concealed`, for the count).
 *
 * ```
 * source:      --a(opus)--m--b(corrupt)--c(opus)--END--d(opus)--|
 * decodeOpus:  --a(pcm)---m--b(plc)------c(pcm)-------d(pcm)---|   (d: a fresh decoder)
 * ```
 */
export function decodeOpus<T extends { readonly kind: string }>(
  sampleRate: number,
  concealed: () => void = noop,
): OperatorFunction<T | AudioFrame | typeof REPLY_END, T | AudioFrame> {
  const samplesPerMs = sampleRate / 1000;
  return (source) =>
    defer(() => {
      // The binding frees libopus state when its wrapper is collected: holding the only reference in
      // this closure makes the subscription the decoder's lifetime.
      let decoder: opus.OpusEncoder | undefined;
      return source.pipe(
        filter((item): item is T | AudioFrame => {
          if (item.kind !== 'reply-end') return true;
          decoder = undefined;
          return false;
        }),
        map((item) => {
          if (item.kind !== 'audio') return item;
          const frame = item as AudioFrame;
          decoder ??= new opus.OpusEncoder(sampleRate, 1);
          let pcm: Buffer | undefined;
          // An empty packet would not throw: libopus would conceal its maximum frame size instead.
          if (frame.data.length > 0) {
            try {
              pcm = decoder.decode(frame.data);
            } catch {
              pcm = undefined;
            }
          }
          if (pcm !== undefined) {
            return { kind: 'audio', data: pcm, arrivedAt: frame.arrivedAt, durationMs: pcm.length / 2 / samplesPerMs, concealed: false } satisfies AudioFrame;
          }
          concealed();
          const plc = conceal(decoder, Math.round(Math.min(frame.durationMs, MAX_OPUS_PACKET_MS) * samplesPerMs));
          return { kind: 'audio', data: plc, arrivedAt: frame.arrivedAt, durationMs: frame.durationMs, concealed: true } satisfies AudioFrame;
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
