import { asyncScheduler, Observable, type MonoTypeOperatorFunction, type SchedulerLike, type Subscription } from 'rxjs';
import type { SessionBudget } from './budget.ts';
import type { Outbound } from './to-client.ts';

/** How much audio the pacer may hold back: the same bounds as the client's queue. */
export interface HoldLimit {
  maxMs: number;
  /** Shared with the session's other buffers; held audio takes its bytes from it. */
  budget: SessionBudget | undefined;
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
 * (`overflow`), as the client's queue drops its oldest for a slow client.
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
      let buffering = prebufferMs > 0;
      let holdingSince = -1;
      let anchor = -1;
      let timer: Subscription | undefined;
      let ended = false;

      const held = (frame: Outbound & { kind: 'audio' }, sign: 1 | -1) => {
        heldFrames += sign;
        heldMs += sign * frame.durationMs;
        heldBytes += sign * frame.data.length;
        if (sign > 0) hold.budget?.take(frame.data.length);
        else hold.budget?.give(frame.data.length);
      };

      /** Lets go of every held frame; returns how many there were. */
      const dropAll = (): number => {
        const n = heldFrames;
        hold.budget?.give(heldBytes);
        heldFrames = heldMs = heldBytes = 0;
        queue = queue.filter((q) => q.kind !== 'audio');
        return n;
      };

      const overHold = () => heldMs > hold.maxMs || (hold.budget !== undefined && hold.budget.used > hold.budget.limit);

      /** The newest frame always stays, as in the client's queue. */
      const bound = (): void => {
        let dropped = 0;
        while (heldFrames > 1 && overHold()) {
          const i = queue.findIndex((q) => q.kind === 'audio');
          held(queue[i] as Outbound & { kind: 'audio' }, -1);
          queue.splice(i, 1);
          dropped++;
        }
        if (dropped > 0) onDropped(dropped, 'overflow');
      };

      const startReply = () => {
        buffering = prebufferMs > 0;
        holdingSince = -1;
      };

      // Held audio may start once the prebuffer is full, or once nothing more of this reply can come.
      const prebuffered = (): boolean => {
        if (ended) return true;
        let ms = 0;
        for (const item of queue) {
          if (item.kind === 'audio') {
            ms += item.durationMs;
            // A prebuffer as long as the hold limit could never fill: one more frame would be over it.
            if (ms + item.durationMs > hold.maxMs) return true;
          } else if (item.kind === 'end' || (item.kind === 'message' && item.message.type === 'state')) return true;
          if (ms >= prebufferMs) return true;
        }
        return false;
      };

      const release = (): void => {
        timer = undefined;
        while (queue.length > 0) {
          const item = queue[0]!;
          if (item.kind === 'audio') {
            const now = scheduler.now();
            if (buffering) {
              if (holdingSince < 0) holdingSince = now;
              if (!prebuffered() && now - holdingSince < prebufferMs) {
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
            held(item, -1);
          }
          queue.shift();
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
          if (item.kind === 'audio') {
            held(item, 1);
            bound();
          }
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
        queue = [];
        if (n > 0) onDropped(n, 'teardown');
      };
    });
}
