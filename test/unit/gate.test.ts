import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { AudioFrame } from '../../src/streams/events.ts';
import { gate } from '../../src/streams/gate.ts';
import { ABORT, DISCARD, REPLY_END, REPLY_START, type Outbound, type Steering } from '../../src/streams/to-client.ts';

const scheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const frame = (n: number): AudioFrame => ({ kind: 'audio', data: Buffer.from([n]), arrivedAt: n, durationMs: 60, concealed: false });
const said = (text: string): Outbound => ({ kind: 'message', message: { type: 'assistant_text', text } });
const END: Outbound = { kind: 'end', code: 1000, reason: 'idle' };

/**
 * Marble letters: a b c audio, x abort, s reply-start, e reply-end, m a message, n end; in the output,
 * d is the discard the abort becomes.
 */
const values = {
  a: frame(1),
  b: frame(2),
  c: frame(3),
  x: ABORT,
  s: REPLY_START,
  e: REPLY_END,
  m: said('Hello.'),
  n: END,
  d: DISCARD,
} satisfies Record<string, Steering>;

/** Runs `source` through a gate; returns what it told `aborted`. */
function marbles(source: string, expected: string, options: { replyEnd?: boolean; error?: unknown; subscriptions?: string; unsubscribe?: string } = {}): number[] {
  const aborted: number[] = [];
  scheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
    const input = cold<Steering>(source, values, options.error);
    expectObservable(input.pipe(gate((n) => aborted.push(n), options.replyEnd ?? true)), options.unsubscribe).toBe(expected, values, options.error);
    if (options.subscriptions !== undefined) expectSubscriptions(input.subscriptions).toBe(options.subscriptions);
  });
  return aborted;
}

describe('gate', () => {
  it('lets audio through while open, and tells nothing to aborted', () => {
    expect(marbles('-a-b-c-|', '-a-b-c-|')).toEqual([]);
  });

  it('turns abort into discard and drops the audio after it, telling aborted 1 per frame', () => {
    expect(marbles('-a-x-b-c-|', '-a-d-----|')).toEqual([1, 1]);
  });

  it('keeps dropping every frame until the aborted reply is over', () => {
    expect(marbles('-x-(abc)-a-|', '-d---------|')).toEqual([1, 1, 1, 1]);
  });

  it('reopens on reply-start, which it does not pass on', () => {
    expect(marbles('-x-b-s-c-|', '-d-----c-|')).toEqual([1]);
  });

  it('swallows reply-start while already open', () => {
    expect(marbles('-s-a-|', '---a-|')).toEqual([]);
  });

  it('reopens on reply-end and passes it on when replyEnd is true', () => {
    expect(marbles('-x-b-e-c-|', '-d---e-c-|', { replyEnd: true })).toEqual([1]);
  });

  it('reopens on reply-end but swallows it when replyEnd is false', () => {
    expect(marbles('-x-b-e-c-|', '-d-----c-|', { replyEnd: false })).toEqual([1]);
  });

  it('passes reply-end while open only when replyEnd is true', () => {
    expect(marbles('-a-e-b-|', '-a-e-b-|', { replyEnd: true })).toEqual([]);
    expect(marbles('-a-e-b-|', '-a---b-|', { replyEnd: false })).toEqual([]);
  });

  it('passes messages and end items while open and while discarding', () => {
    expect(marbles('-m-n-|', '-m-n-|')).toEqual([]);
    expect(marbles('-x-m-b-n-|', '-d-m---n-|')).toEqual([1]);
  });

  it('passes a discard already in the stream unchanged', () => {
    expect(marbles('-d-a-|', '-d-a-|')).toEqual([]);
  });

  it('emits a discard for each abort, even when already discarding', () => {
    expect(marbles('-x-a-x-b-|', '-d---d---|')).toEqual([1, 1]);
  });

  it('emits the DISCARD constant itself, and audio frames as the same objects', () => {
    const out: unknown[] = [];
    scheduler().run(({ cold, flush }) => {
      cold<Steering>('a x', values)
        .pipe(gate(() => {}, true))
        .subscribe((item) => out.push(item));
      flush();
    });
    expect(out[0]).toBe(values.a);
    expect(out[1]).toBe(DISCARD);
  });

  it('propagates an error while open', () => {
    const boom = new Error('upstream socket failed');
    expect(marbles('-a-#', '-a-#', { error: boom })).toEqual([]);
  });

  it('propagates an error while discarding', () => {
    const boom = new Error('decoder failed');
    expect(marbles('-x-b-#', '-d---#', { error: boom })).toEqual([1]);
  });

  it('propagates completion while discarding', () => {
    expect(marbles('-x-b-|', '-d---|')).toEqual([1]);
  });

  it('subscribes once and unsubscribes from the source when its subscriber does', () => {
    expect(marbles('-a-x-b-c-a-|', '-a-d-', { unsubscribe: '^---!', subscriptions: '^---!' })).toEqual([]);
  });

  it('keeps its open or closed state per subscription', () => {
    const aborted: number[] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const gated = cold<Steering>('-a-x-a-|', values).pipe(gate((n) => aborted.push(n), true));
      expectObservable(gated).toBe('-a-d---|', values);
      // Subscribed after the first subscription's abort: its own first frame still passes.
      expectObservable(gated, '----^').toBe('-----a-d---|', values);
    });
    expect(aborted).toEqual([1, 1]);
  });
});
