import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { ClientFrame } from '../../src/protocol/client.ts';
import { createMetrics, type DropReason, type Metrics } from '../../src/observability/metrics.ts';
import { SocketSink, type ClientSocket, type SinkOptions } from '../../src/transport/socket-sink.ts';

type SendMode = 0 | 1 | 2 | 'throw';

/** A uWS socket stand-in: a settable buffered amount, a record of sends, and a chosen answer to send. */
class FakeSocket implements ClientSocket {
  bufferedAmount = 0;
  mode: SendMode = 1;
  /** When set, each accepted send adds its length to the buffered amount, as a socket that stopped reading. */
  grows = false;
  readonly sent: { data: Buffer | string; isBinary: boolean }[] = [];
  readonly ends: { code: number; reason: string }[] = [];
  touches = 0;

  send(data: Buffer | string, isBinary: boolean): number {
    this.touches++;
    if (this.mode === 'throw') throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
    this.sent.push({ data, isBinary });
    if (this.grows && this.mode !== 2) this.bufferedAmount += data.length;
    return this.mode;
  }

  getBufferedAmount(): number {
    this.touches++;
    return this.bufferedAmount;
  }

  end(code: number, reason: string): void {
    this.touches++;
    if (this.mode === 'throw') throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
    this.ends.push({ code, reason });
  }

  get sentData(): string[] {
    return this.sent.map((s) => (typeof s.data === 'string' ? s.data : `bin:${s.data.toString('utf8')}`));
  }
}

const HIGH_WATER = 1000;
const OVER = HIGH_WATER + 1;

const audio = (name: string, durationMs = 60, arrivedAt = 0): ClientFrame => ({ kind: 'audio', data: Buffer.from(name), arrivedAt, durationMs });
const text = (name: string): ClientFrame => ({ kind: 'text', data: name });
const state = (name: string): ClientFrame => ({ kind: 'state', data: name });

function setup(options: Partial<SinkOptions> = {}) {
  const socket = new FakeSocket();
  const metrics = createMetrics({ defaultMetrics: false });
  const tooSlow = { calls: 0, gaveUp: 0 };
  const sink = new SocketSink(
    socket,
    {
      highWaterBytes: HIGH_WATER,
      queueLimitMs: 5000,
      maxQueuedMessages: 1000,
      policy: 'drop-oldest',
      codec: 'pcm16',
      transport: 'binary',
      onTooSlow: (what) => (what === 'dropping' ? tooSlow.calls++ : tooSlow.gaveUp++),
      now: () => 0,
      ...options,
    },
    metrics,
  );
  return { socket, metrics, sink, tooSlow };
}

type Sample = { value: number; labels: Partial<Record<string, string | number>>; metricName?: string };
type Readable = { get(): Promise<{ values: Sample[] }> };

