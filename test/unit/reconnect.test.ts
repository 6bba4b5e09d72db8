import { describe, expect, it } from 'vitest';
import { reconnectDelay, type Backoff } from '../../src/actors/reconnect.ts';

const backoff = (attempts: number, baseMs: number, maxMs: number): Backoff => ({ attempts, baseMs, maxMs });

describe('reconnectDelay', () => {
  it.each<{ name: string; backoff: Backoff; attempt: number; delay: number | undefined }>([
    { name: 'the first attempt waits baseMs', backoff: backoff(5, 100, 10_000), attempt: 0, delay: 100 },
    { name: 'the second attempt waits twice baseMs', backoff: backoff(5, 100, 10_000), attempt: 1, delay: 200 },
    { name: 'the third attempt waits four times baseMs', backoff: backoff(5, 100, 10_000), attempt: 2, delay: 400 },
    { name: 'the last attempt allowed still gets a delay', backoff: backoff(5, 100, 10_000), attempt: 4, delay: 1600 },
    { name: 'the delay is capped at maxMs', backoff: backoff(5, 100, 1000), attempt: 4, delay: 1000 },
    { name: 'a delay exactly at maxMs is kept', backoff: backoff(5, 125, 1000), attempt: 3, delay: 1000 },
    { name: 'one step below the cap is not capped', backoff: backoff(5, 100, 1000), attempt: 3, delay: 800 },
    { name: 'a baseMs above maxMs is capped from the first attempt', backoff: backoff(3, 5000, 1000), attempt: 0, delay: 1000 },
    { name: 'baseMs equal to maxMs gives a constant delay', backoff: backoff(3, 250, 250), attempt: 2, delay: 250 },
    { name: 'a zero baseMs retries at once', backoff: backoff(3, 0, 1000), attempt: 2, delay: 0 },
    { name: 'a huge attempt number (2 ** attempt overflows) is still capped', backoff: backoff(5000, 100, 30_000), attempt: 1500, delay: 30_000 },
    { name: 'once the attempts are spent it gives up', backoff: backoff(5, 100, 1000), attempt: 5, delay: undefined },
    { name: 'past the attempts it keeps giving up', backoff: backoff(5, 100, 1000), attempt: 6, delay: undefined },
    { name: 'a single attempt: the first waits baseMs', backoff: backoff(1, 100, 1000), attempt: 0, delay: 100 },
    { name: 'a single attempt: the second gives up', backoff: backoff(1, 100, 1000), attempt: 1, delay: undefined },
    { name: 'zero attempts give up at once', backoff: backoff(0, 100, 1000), attempt: 0, delay: undefined },
  ])('$name', ({ backoff, attempt, delay }) => {
    expect(reconnectDelay(attempt, backoff)).toBe(delay);
  });

  it('grows exponentially up to the cap, then stops after exactly `attempts` delays', () => {
    const b = backoff(8, 50, 2000);
    const delays = Array.from({ length: 10 }, (_, attempt) => reconnectDelay(attempt, b));
    expect(delays).toEqual([50, 100, 200, 400, 800, 1600, 2000, 2000, undefined, undefined]);
  });
});
