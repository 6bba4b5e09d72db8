import { Observable, type OperatorFunction } from 'rxjs';
import { DISCARD, REPLY_END, type Outbound, type Steering } from './to-client.ts';

/**
 * Lets through the audio of the reply in progress, and none of an aborted one's: `abort` drops what the
 * stages after it hold (it goes on as `discard`) and every frame after it, until `reply-start` or
 * `reply-end` says the aborted reply is over. Each frame dropped here is told to `aborted`, so that
 * the sink, where frames' fates are counted, counts it. Messages always pass, and so does `reply-end`
 * for the decoder (`decodeOpus` takes it out of the stream; without a decoder, give `replyEnd: false`).
 *
 * ```
 * source:  --a--ABORT--b--c--REPLY_END--d--|
 * gate:    --a--DISCARD------REPLY_END--d--|    (b, c: aborted)
 * ```
 */
export function gate(aborted: (frames: number) => void, replyEnd: boolean): OperatorFunction<Steering, Outbound | typeof REPLY_END> {
  return (source) =>
    new Observable<Outbound | typeof REPLY_END>((subscriber) => {
      let open = true;
      return source.subscribe({
        next: (item) => {
          switch (item.kind) {
            case 'audio':
              if (open) subscriber.next(item);
              else aborted(1);
              return;
            case 'abort':
              open = false;
              return subscriber.next(DISCARD);
            case 'reply-start':
              open = true;
              return;
            case 'reply-end':
              open = true;
              if (replyEnd) subscriber.next(REPLY_END);
              return;
            default:
              subscriber.next(item);
          }
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => subscriber.complete(),
      });
    });
}