/** The sum of a metric's samples whose labels include `labels` (histograms: their _count). */
async function read(metric: Readable, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await metric.get();
  return values
    .filter((v) => !/_(bucket|sum)$/.test(v.metricName ?? ''))
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

const dropped = (m: Metrics, reason: DropReason) => read(m.framesDropped, { reason });
const failures = (m: Metrics, reason: string) => read(m.sendFailures, { reason });
const pushed = (m: Metrics) => read(m.framesPushed);
const depth = (m: Metrics) => read(m.queueDepth);

describe('SocketSink under the high-water mark', () => {
  it('sends frames straight out, audio as binary and text as text', async () => {
    const { socket, sink, metrics } = setup();
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('hello'));
    sink.write(audio('a2'));
    expect(socket.sent).toEqual([
      { data: 'speaking', isBinary: false },
      { data: Buffer.from('a1'), isBinary: true },
      { data: 'hello', isBinary: false },
      { data: Buffer.from('a2'), isBinary: true },
    ]);
    expect(sink.depth).toBe(0);
    expect(await read(metrics.framesPushed, { codec: 'pcm16', transport: 'binary' })).toBe(2);
    expect(await depth(metrics)).toBe(0);
  });

  it('sends json-transport audio (a string) as a text frame', () => {
    const { socket, sink } = setup({ transport: 'json' });
    sink.write({ kind: 'audio', data: '{"type":"audio_frame","seq":0,"data":""}', arrivedAt: 0, durationMs: 60 });
    expect(socket.sent[0]!.isBinary).toBe(false);
  });

  it('counts a frame the socket only buffered (send answers 0) as pushed', async () => {
    const { socket, sink, metrics } = setup();
    socket.mode = 0;
    sink.write(audio('a'));
    expect(await pushed(metrics)).toBe(1);
  });

  it('sends at exactly the high-water mark, which is not above it', () => {
    const { socket, sink } = setup();
    socket.bufferedAmount = HIGH_WATER;
    sink.write(audio('a'));
    expect(socket.sent).toHaveLength(1);
  });

  it('times the first audio of a reply from the end of input, and each frame from its arrival', async () => {
    let clock = 1000;
    const { sink, metrics } = setup({ now: () => clock });
    sink.markInputEnded(400);
    sink.write(audio('a', 60, 900));
    clock = 1060;
    sink.write(audio('b', 60, 1050));
    const ttfa = await metrics.timeToFirstAudio.get();
    expect(ttfa.values.find((v) => v.metricName?.endsWith('_sum'))?.value).toBeCloseTo(0.6);
    expect(await read(metrics.timeToFirstAudio)).toBe(1);
    const latency = await metrics.frameLatency.get();
    expect(latency.values.find((v) => v.metricName?.endsWith('_sum'))?.value).toBeCloseTo(0.1 + 0.01);
    const interval = await metrics.frameInterval.get();
    expect(interval.values.find((v) => v.metricName?.endsWith('_sum'))?.value).toBeCloseTo(0.06);
  });

  it('measures frame intervals within a reply only, even when the reply boundary waited in the queue', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    for (const frame of [audio('a1'), audio('a2'), state('ready'), state('speaking'), audio('b1')]) sink.write(frame);
    socket.bufferedAmount = 0;
    sink.drain();
    const interval = await metrics.frameInterval.get();
    expect(interval.values.find((v) => v.metricName?.endsWith('_count'))?.value).toBe(1);
  });
});

describe('SocketSink above the high-water mark', () => {
  it('queues frames in order and sends nothing', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t'));
    sink.write(audio('a2'));
    expect(socket.sent).toEqual([]);
    expect(sink.depth).toBe(3);
    expect(await depth(metrics)).toBe(3);
    expect(await read(metrics.backpressureEvents)).toBe(1);
    expect(await read(metrics.sessionQueueDepth)).toBe(3);
  });

  it('keeps queueing behind waiting frames even once the socket has room, until drain', () => {
    const { socket, sink } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    socket.bufferedAmount = 0;
    sink.write(audio('a2'));
    expect(socket.sent).toEqual([]);
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2']);
  });

  it('drain sends nothing while the socket is still above the mark', () => {
    const { socket, sink } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.drain();
    expect(socket.sent).toEqual([]);
    expect(sink.depth).toBe(1);
  });

  it('drain sends in order as the buffered amount falls, stopping at the mark', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    const names = ['a1', 'a2', 'a3', 'a4', 'a5', 'a6'];
    for (const n of names) sink.write(audio(n));
    socket.grows = true;
    socket.bufferedAmount = HIGH_WATER - 3;
    sink.drain();
    // a1 takes the socket to the mark, a2 above it: the rest wait.
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2']);
    expect(sink.depth).toBe(4);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(names.map((n) => `bin:${n}`));
    expect(sink.depth).toBe(0);
    expect(await depth(metrics)).toBe(0);
    expect(await pushed(metrics)).toBe(6);
  });

  it('counts one backpressure event per crossing of the mark', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a'));
    sink.write(audio('b'));
    sink.drain();
    socket.bufferedAmount = 0;
    sink.drain();
    socket.bufferedAmount = OVER;
    sink.write(audio('c'));
    expect(await read(metrics.backpressureEvents)).toBe(2);
  });

  it('never drops text, however full the queue', async () => {
    const { socket, sink, metrics } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    const texts: string[] = [];
    for (let i = 0; i < 50; i++) {
      sink.write(audio(`a${i}`));
      texts.push(`t${i}`);
      sink.write(text(`t${i}`));
    }
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData.filter((d) => d.startsWith('t'))).toEqual(texts);
    expect(socket.sentData.filter((d) => d.startsWith('bin:'))).toEqual(['bin:a48', 'bin:a49']);
    expect(await dropped(metrics, 'too_slow')).toBe(48);
  });
});

