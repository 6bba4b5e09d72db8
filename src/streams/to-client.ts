import { defer, map, type OperatorFunction } from 'rxjs';
import type { ClientEnd, ClientFrame, Downlink, ServerMessage } from '../protocol/client.ts';
import type { AudioFrame } from './events.ts';

/**
 * What flows to the client, in order: audio frames, protocol messages, `discard` (every stage that
 * holds audio drops it at once, then passes it on) and `end` (close the socket after everything before it).
 */
export type Outbound = AudioFrame | { readonly kind: 'message'; readonly message: ServerMessage } | typeof DISCARD | ClientEnd;

export const DISCARD = { kind: 'discard' } as const;

/** How the session steers the audio of replies, in band (see `gate`): consumed before the pacer. */
export const ABORT = { kind: 'abort' } as const;
export const REPLY_START = { kind: 'reply-start' } as const;
export const REPLY_END = { kind: 'reply-end' } as const;
export type Steering = Outbound | typeof ABORT | typeof REPLY_START | typeof REPLY_END;

/**
 * Renders outbound items as socket frames for the negotiated transport. `binary` audio passes as it is
 * (the payload alone); `json` audio becomes an `audio_frame` with base64 data and a `seq` counting from
 * 0 in this subscription, so a client can see where the slow-client policy dropped frames.
 *
 * ```
 * source (json):    --state--a--b--|
 * toClient('json'): --state--audio_frame{seq:0}--audio_frame{seq:1}--|
 * ```
 */
export function toClient(transport: Downlink['transport']): OperatorFunction<Outbound, ClientFrame> {
  if (transport === 'binary') return map(render);
  return (source) =>
    defer(() => {
      let seq = 0;
      return source.pipe(
        map((item): ClientFrame => {
          if (item.kind !== 'audio') return render(item);
          const message = `{"type":"audio_frame","seq":${seq++},"data":"${item.data.toString('base64')}"}`;
          return { kind: 'audio', data: message, arrivedAt: item.arrivedAt, durationMs: item.durationMs };
        }),
      );
    });
}

function render(item: Outbound): ClientFrame {
  if (item.kind !== 'message') return item;
  return { kind: item.message.type === 'state' ? 'state' : 'text', data: JSON.stringify(item.message) };
}
