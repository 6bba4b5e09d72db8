import { defer, map, type OperatorFunction } from 'rxjs';
import { opusPacketDurationMs } from '../protocol/audio.ts';
import { decodeBinary, parseServerJson, type ProtocolVersion } from '../protocol/xiaozhi.ts';
import type { RawUpstream, UpstreamEvent } from './events.ts';

/** XIAOZHI.md: servers speak in 60 ms frames unless their packets say otherwise. */
const DEFAULT_FRAME_MS = 60;

/**
 * Turns raw upstream messages into events: text into control messages, binary into audio frames
 * (unwrapped per protocol version; a v2/v3 JSON payload is a control message like any other).
 * A message that cannot be used becomes an `invalid` event instead of an error, so the stream lives on.
 * An audio packet whose Opus header is unreadable is still a frame, as long as the one before it, so
 * that the decoder can conceal it and the timeline keeps no hole.
 *
 * ```
 * raw:    --'{"type":"tts","state":"start"}'--<opus>--'{oops'--|
 * parse:  --message------------------------------audio----invalid-|
 * ```
 */
export function parse(version: ProtocolVersion, now: () => number = performance.now.bind(performance)): OperatorFunction<RawUpstream, UpstreamEvent> {
  const fromJson = (text: string): UpstreamEvent => {
    const parsed = parseServerJson(text);
    return parsed.ok ? { kind: 'message', message: parsed.message } : { kind: 'invalid', detail: parsed.detail };
  };
  return (source) =>
    defer(() => {
      let lastMs = DEFAULT_FRAME_MS;
      return source.pipe(
        map((raw): UpstreamEvent => {
          if (typeof raw === 'string') return fromJson(raw);
          const framed = decodeBinary(version, raw);
          if (!framed.ok) return { kind: 'invalid', detail: framed.detail };
          if (framed.kind === 'json') return fromJson(framed.payload.toString('utf8'));
          const durationMs = opusPacketDurationMs(framed.payload) || lastMs;
          lastMs = durationMs;
          return { kind: 'audio', data: framed.payload, arrivedAt: now(), durationMs, concealed: false };
        }),
      );
    });
}