describe('SocketSink queue limit', () => {
  it('holds at most queueLimitMs of audio, dropping the oldest as too_slow', async () => {
    const { socket, sink, metrics } = setup({ queueLimitMs: 300 });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 8; i++) sink.write(audio(`a${i}`));
    expect(sink.depth).toBe(5);
    expect(await dropped(metrics, 'too_slow')).toBe(3);
    expect(await depth(metrics)).toBe(5);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a4', 'bin:a5', 'bin:a6', 'bin:a7', 'bin:a8']);
  });

  it('counts the queue in milliseconds, not frames', async () => {
    const { socket, sink, metrics } = setup({ queueLimitMs: 300 });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 15; i++) sink.write(audio(`a${i}`, 20));
    expect(sink.depth).toBe(15);
    sink.write(audio('long', 120));
    expect(await dropped(metrics, 'too_slow')).toBe(6);
    expect(sink.depth).toBe(10);
  });

  it('drops the oldest audio around queued text, which keeps its place', () => {
    const { socket, sink } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    sink.write(text('t0'));
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    sink.write(audio('a3'));
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['t0', 't1', 'bin:a2', 'bin:a3']);
  });

  it('calls onTooSlow once per reply, and again after markInputEnded', () => {
    const { socket, sink, tooSlow } = setup({ queueLimitMs: 60 });
    socket.bufferedAmount = OVER;
    for (let i = 0; i < 10; i++) sink.write(audio(`a${i}`));
    expect(tooSlow.calls).toBe(1);
    sink.markInputEnded(0);
    expect(tooSlow.calls).toBe(1);
    for (let i = 0; i < 10; i++) sink.write(audio(`b${i}`));
    expect(tooSlow.calls).toBe(2);
  });

  it('does not call onTooSlow while nothing is dropped', () => {
    const { socket, sink, tooSlow } = setup({ queueLimitMs: 600 });
    socket.bufferedAmount = OVER;
    for (let i = 0; i < 10; i++) sink.write(audio(`a${i}`));
    expect(tooSlow.calls).toBe(0);
  });
});

describe('SocketSink dropAudio', () => {
  it('removes every queued audio frame at once and keeps text in order', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    sink.write(audio('a3'));
    sink.write(text('t2'));
    expect(sink.dropAudio('aborted')).toBe(3);
    expect(sink.depth).toBe(3);
    expect(await dropped(metrics, 'aborted')).toBe(3);
    expect(await depth(metrics)).toBe(3);
    sink.write(state('ready'));
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['speaking', 't1', 't2', 'ready']);
  });

  it('answers 0 and counts nothing when no audio waits', async () => {
    const { socket, sink, metrics } = setup();
    expect(sink.dropAudio('aborted')).toBe(0);
    socket.bufferedAmount = OVER;
    sink.write(text('t'));
    expect(sink.dropAudio('aborted')).toBe(0);
    expect(sink.depth).toBe(1);
    expect(await dropped(metrics, 'aborted')).toBe(0);
  });

  it('leaves the sink working after a partial drain', () => {
    const { socket, sink } = setup();
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    socket.grows = true;
    socket.bufferedAmount = HIGH_WATER - 1;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1']);
    expect(sink.dropAudio('aborted')).toBe(2);
    socket.bufferedAmount = 0;
    sink.write(audio('b1'));
    expect(socket.sentData).toEqual(['bin:a1', 'bin:b1']);
  });
});

describe('SocketSink send failures', () => {
  it('counts send result 2 as a backpressure_limit failure, not a push', async () => {
    const { socket, sink, metrics } = setup();
    socket.mode = 2;
    sink.write(audio('a'));
    expect(await failures(metrics, 'backpressure_limit')).toBe(1);
    expect(await pushed(metrics)).toBe(0);
  });

  it('counts a throwing socket as a closed failure and does not throw', async () => {
    const { socket, sink, metrics } = setup();
    socket.mode = 'throw';
    expect(() => sink.write(audio('a'))).not.toThrow();
    expect(() => sink.write(text('t'))).not.toThrow();
    expect(await failures(metrics, 'closed')).toBe(1);
    expect(await pushed(metrics)).toBe(0);
  });

  it('counts failures met while draining', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    socket.bufferedAmount = 0;
    socket.mode = 'throw';
    expect(() => sink.drain()).not.toThrow();
    expect(await failures(metrics, 'closed')).toBe(3);
    expect(await depth(metrics)).toBe(0);
  });
});

