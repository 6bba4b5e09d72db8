import { from, tap } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { SessionBudget } from '../../src/streams/budget.ts';
import { pace } from '../../src/streams/pace.ts';
import type { Outbound } from '../../src/streams/to-client.ts';
import { DISCARD } from '../../src/streams/to-client.ts';

const frame = (n: number, durationMs = 60): Outbound => ({ kind: 'audio', data: Buffer.from([n]), arrivedAt: 0, durationMs, concealed: false });
const state = (s: 'speaking' | 'ready'): Outbound => ({ kind: 'message', message: { type: 'state', state: s } });
const said = (text: string): Outbound => ({ kind: 'message', message: { type: 'assistant_text', text } });

/** A frame of `FRAME_BYTES` bytes, numbered by its arrivedAt: a burst of thousands stays tellable apart. */
const FRAME_BYTES = 3;
const numbered = (n: number, durationMs = 60): Outbound => ({ kind: 'audio', data: Buffer.alloc(FRAME_BYTES, n), arrivedAt: n, durationMs, concealed: false });
const numberOf = (item: Outbound): number | string => (item.kind === 'audio' ? item.arrivedAt : item.kind);

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

describe('pace hold limit', () => {
  it('never holds more than maxMs of a burst faster than real time: the oldest held audio goes as overflow, the newest leave in order', () => {
    const budget = new SessionBudget(1024 * 1024);
    const drops: [number, string][] = [];
    const out: [number, number | string][] = [];
    let mostHeld = 0;
    let heldAfterBurst = -1;
    const ts = scheduler();
    ts.run(() => {
      const burst = Array.from({ length: 5000 }, (_, n) => numbered(n));
      // Seen before the pacer takes each frame: what it holds after the one before.
      const source = from(burst).pipe(tap(() => (mostHeld = Math.max(mostHeld, budget.held))));
      ts.schedule(() => (heldAfterBurst = budget.held));
      source.pipe(pace(0, (n, why) => drops.push([n, why]), ts, { maxMs: 5000, budget })).subscribe((item) => out.push([ts.now(), numberOf(item)]));
    });
    // Frame 0 leaves at once and starts the clock. 83 frames of 60 ms are 4980 ms, within the 5000 ms
    // hold; 84 would be 5040. So from frame 84 on each new frame pushes the oldest held one out.
    expect(heldAfterBurst).toBe(83 * FRAME_BYTES);
    expect(mostHeld).toBe(83 * FRAME_BYTES);
    expect(drops).toHaveLength(5000 - 1 - 83);
    expect(drops.every(([n, why]) => n === 1 && why === 'overflow')).toBe(true);
    // What leaves is frame 0 and the newest 83, in order, at the audio clock; nothing is held after.
    expect(out).toEqual([[0, 0], ...Array.from({ length: 83 }, (_, i) => [60 * (i + 1), 5000 - 83 + i])]);
    expect(budget.held).toBe(0);
  });

  it('bounds the hold in bytes when the budget is smaller than maxMs', () => {
    const budget = new SessionBudget(10 * FRAME_BYTES);
    const drops: [number, string][] = [];
    const out: [number, number | string][] = [];
    let mostHeld = 0;
    const ts = scheduler();
    ts.run(() => {
      const burst = Array.from({ length: 100 }, (_, n) => numbered(n));
      const source = from(burst).pipe(tap(() => (mostHeld = Math.max(mostHeld, budget.held))));
      source.pipe(pace(0, (n, why) => drops.push([n, why]), ts, { maxMs: 5000, budget })).subscribe((item) => out.push([ts.now(), numberOf(item)]));
    });
    // Ten frames of three bytes fill the budget of 30: 600 ms, far under the 5000 ms.
    expect(mostHeld).toBe(10 * FRAME_BYTES);
    expect(drops.reduce((sum, [n]) => sum + n, 0)).toBe(100 - 1 - 10);
    expect(new Set(drops.map(([, why]) => why))).toEqual(new Set(['overflow']));
    expect(out).toEqual([[0, 0], ...Array.from({ length: 10 }, (_, i) => [60 * (i + 1), 90 + i])]);
    expect(budget.held).toBe(0);
  });

  it('counts what the session holds elsewhere against the hold, and keeps the newest frame even with the budget spent', () => {
    const budget = new SessionBudget(100);
    // The client's queue or the upstream socket has taken the whole budget already.
    budget.upstreamBytes = () => 1000;
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3), d: frame(4) };
      const source = cold('(abcd)', values);
      expectObservable(source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget }))).toBe('a 59ms d', values);
    });
    // b went when c came, c when d came: one overflow report per frame that arrived over the bound.
    expect(drops).toEqual([
      [1, 'overflow'],
      [1, 'overflow'],
    ]);
    expect(budget.held).toBe(0);
  });

  it('reports every frame one arrival pushes out in one overflow call', () => {
    const budget = new SessionBudget(1000);
    let upstream = 0;
    budget.upstreamBytes = () => upstream;
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3), d: frame(4), e: frame(5) };
      // Four frames held within the budget; then the upstream's unsent bytes spend it all, and the next frame comes.
      const source = cold('(abcd) 9ms e', values).pipe(tap((f) => f === values.e && (upstream = 1000)));
      expectObservable(source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget }))).toBe('a 59ms e', values);
    });
    expect(drops).toEqual([[3, 'overflow']]);
  });

  it('drops only audio over the hold: a message keeps its place', () => {
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), t: said('hi'), c: frame(3), d: frame(4) };
      const source = cold('(abtcd)', values);
      const paced = source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 120, budget: undefined }));
      expectObservable(paced).toBe('a 59ms (tc) 56ms d', values);
    });
    expect(drops).toEqual([[1, 'overflow']]);
  });

  it('drops nothing while the hold is within its limits, up to exactly maxMs and exactly the budget', () => {
    const budget = new SessionBudget(4 * FRAME_BYTES);
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), c: numbered(3), d: numbered(4), e: numbered(5) };
      // a leaves at once; b to e are held: 240 ms and 12 bytes, each exactly at its limit.
      const source = cold('(abcde)', values);
      const paced = source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 240, budget }));
      expectObservable(paced).toBe('a 59ms b 59ms c 59ms d 59ms e', values);
    });
    expect(drops).toEqual([]);
    expect(budget.held).toBe(0);
  });

  it('one frame more than maxMs allows pushes out the oldest held one', () => {
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: frame(1), b: frame(2), c: frame(3), d: frame(4), e: frame(5), f: frame(6) };
      const source = cold('(abcdef)', values);
      const paced = source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 240, budget: undefined }));
      expectObservable(paced).toBe('a 59ms c 59ms d 59ms e 59ms f', values);
    });
    expect(drops).toEqual([[1, 'overflow']]);
  });

  it('releases a burst within the hold limit as it always did, reporting nothing', () => {
    const budget = new SessionBudget(1024 * 1024);
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { s: state('speaking'), a: frame(1), b: frame(2), c: frame(3), d: frame(4), r: state('ready') };
      const source = cold('(sabcd) 500ms r', values);
      const paced = source.pipe(pace(120, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget }));
      expectObservable(paced).toBe('(sa) 56ms b 59ms c 59ms d 326ms r', values);
    });
    expect(drops).toEqual([]);
    expect(budget.held).toBe(0);
  });
});

