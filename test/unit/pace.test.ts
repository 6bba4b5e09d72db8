import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { pace } from '../../src/streams/pace.ts';
import type { Outbound } from '../../src/streams/to-client.ts';
import { DISCARD } from '../../src/streams/to-client.ts';

const frame = (n: number, durationMs = 60): Outbound => ({ kind: 'audio', data: Buffer.from([n]), arrivedAt: 0, durationMs, concealed: false });
const state = (s: 'speaking' | 'ready'): Outbound => ({ kind: 'message', message: { type: 'state', state: s } });

function scheduler() {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

describe('pace', () => {
  it('releases a burst at the audio clock after the prebuffer fills', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const values = { s: state('speaking'), a: frame(1), b: frame(2), c: frame(3), d: frame(4), r: state('ready') };
      const source = cold('(sabcd) 500ms r', values);
      const paced = source.pipe(pace(120, () => {}));
      expectObservable(paced).toBe('(sa) 56ms b 59ms c 59ms d 326ms r', values);
    });
  });

  it('holds frames until the prebuffer is full, then keeps the clock', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const values = { s: state('speaking'), a: frame(1), b: frame(2), c: frame(3) };
      const source = cold('s 99ms a 99ms b 99ms c', values);
      expectObservable(source.pipe(pace(120, () => {}))).toBe('s 199ms a 59ms b 59ms c', values);
    });
  });

  it('stops holding after prebufferMs when audio trickles in slower than real time', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const values = { s: state('speaking'), a: frame(1), b: frame(2) };
      const source = cold('s 9ms a 299ms b', values);
      expectObservable(source.pipe(pace(200, () => {}))).toBe('s 209ms a 99ms b', values);
    });
  });

  it('re-anchors on a frame that arrives after an underrun instead of bursting', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3) };
      const source = cold('a 299ms b c', values);
      expectObservable(source.pipe(pace(0, () => {}))).toBe('a 299ms b 59ms c', values);
    });
  });

  it('lets a reply shorter than the prebuffer go when its state message comes', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), r: state('ready') };
      const source = cold('ab 9ms r', values);
      expectObservable(source.pipe(pace(500, () => {}))).toBe('11ms a 59ms (br)', values);
    });
  });

  it('drops every held frame on discard and says how many', () => {
    const dropped: number[] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3), x: DISCARD as Outbound };
      const source = cold('(abc) 9ms x', values);
      expectObservable(source.pipe(pace(0, (n, why) => why === 'discard' && dropped.push(n)))).toBe('a 13ms x', values);
    });
    expect(dropped).toEqual([2]);
  });

  it('counts the frames it still holds when unsubscribed, so that an ended session leaves none behind', () => {
    const dropped: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3) };
      const source = cold('(abc)', values);
      expectObservable(source.pipe(pace(0, (n, why) => dropped.push([n, why]))), '^ 9ms !').toBe('a', values);
    });
    expect(dropped).toEqual([[2, 'teardown']]);
  });
});