describe('SocketSink close', () => {
  it('drops queued audio as client_gone, empties the queue, and never touches the socket again', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t'));
    sink.write(audio('a2'));
    const touches = socket.touches;
    sink.close();
    expect(await dropped(metrics, 'client_gone')).toBe(2);
    expect(await depth(metrics)).toBe(0);
    expect(sink.depth).toBe(0);
    socket.bufferedAmount = 0;
    sink.drain();
    sink.write(audio('a3'));
    sink.write(text('t2'));
    sink.write(state('ready'));
    sink.dropAudio('aborted');
    sink.close();
    expect(socket.touches).toBe(touches);
    expect(socket.sent).toEqual([]);
    expect(await dropped(metrics, 'client_gone')).toBe(3);
    expect(await dropped(metrics, 'aborted')).toBe(0);
  });
});

describe('SocketSink in-band control frames', () => {
  it('treats a discard frame as dropAudio(aborted), keeping messages in order', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    sink.write({ kind: 'discard' });
    sink.write(state('ready'));
    expect(await dropped(metrics, 'aborted')).toBe(2);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['t1', 'ready']);
  });

  it('ends the socket at once when nothing waits, and touches it no more', () => {
    const { socket, sink } = setup();
    sink.write({ kind: 'end', code: 1000, reason: 'bye' });
    expect(socket.ends).toEqual([{ code: 1000, reason: 'bye' }]);
    const touches = socket.touches;
    sink.write(text('late'));
    sink.drain();
    expect(socket.touches).toBe(touches);
  });

  it('ends the socket only after everything written before the end, and drops audio written after it', async () => {
    const { socket, sink, metrics } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write({ kind: 'end', code: 4002, reason: 'upstream lost' });
    sink.write(audio('a2'));
    expect(socket.ends).toEqual([]);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1', 't1']);
    expect(socket.ends).toEqual([{ code: 4002, reason: 'upstream lost' }]);
    expect(await dropped(metrics, 'client_gone')).toBe(1);
    expect(await depth(metrics)).toBe(0);
  });

  it('does not throw when ending a socket that is already closed', () => {
    const { socket, sink } = setup();
    socket.mode = 'throw';
    expect(() => sink.write({ kind: 'end', code: 1000, reason: '' })).not.toThrow();
  });
});

describe('SocketSink slow-client policy close', () => {
  it('gives up instead of dropping: the frame in hand and the queued audio count as too_slow', async () => {
    const { socket, sink, metrics, tooSlow } = setup({ policy: 'close', queueLimitMs: 180 });
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    sink.write(text('t'));
    expect(tooSlow.gaveUp).toBe(0);
    sink.write(audio('a4'));
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 1 });
    expect(await dropped(metrics, 'too_slow')).toBe(4);
    expect(await depth(metrics)).toBe(0);
    const touches = socket.touches;
    socket.bufferedAmount = 0;
    sink.drain();
    sink.write(audio('a5'));
    expect(socket.touches).toBe(touches);
    expect(socket.sent).toEqual([]);
    expect(await dropped(metrics, 'client_gone')).toBe(1);
  });

  it('gives up when more messages wait than maxQueuedMessages, since messages are never dropped', async () => {
    const { socket, sink, metrics, tooSlow } = setup({ maxQueuedMessages: 16 });
    socket.bufferedAmount = OVER;
    sink.write(audio('a'));
    for (let i = 0; i < 16; i++) sink.write(text(`t${i}`));
    expect(tooSlow.gaveUp).toBe(0);
    sink.write(text('t16'));
    expect(tooSlow.gaveUp).toBe(1);
    expect(await dropped(metrics, 'too_slow')).toBe(1);
    expect(sink.depth).toBe(0);
  });
});