describe('pace budget', () => {
  it('weighs the messages it holds behind audio in the budget, and gives their bytes back as they leave', () => {
    const budget = new SessionBudget(1024 * 1024);
    const text = said('x'.repeat(100));
    const textBytes = JSON.stringify(text.kind === 'message' && text.message).length;
    let heldWithText = -1;
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), t: text };
      const source = cold('(abt)', values);
      const paced = source.pipe(
        pace(0, () => {}, undefined, { maxMs: 5000, budget }),
        tap((item) => item.kind === 'audio' && item.arrivedAt === 2 && (heldWithText = budget.held)),
      );
      expectObservable(paced).toBe('a 59ms (bt)', values);
    });
    // When b leaves, the text behind it is still held: its bytes and b's own, given back as b went.
    expect(heldWithText).toBe(textBytes);
    expect(budget.held).toBe(0);
  });

  it('lets held audio go so that messages held behind it fit the budget, and passes the messages on at once', () => {
    const budget = new SessionBudget(200);
    const drops: [number, string][] = [];
    const big = said('y'.repeat(190));
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), c: numbered(3), d: numbered(4), t: big };
      // b, c and d are held behind a; the text behind d does not fit beside them.
      const paced = cold('(abcdt)', values).pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget }));
      expectObservable(paced).toBe('a 59ms (dt)', values);
    });
    expect(drops).toEqual([[2, 'overflow']]);
    expect(budget.held).toBe(0);
  });

  it('takes the bytes of each frame it holds and gives them back as the frame leaves', () => {
    const budget = new SessionBudget(1024 * 1024);
    const heldAsEachLeft: number[] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), c: numbered(3), d: numbered(4) };
      const source = cold('(abcd)', values);
      const paced = source.pipe(
        pace(0, () => {}, undefined, { maxMs: 5000, budget }),
        tap(() => heldAsEachLeft.push(budget.held)),
      );
      expectObservable(paced).toBe('a 59ms b 59ms c 59ms d', values);
    });
    // a leaves before b comes; then b, c and d are held, and each gives its bytes back as it goes.
    expect(heldAsEachLeft).toEqual([0, 2 * FRAME_BYTES, FRAME_BYTES, 0]);
  });

  it('gives back the bytes of every held frame on discard', () => {
    const budget = new SessionBudget(1024 * 1024);
    const drops: [number, string][] = [];
    let heldBeforeDiscard = -1;
    let heldAfterDiscard = -1;
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), c: numbered(3), x: DISCARD as Outbound };
      const source = cold('(abc) 9ms x', values).pipe(tap((item) => item.kind === 'discard' && (heldBeforeDiscard = budget.held)));
      const paced = source.pipe(
        pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget }),
        tap((item) => item.kind === 'discard' && (heldAfterDiscard = budget.held)),
      );
      expectObservable(paced).toBe('a 13ms x', values);
    });
    expect(heldBeforeDiscard).toBe(2 * FRAME_BYTES);
    expect(heldAfterDiscard).toBe(0);
    expect(drops).toEqual([[2, 'discard']]);
    expect(budget.held).toBe(0);
  });

  it('gives back the bytes of every held frame when unsubscribed', () => {
    const budget = new SessionBudget(1024 * 1024);
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2), c: numbered(3) };
      const source = cold('(abc)', values);
      expectObservable(source.pipe(pace(0, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget })), '^ 9ms !').toBe('a', values);
    });
    expect(drops).toEqual([[2, 'teardown']]);
    expect(budget.held).toBe(0);
  });

  it('gives back the bytes of frames held while prebuffering when the session ends before any left', () => {
    const budget = new SessionBudget(1024 * 1024);
    const drops: [number, string][] = [];
    scheduler().run(({ cold, expectObservable }) => {
      const values = { a: numbered(1), b: numbered(2) };
      const source = cold('(ab)', values);
      expectObservable(source.pipe(pace(500, (n, why) => drops.push([n, why]), undefined, { maxMs: 5000, budget })), '^ 99ms !').toBe('', values);
    });
    expect(drops).toEqual([[2, 'teardown']]);
    expect(budget.held).toBe(0);
  });
});
