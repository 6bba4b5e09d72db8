import { asyncScheduler, Observable, type MonoTypeOperatorFunction, type SchedulerLike, type Subscription } from 'rxjs';
import type { SessionBudget } from './budget.ts';
import type { ServerMessage } from '../protocol/client.ts';
import type { Outbound } from './to-client.ts';

/** How much the pacer may hold back: the same bounds as the client's queue. */
export interface HoldLimit {
  maxMs: number;
  /** Shared with the session's other buffers; held audio and messages take their bytes from it. */
  budget: SessionBudget | undefined;
  /** Takes the place of the first frame dropped for the hold in each reply, so the client learns where. */
  notice?: ServerMessage;
}

const UNBOUNDED: HoldLimit = { maxMs: Infinity, budget: undefined };

/**
 * Releases audio at the audio clock's rate for clients with small fixed buffers. Each reply starts by
 * holding `prebufferMs` of audio (or less, if the reply ends or the session's state changes first, or
 * if audio trickles in so slowly that holding on for longer than `prebufferMs` would only add delay);
 * then frame n leaves at anchor + the duration of the frames before it, against the scheduler's
 * monotonic clock, so timer lateness never adds up. A frame that arrives after its due time by more
 * than a frame's length is an underrun: the clock re-anchors on it instead of bursting to catch up.
 * Messages keep their place between frames. A `discard` (abort) drops every held frame at once and
 * tells `onDropped` how many; it then passes on, so that the stages after this one drop theirs. So does
 * an unsubscription (the session ended) for the frames still held then. An upstream that bursts faster
 * than real time cannot make it hold more than `hold` allows: past it the oldest held audio goes
 * (`overflow`), as the client's queue drops its oldest for a slow client, and the first frame so dropped
 * in a reply makes way for `hold.notice`.
 *
 * ```
 * prebuffer 120 ms, 60 ms frames, frames arriving at once:
 * source:  (s a b c d)-------------|
 * pace:    (s a)-b-----c-----d-----|     (s: state speaking; one dash = 10 ms)
 * ```
 */
export function pace(
  prebufferMs: number,
  onDropped: (frames: number, why: 'discard' | 'teardown' | 'overflow') => void,
  scheduler: SchedulerLike = asyncScheduler,
  hold: HoldLimit = UNBOUNDED,
): MonoTypeOperatorFunction<Outbound> {
  return (source) =>
    new Observable<Outbound>((subscriber) => {
      let queue: Outbound[] = [];
      let heldFrames = 0;
      let heldMs = 0;
      let heldBytes = 0;
      /** What held messages weigh, kept so that they give back what they took. */
      const messageBytes = new Map<Outbound, number>();
      /** State and end items waiting: each closes a reply's prebuffer. */
      let boundaries = 0;
      let buffering = prebufferMs > 0;
      let holdingSince = -1;
      let anchor = -1;
      let timer: Subscription | undefined;
      let ended = false;
      let noticed = false;

      /** An item comes to wait here, or leaves: audio and messages alike take their bytes from the budget. */
      const held = (item: Outbound, sign: 1 | -1): void => {
        let bytes = 0;
        if (item.kind === 'audio') {
          heldFrames += sign;
          heldMs += sign * item.durationMs;
          bytes = item.data.length;
        } else if (item.kind === 'message') {
          bytes = sign > 0 ? JSON.stringify(item.message).length : messageBytes.get(item)!;
          if (sign > 0) messageBytes.set(item, bytes);
          else messageBytes.delete(item);
          if (item.message.type === 'state') boundaries += sign;
        } else if (item.kind === 'end') {
          boundaries += sign;
        }
        heldBytes += sign * bytes;
        if (sign > 0) hold.budget?.take(bytes);
        else hold.budget?.give(bytes);
      };

      /** Lets go of every held frame (messages stay); returns how many there were. */
      const dropAll = (): number => {
        const n = heldFrames;
        queue = queue.filter((q) => {
          if (q.kind === 'audio') held(q, -1);
          return q.kind !== 'audio';
        });
        return n;
      };

      const overHold = () => heldMs > hold.maxMs || (hold.budget !== undefined && hold.budget.used > hold.budget.limit);

      /** The newest frame always stays, as in the client's queue. */
      const bound = (): void => {
        let dropped = 0;
        while (heldFrames > 1 && overHold()) {
          const i = queue.findIndex((q) => q.kind === 'audio');
          held(queue[i]!, -1);
          dropped++;
          if (noticed || hold.notice === undefined) {
            queue.splice(i, 1);
            continue;
          }
          noticed = true;
          const notice: Outbound = { kind: 'message', message: hold.notice };
          queue[i] = notice;
          held(notice, 1);
        }
        if (dropped > 0) onDropped(dropped, 'overflow');
      };

      const startReply = () => {
        noticed = false;
        buffering = prebufferMs > 0;
        holdingSince = -1;
      };

      // Held audio may start once the prebuffer is full, or once nothing more of this reply can come. A
      // prebuffer as long as the hold limit could never fill: one more frame would be over it.
      const prebuffered = (frameMs: number): boolean =>
        ended || boundaries > 0 || heldMs >= prebufferMs || heldMs + frameMs > hold.maxMs;

      const release = (): void => {
        timer = undefined;
        while (queue.length > 0) {
          const item = queue[0]!;
          if (item.kind === 'audio') {
            const now = scheduler.now();
            if (buffering) {
              if (holdingSince < 0) holdingSince = now;
              if (!prebuffered(item.durationMs) && now - holdingSince < prebufferMs) {
                timer = scheduler.schedule(release, holdingSince + prebufferMs - now);
                return;
              }
              buffering = false;
              holdingSince = -1;
              anchor = -1;
            }
            if (anchor < 0 || now - anchor > item.durationMs) anchor = now;
            if (anchor > now) {
              timer = scheduler.schedule(release, anchor - now);
              return;
            }
            anchor += item.durationMs;
          }
          queue.shift();
          held(item, -1);
          // A state message ends one reply and opens the next: prebuffer again.
          if (item.kind === 'message' && item.message.type === 'state') startReply();
          subscriber.next(item);
        }
        if (ended) subscriber.complete();
      };

      const subscription = source.subscribe({
        next: (item) => {
          if (item.kind === 'discard') {
            const n = dropAll();
            if (n > 0) onDropped(n, 'discard');
            timer?.unsubscribe();
            timer = undefined;
            startReply();
          }
          queue.push(item);
          held(item, 1);
          bound();
          // A pending clock timer stands; a pending hold is re-judged, as this item may end it.
          if (timer === undefined || buffering) {
            timer?.unsubscribe();
            release();
          }
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          ended = true;
          if (timer === undefined) release();
        },
      });
      return () => {
        subscription.unsubscribe();
        timer?.unsubscribe();
        const n = dropAll();
        for (const item of queue) held(item, -1);
        queue = [];
        if (n > 0) onDropped(n, 'teardown');
      };
    });
}