type Op =
  | { op: 'audio'; durationMs: number }
  | { op: 'text' }
  | { op: 'state' }
  | { op: 'drain' }
  | { op: 'buffered'; amount: number }
  | { op: 'mode'; mode: SendMode }
  | { op: 'grows'; grows: boolean }
  | { op: 'dropAudio'; reason: DropReason }
  | { op: 'discard' }
  | { op: 'end' }
  | { op: 'inputEnded' }
  | { op: 'close' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('audio' as const), durationMs: fc.constantFrom(20, 40, 60, 120) }), weight: 8 },
  { arbitrary: fc.constant({ op: 'text' as const }), weight: 2 },
  { arbitrary: fc.constant({ op: 'state' as const }), weight: 1 },
  { arbitrary: fc.constant({ op: 'drain' as const }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('buffered' as const), amount: fc.constantFrom(0, HIGH_WATER - 5, HIGH_WATER, OVER, 10 * HIGH_WATER) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('mode' as const), mode: fc.constantFrom<SendMode>(0, 1, 1, 1, 2, 'throw') }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('grows' as const), grows: fc.boolean() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('dropAudio' as const), reason: fc.constantFrom<DropReason>('aborted', 'too_slow', 'client_gone') }), weight: 1 },
  { arbitrary: fc.constant({ op: 'inputEnded' as const }), weight: 1 },
  { arbitrary: fc.constant({ op: 'discard' as const }), weight: 1 },
  { arbitrary: fc.constant({ op: 'end' as const }), weight: 1 },
  { arbitrary: fc.constant({ op: 'close' as const }), weight: 1 },
);

/** Plays a list of operations against a fresh sink, checking after each that the gauge matches the queue. */
async function play(ops: readonly Op[], options: Partial<SinkOptions>) {
  const fixture = setup(options);
  const { socket, sink, metrics } = fixture;
  let written = 0;
  let n = 0;
  for (const o of ops) {
    switch (o.op) {
      case 'audio':
        written++;
        sink.write(audio(`a${n++}`, o.durationMs));
        break;
      case 'text':
        sink.write(text(`t${n++}`));
        break;
      case 'state':
        sink.write(state(`s${n++}`));
        break;
      case 'drain':
        sink.drain();
        break;
      case 'buffered':
        socket.bufferedAmount = o.amount;
        break;
      case 'mode':
        socket.mode = o.mode;
        break;
      case 'grows':
        socket.grows = o.grows;
        break;
      case 'dropAudio':
        sink.dropAudio(o.reason);
        break;
      case 'inputEnded':
        sink.markInputEnded(0);
        break;
      case 'discard':
        sink.write({ kind: 'discard' });
        break;
      case 'end':
        sink.write({ kind: 'end', code: 1000, reason: '' });
        break;
      case 'close':
        sink.close();
        break;
    }
    expect(await depth(metrics)).toBe(sink.depth);
  }
  return { ...fixture, written };
}

describe('SocketSink invariant', () => {
  it('accounts for every audio frame written: pushed + dropped + failed, and the queue empties on close', async () => {
    const policy = fc.constantFrom<SinkOptions['policy']>('drop-oldest', 'close');
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 120 }), fc.constantFrom(60, 200, 1000), policy, fc.constantFrom(16, 1000), async (ops, queueLimitMs, p, maxQueuedMessages) => {
        const { socket, sink, metrics, written } = await play(ops, { queueLimitMs, policy: p, maxQueuedMessages });
        sink.close();

        const drops = (await dropped(metrics, 'aborted')) + (await dropped(metrics, 'too_slow')) + (await dropped(metrics, 'client_gone'));
        const fails = (await failures(metrics, 'closed')) + (await failures(metrics, 'backpressure_limit'));
        expect(await pushed(metrics)).toBe(socket.sent.filter((s) => s.isBinary).length - (await failures(metrics, 'backpressure_limit')));
        expect((await pushed(metrics)) + drops + fails).toBe(written);
        expect(await depth(metrics)).toBe(0);
        expect(sink.depth).toBe(0);

        // Whatever left, left in the order it was written.
        const order = socket.sent.map((s) => Number((typeof s.data === 'string' ? s.data : s.data.toString()).slice(1)));
        expect(order).toEqual([...order].sort((a, b) => a - b));
      }),
      { numRuns: 400 },
    );
  });

  it('never loses text or state while the socket accepts it', async () => {
    const keepsSocket = opArb.filter((o) => o.op !== 'close' && o.op !== 'mode' && o.op !== 'end');
    await fc.assert(
      fc.asyncProperty(fc.array(keepsSocket, { maxLength: 80 }), async (ops) => {
        const { socket, sink } = await play(ops, { queueLimitMs: 120 });
        socket.grows = false;
        socket.bufferedAmount = 0;
        sink.drain();
        let n = 0;
        const messages = ops.flatMap((o) => (o.op === 'audio' ? (n++, []) : o.op === 'text' ? [`t${n++}`] : o.op === 'state' ? [`s${n++}`] : []));
        expect(socket.sent.filter((s) => !s.isBinary).map((s) => s.data)).toEqual(messages);
      }),
      { numRuns: 200 },
    );
  });
});
