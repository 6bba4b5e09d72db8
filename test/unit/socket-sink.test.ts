import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { ClientFrame } from '../../src/protocol/client.ts';
import { createMetrics, type DropReason, type Metrics } from '../../src/observability/metrics.ts';
import { SessionBudget } from '../../src/streams/budget.ts';
import { SocketSink, type ClientSocket, type SinkOptions } from '../../src/transport/socket-sink.ts';

type SendMode = 0 | 1 | 2 | 'throw';

/**
 * A uWS socket stand-in: a settable buffered amount, a record of sends (and of which went out inside
 * each cork call), and a chosen answer to send.
 */
class FakeSocket implements ClientSocket {
  bufferedAmount = 0;
  mode: SendMode = 1;
  /** When set, each accepted send adds its length to the buffered amount, as a socket that stopped reading. */
  grows = false;
  readonly sent: { data: Buffer | string; isBinary: boolean }[] = [];
  readonly ends: { code: number; reason: string }[] = [];
  /** Every send and end the sink tried, thrown ones too, as sentData shows them; an end as END_ATTEMPT. */
  readonly attempted: string[] = [];
  /** One entry per cork call: what was sent inside it, as sentData shows it. */
  readonly corks: string[][] = [];
  touches = 0;
  private corked: string[] | undefined;

  send(data: Buffer | string, isBinary: boolean): number {
    this.touches++;
    this.attempted.push(show(data));
    if (this.mode === 'throw') throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
    this.sent.push({ data, isBinary });
    this.corked?.push(show(data));
    if (this.grows && this.mode !== 2) this.bufferedAmount += data.length;
    return this.mode;
  }

  cork(fn: () => void): void {
    this.touches++;
    const batch: string[] = [];
    this.corks.push(batch);
    this.corked = batch;
    try {
      fn();
    } finally {
      this.corked = undefined;
    }
  }

  getBufferedAmount(): number {
    this.touches++;
    return this.bufferedAmount;
  }

  end(code: number, reason: string): void {
    this.touches++;
    this.attempted.push(END_ATTEMPT);
    if (this.mode === 'throw') throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
    this.ends.push({ code, reason });
  }

  get sentData(): string[] {
    return this.sent.map((s) => show(s.data));
  }
}

const END_ATTEMPT = '<end>';

const show = (data: Buffer | string): string => (typeof data === 'string' ? data : `bin:${data.toString('utf8')}`);

const HIGH_WATER = 1000;
const OVER = HIGH_WATER + 1;

const audio = (name: string, durationMs = 60, arrivedAt = 0): ClientFrame => ({ kind: 'audio', data: Buffer.from(name), arrivedAt, durationMs });
const text = (name: string): ClientFrame => ({ kind: 'text', data: name });
const state = (name: string): ClientFrame => ({ kind: 'state', data: name });

/** `name` padded with dots to `bytes` bytes; `named` reads the name back from what was sent. */
const padded = (name: string, bytes: number): string => name.padEnd(bytes, '.');
const named = (shown: string): string => shown.replace(/^bin:/, '').replace(/\.+$/, '');
const sentNames = (socket: FakeSocket): string[] => socket.sentData.map(named);

/**
 * A sink on a fake socket whose flushes the test runs: `scheduled` holds the flushes the sink asked for,
 * and `endTurn()` runs them, as the microtask queue does at the end of a turn of the event loop.
 */
function setup(options: Partial<SinkOptions> = {}, metrics: Metrics = createMetrics({ defaultMetrics: false })) {
  const socket = new FakeSocket();
  const tooSlow = { calls: 0, gaveUp: 0 };
  const scheduled: (() => void)[] = [];
  const sink = new SocketSink(
    socket,
    {
      highWaterBytes: HIGH_WATER,
      queueLimitMs: 5000,
      maxQueuedMessages: 1000,
      policy: 'drop-oldest',
      budget: new SessionBudget(1024 * 1024),
      codec: 'pcm16',
      transport: 'binary',
      paced: false,
      tooSlowNotice: 'too slow',
      onTooSlow: (what) => (what === 'dropping' ? tooSlow.calls++ : tooSlow.gaveUp++),
      now: () => 0,
      schedule: (flush) => scheduled.push(flush),
      ...options,
    },
    metrics,
  );
  const endTurn = (): void => {
    while (scheduled.length > 0) scheduled.shift()!();
  };
  return { socket, metrics, sink, tooSlow, scheduled, endTurn };
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

/** A histogram's _sum. */
async function sumOf(metric: Readable): Promise<number | undefined> {
  const { values } = await metric.get();
  return values.find((v) => v.metricName?.endsWith('_sum'))?.value;
}

const dropped = (m: Metrics, reason: DropReason) => read(m.framesDropped, { reason });
const overflows = (m: Metrics) => read(m.bufferOverflows, { buffer: 'client_queue' });
const failures = (m: Metrics, reason: string) => read(m.sendFailures, { reason });
const pushed = (m: Metrics) => read(m.framesPushed);
const depth = (m: Metrics) => read(m.queueDepth);

describe('SocketSink turns', () => {
  it('sends nothing before the turn ends, and does not even look at the socket', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('hello'));
    expect(socket.sent).toEqual([]);
    expect(socket.touches).toBe(0);
    expect(sink.depth).toBe(3);
    expect(await depth(metrics)).toBe(3);
    endTurn();
    expect(socket.sentData).toEqual(['speaking', 'bin:a1', 'hello']);
    expect(sink.depth).toBe(0);
  });

  it('sends the frames written in one turn inside one cork call, in order', () => {
    const { socket, sink, endTurn } = setup();
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('hello'));
    sink.write(audio('a2'));
    endTurn();
    expect(socket.corks).toEqual([['speaking', 'bin:a1', 'hello', 'bin:a2']]);
    sink.write(audio('a3'));
    sink.write(state('ready'));
    endTurn();
    expect(socket.corks).toEqual([['speaking', 'bin:a1', 'hello', 'bin:a2'], ['bin:a3', 'ready']]);
    expect(socket.sentData).toEqual(['speaking', 'bin:a1', 'hello', 'bin:a2', 'bin:a3', 'ready']);
  });

  it('schedules one flush per turn, not one per frame', () => {
    const { socket, sink, scheduled, endTurn } = setup();
    for (let i = 0; i < 5; i++) sink.write(audio(`a${i}`));
    sink.write(text('t'));
    expect(scheduled).toHaveLength(1);
    endTurn();
    expect(socket.corks).toHaveLength(1);
    // Frames left waiting for the socket do not keep a flush scheduled; the next turn's write asks again.
    socket.bufferedAmount = OVER;
    sink.write(audio('b1'));
    sink.write(audio('b2'));
    expect(scheduled).toHaveLength(1);
    endTurn();
    expect(sink.depth).toBe(2);
    sink.write(audio('b3'));
    expect(scheduled).toHaveLength(1);
    endTurn();
    // A discard is not a frame to send: it schedules nothing.
    sink.write({ kind: 'discard' });
    expect(scheduled).toHaveLength(0);
  });

  it('schedules nothing once closed, and a flush scheduled before the close does nothing', async () => {
    const { socket, sink, metrics, scheduled, endTurn } = setup();
    sink.write(audio('a1'));
    sink.write(text('t'));
    expect(scheduled).toHaveLength(1);
    sink.close();
    expect(await dropped(metrics, 'client_gone')).toBe(1);
    endTurn();
    sink.write(audio('a2'));
    expect(scheduled).toHaveLength(0);
    expect(socket.touches).toBe(0);
    expect(await dropped(metrics, 'client_gone')).toBe(2);
  });

  it.each(['drop-oldest', 'close'] as const)(
    'sends whole a burst longer than queueLimitMs written in one turn to a socket under the mark (policy %s)',
    async (policy) => {
      const { socket, sink, metrics, tooSlow, endTurn } = setup({ queueLimitMs: 120, policy });
      const names = Array.from({ length: 10 }, (_, i) => `a${i}`);
      for (const n of names) sink.write(audio(n));
      endTurn();
      expect(socket.sentData).toEqual(names.map((n) => `bin:${n}`));
      expect(socket.corks).toHaveLength(1);
      expect(sink.depth).toBe(0);
      expect(await dropped(metrics, 'too_slow')).toBe(0);
      expect(await pushed(metrics)).toBe(10);
      expect(tooSlow).toEqual({ calls: 0, gaveUp: 0 });
    },
  );

  it('applies queueLimitMs to what the socket could not take of a burst, not to what it took', async () => {
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ queueLimitMs: 120 });
    socket.grows = true;
    socket.bufferedAmount = HIGH_WATER - 3;
    for (let i = 1; i <= 10; i++) sink.write(audio(`a${i}`));
    endTurn();
    // a1 takes the socket to the mark and a2 above it; of the 480 ms left waiting, the newest 120 ms stay,
    // behind the notice that took a3's place.
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2']);
    expect(sink.depth).toBe(3);
    expect(await dropped(metrics, 'too_slow')).toBe(6);
    expect(tooSlow).toEqual({ calls: 1, gaveUp: 0 });
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2', 'too slow', 'bin:a9', 'bin:a10']);
  });

  it('sums the queue depth of every live sink at scrape time, and forgets a closed one', async () => {
    const one = setup();
    const two = setup({}, one.metrics);
    one.socket.bufferedAmount = OVER;
    two.socket.bufferedAmount = OVER;
    one.sink.write(audio('a1'));
    one.sink.write(audio('a2'));
    two.sink.write(text('t'));
    one.endTurn();
    two.endTurn();
    expect(await depth(one.metrics)).toBe(3);
    one.sink.close();
    expect(await depth(one.metrics)).toBe(1);
    two.socket.bufferedAmount = 0;
    two.sink.drain();
    expect(await depth(one.metrics)).toBe(0);
  });
});

describe('SocketSink under the high-water mark', () => {
  it('sends frames at the end of the turn, audio as binary and text as text', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('hello'));
    sink.write(audio('a2'));
    endTurn();
    expect(socket.sent).toEqual([
      { data: 'speaking', isBinary: false },
      { data: Buffer.from('a1'), isBinary: true },
      { data: 'hello', isBinary: false },
      { data: Buffer.from('a2'), isBinary: true },
    ]);
    expect(sink.depth).toBe(0);
    expect(await read(metrics.framesPushed, { codec: 'pcm16', transport: 'binary' })).toBe(2);
    expect(await depth(metrics)).toBe(0);
    expect(await read(metrics.sessionQueueDepth)).toBe(0);
  });

  it('sends json-transport audio (a string) as a text frame', () => {
    const { socket, sink, endTurn } = setup({ transport: 'json' });
    sink.write({ kind: 'audio', data: '{"type":"audio_frame","seq":0,"data":""}', arrivedAt: 0, durationMs: 60 });
    endTurn();
    expect(socket.sent[0]!.isBinary).toBe(false);
  });

  it('counts a frame the socket only buffered (send answers 0) as pushed', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.mode = 0;
    sink.write(audio('a'));
    endTurn();
    expect(await pushed(metrics)).toBe(1);
  });

  it('sends at exactly the high-water mark, which is not above it', () => {
    const { socket, sink, endTurn } = setup();
    socket.bufferedAmount = HIGH_WATER;
    sink.write(audio('a'));
    endTurn();
    expect(socket.sent).toHaveLength(1);
  });

  it('times the first audio of a reply from the end of input, and each frame from its arrival', async () => {
    let clock = 1000;
    const { sink, metrics, endTurn } = setup({ now: () => clock });
    sink.markInputEnded(400);
    sink.write(audio('a', 60, 900));
    endTurn();
    clock = 1060;
    sink.write(audio('b', 60, 1050));
    endTurn();
    expect(await sumOf(metrics.timeToFirstAudio)).toBeCloseTo(0.6);
    expect(await read(metrics.timeToFirstAudio)).toBe(1);
    expect(await sumOf(metrics.frameLatency)).toBeCloseTo(0.1 + 0.01);
    expect(await sumOf(metrics.frameInterval)).toBeCloseTo(0.06);
  });

  it("counts an unpaced session's frame latency as lateness too, and a realtime-paced one's not at all", async () => {
    let clock = 1000;
    const unpaced = setup({ now: () => clock });
    const paced = setup({ now: () => clock, paced: true });
    for (const { sink, endTurn } of [unpaced, paced]) {
      sink.write(audio('a', 60, 900));
      endTurn();
    }
    clock = 1300;
    expect(await sumOf(unpaced.metrics.frameLateness)).toBeCloseTo(0.1);
    expect(await read(paced.metrics.frameLatency)).toBe(1);
    expect(await read(paced.metrics.frameLateness)).toBe(0);
  });

  it('keeps frames that waited for a slow client out of frame_lateness_seconds, and counts them again once its queue is empty', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a'));
    endTurn();
    socket.bufferedAmount = 0;
    sink.drain();
    sink.write(audio('b'));
    endTurn();
    expect(await read(metrics.frameLatency)).toBe(2);
    expect(await read(metrics.frameLateness)).toBe(1);
  });

  it('measures frame intervals within a reply only, even when the reply boundary waited in the queue', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    for (const frame of [audio('a1'), audio('a2'), state('ready'), state('speaking'), audio('b1')]) sink.write(frame);
    endTurn();
    socket.bufferedAmount = 0;
    sink.drain();
    expect(await read(metrics.frameInterval)).toBe(1);
  });

  it('measures frame intervals within a reply only when the boundary leaves in the same turn', async () => {
    const { sink, metrics, endTurn } = setup();
    for (const frame of [audio('a1'), audio('a2'), state('ready'), state('speaking'), audio('b1')]) sink.write(frame);
    endTurn();
    expect(await read(metrics.frameInterval)).toBe(1);
  });
});

describe('SocketSink above the high-water mark', () => {
  it('queues frames in order and sends nothing', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t'));
    sink.write(audio('a2'));
    endTurn();
    expect(socket.sent).toEqual([]);
    expect(sink.depth).toBe(3);
    expect(await depth(metrics)).toBe(3);
    expect(await read(metrics.backpressureEvents)).toBe(1);
    // Observed once, when the flush left the three waiting.
    expect(await read(metrics.sessionQueueDepth)).toBe(1);
    expect(await sumOf(metrics.sessionQueueDepth)).toBe(3);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1', 't', 'bin:a2']);
  });

  it('never lets a later frame overtake waiting ones once the socket has room', () => {
    const { socket, sink, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    endTurn();
    socket.bufferedAmount = 0;
    sink.write(audio('a2'));
    expect(socket.sent).toEqual([]);
    endTurn();
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2']);

    // And when the drain comes before the end of the turn, it takes the frames of this turn along, in order.
    socket.bufferedAmount = OVER;
    sink.write(audio('b1'));
    endTurn();
    socket.bufferedAmount = 0;
    sink.write(audio('b2'));
    sink.drain();
    endTurn();
    expect(socket.sentData).toEqual(['bin:a1', 'bin:a2', 'bin:b1', 'bin:b2']);
  });

  it('drain sends nothing while the socket is still above the mark', () => {
    const { socket, sink, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    endTurn();
    sink.drain();
    expect(socket.sent).toEqual([]);
    expect(sink.depth).toBe(1);
  });

  it('drain sends in order as the buffered amount falls, stopping at the mark', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    const names = ['a1', 'a2', 'a3', 'a4', 'a5', 'a6'];
    for (const n of names) sink.write(audio(n));
    endTurn();
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
    // The queue depth was observed when the flush left 6 waiting and when the first drain left 4, not after the last.
    expect(await read(metrics.sessionQueueDepth)).toBe(2);
    expect(await sumOf(metrics.sessionQueueDepth)).toBe(10);
  });

  it('counts one backpressure event per crossing of the mark', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a'));
    sink.write(audio('b'));
    endTurn();
    sink.drain();
    socket.bufferedAmount = 0;
    sink.drain();
    socket.bufferedAmount = OVER;
    sink.write(audio('c'));
    endTurn();
    expect(await read(metrics.backpressureEvents)).toBe(2);
  });

  it('never drops text, however full the queue', async () => {
    const { socket, sink, metrics, endTurn } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    const texts: string[] = [];
    for (let i = 0; i < 50; i++) {
      sink.write(audio(`a${i}`));
      texts.push(`t${i}`);
      sink.write(text(`t${i}`));
      endTurn();
    }
    socket.bufferedAmount = 0;
    sink.drain();
    // Every text leaves, in order; the one extra is the notice in the place of a0, the first audio dropped.
    expect(socket.sentData.filter((d) => !d.startsWith('bin:'))).toEqual(['too slow', ...texts]);
    expect(socket.sentData.filter((d) => d.startsWith('bin:'))).toEqual(['bin:a48', 'bin:a49']);
    expect(await dropped(metrics, 'too_slow')).toBe(48);
  });
});

describe('SocketSink queue limit', () => {
  it('holds at most queueLimitMs of waiting audio, dropping the oldest as too_slow', async () => {
    const { socket, sink, metrics, endTurn } = setup({ queueLimitMs: 300 });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 8; i++) {
      sink.write(audio(`a${i}`));
      endTurn();
    }
    // Five frames of audio, and the notice in a1's place.
    expect(sink.depth).toBe(6);
    expect(await dropped(metrics, 'too_slow')).toBe(3);
    expect(await depth(metrics)).toBe(6);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['too slow', 'bin:a4', 'bin:a5', 'bin:a6', 'bin:a7', 'bin:a8']);
  });

  it('holds at most queueLimitMs of the audio a turn left waiting, however much the turn wrote', async () => {
    const { socket, sink, metrics, endTurn } = setup({ queueLimitMs: 300 });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 8; i++) sink.write(audio(`a${i}`));
    // Until the turn ends the frames are not waiting for the socket yet: they have not met it.
    expect(sink.depth).toBe(8);
    expect(await dropped(metrics, 'too_slow')).toBe(0);
    endTurn();
    expect(sink.depth).toBe(6);
    expect(await dropped(metrics, 'too_slow')).toBe(3);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['too slow', 'bin:a4', 'bin:a5', 'bin:a6', 'bin:a7', 'bin:a8']);
  });

  it('counts the queue in milliseconds, not frames', async () => {
    const { socket, sink, metrics, endTurn } = setup({ queueLimitMs: 300 });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 15; i++) sink.write(audio(`a${i}`, 20));
    endTurn();
    expect(sink.depth).toBe(15);
    sink.write(audio('long', 120));
    endTurn();
    expect(await dropped(metrics, 'too_slow')).toBe(6);
    // 180 ms of short frames and the long one, behind the notice.
    expect(sink.depth).toBe(11);
  });

  it('keeps the newest frame even when it alone is longer than queueLimitMs', async () => {
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ queueLimitMs: 50 });
    socket.bufferedAmount = OVER;
    sink.write(audio('a1', 60));
    endTurn();
    expect(sink.depth).toBe(1);
    expect(await dropped(metrics, 'too_slow')).toBe(0);
    sink.write(audio('a2', 60));
    endTurn();
    // a2 and the notice in a1's place.
    expect(sink.depth).toBe(2);
    expect(await dropped(metrics, 'too_slow')).toBe(1);
    expect(tooSlow.gaveUp).toBe(0);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['too slow', 'bin:a2']);
  });

  it('drops the oldest audio around queued text, which keeps its place', () => {
    const { socket, sink, endTurn } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    sink.write(text('t0'));
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    sink.write(audio('a3'));
    endTurn();
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['t0', 'too slow', 't1', 'bin:a2', 'bin:a3']);
  });

  it('calls onTooSlow once per reply, and again in the next reply (after a state frame)', () => {
    const { socket, sink, tooSlow, endTurn } = setup({ queueLimitMs: 60 });
    socket.bufferedAmount = OVER;
    for (let i = 0; i < 10; i++) {
      sink.write(audio(`a${i}`));
      endTurn();
    }
    expect(tooSlow.calls).toBe(1);
    // As the session does at the end of input: the next reply begins, behind a state frame.
    sink.markInputEnded(0);
    sink.write(state('processing'));
    expect(tooSlow.calls).toBe(1);
    for (let i = 0; i < 10; i++) {
      sink.write(audio(`b${i}`));
      endTurn();
    }
    expect(tooSlow.calls).toBe(2);
  });

  it('puts a text notice in the place of the first audio frame a reply drops, once per reply, and again in the next reply (after a state frame)', async () => {
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    for (const frame of [audio('a1'), text('t1'), audio('a2'), audio('a3'), audio('a4')]) sink.write(frame);
    endTurn();
    // a1 and a2 go: the notice stands where a1 stood, and a2, dropped later in the reply, just goes.
    expect(sink.depth).toBe(4);
    expect(tooSlow.calls).toBe(1);
    sink.write(audio('a5'));
    endTurn();
    // A drop in a later turn of the same reply: no second notice.
    expect(sink.depth).toBe(4);
    expect(tooSlow.calls).toBe(1);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['too slow', 't1', 'bin:a4', 'bin:a5']);

    // The next reply, begun as the session begins one: markInputEnded, then a state frame.
    sink.markInputEnded(0);
    socket.bufferedAmount = OVER;
    sink.write(state('processing'));
    for (const n of ['b1', 'b2', 'b3']) sink.write(audio(n));
    endTurn();
    sink.write(audio('b4'));
    endTurn();
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['too slow', 't1', 'bin:a4', 'bin:a5', 'processing', 'too slow', 'bin:b3', 'bin:b4']);
    // The notice is a text frame, and the audio it replaced still counts as dropped, not pushed.
    expect(socket.sent.filter((s) => s.data === 'too slow').every((s) => !s.isBinary)).toBe(true);
    expect(tooSlow).toEqual({ calls: 2, gaveUp: 0 });
    expect(await dropped(metrics, 'too_slow')).toBe(5);
    expect(await pushed(metrics)).toBe(4);
  });

  it('does not call onTooSlow while nothing is dropped', () => {
    const { socket, sink, tooSlow, endTurn } = setup({ queueLimitMs: 600 });
    socket.bufferedAmount = OVER;
    for (let i = 0; i < 10; i++) {
      sink.write(audio(`a${i}`));
      endTurn();
    }
    expect(tooSlow.calls).toBe(0);
  });
});

describe('SocketSink dropAudio', () => {
  it('removes every queued audio frame at once and keeps text in order', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    sink.write(audio('a3'));
    sink.write(text('t2'));
    endTurn();
    expect(sink.dropAudio('aborted')).toBe(3);
    expect(sink.depth).toBe(3);
    expect(await dropped(metrics, 'aborted')).toBe(3);
    expect(await depth(metrics)).toBe(3);
    sink.write(state('ready'));
    socket.bufferedAmount = 0;
    sink.drain();
    endTurn();
    expect(socket.sentData).toEqual(['speaking', 't1', 't2', 'ready']);
  });

  it('removes the audio written earlier in the same turn too, before it leaves', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    expect(sink.dropAudio('aborted')).toBe(2);
    sink.write(state('ready'));
    endTurn();
    expect(socket.sentData).toEqual(['t1', 'ready']);
    expect(await dropped(metrics, 'aborted')).toBe(2);
    expect(await pushed(metrics)).toBe(0);
  });

  it('answers 0 and counts nothing when no audio waits', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    expect(sink.dropAudio('aborted')).toBe(0);
    sink.write(audio('a'));
    endTurn();
    expect(sink.dropAudio('aborted')).toBe(0);
    socket.bufferedAmount = OVER;
    sink.write(text('t'));
    endTurn();
    expect(sink.dropAudio('aborted')).toBe(0);
    expect(sink.depth).toBe(1);
    expect(await dropped(metrics, 'aborted')).toBe(0);
  });

  it('leaves the sink working after a partial drain', () => {
    const { socket, sink, endTurn } = setup();
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    endTurn();
    socket.grows = true;
    socket.bufferedAmount = HIGH_WATER - 1;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1']);
    expect(sink.dropAudio('aborted')).toBe(2);
    socket.bufferedAmount = 0;
    sink.write(audio('b1'));
    endTurn();
    expect(socket.sentData).toEqual(['bin:a1', 'bin:b1']);
  });
});

describe('SocketSink send failures', () => {
  it('counts send result 2 as a backpressure_limit failure, not a push', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.mode = 2;
    sink.write(audio('a'));
    endTurn();
    expect(await failures(metrics, 'backpressure_limit')).toBe(1);
    expect(await pushed(metrics)).toBe(0);
  });

  it('counts a throwing socket as a closed failure and does not throw', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.mode = 'throw';
    expect(() => sink.write(audio('a'))).not.toThrow();
    expect(() => sink.write(text('t'))).not.toThrow();
    expect(() => endTurn()).not.toThrow();
    expect(await failures(metrics, 'closed')).toBe(1);
    expect(await pushed(metrics)).toBe(0);
  });

  it('counts failures met while draining', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    endTurn();
    socket.bufferedAmount = 0;
    socket.mode = 'throw';
    expect(() => sink.drain()).not.toThrow();
    expect(await failures(metrics, 'closed')).toBe(3);
    expect(await depth(metrics)).toBe(0);
  });
});

describe('SocketSink close', () => {
  it('drops queued audio as client_gone, empties the queue, and never touches the socket again', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t'));
    sink.write(audio('a2'));
    endTurn();
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
    endTurn();
    sink.close();
    expect(socket.touches).toBe(touches);
    expect(socket.sent).toEqual([]);
    expect(await dropped(metrics, 'client_gone')).toBe(3);
    expect(await dropped(metrics, 'aborted')).toBe(0);
  });
});

describe('SocketSink in-band control frames', () => {
  it('treats a discard frame as dropAudio(aborted), keeping messages in order', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a2'));
    endTurn();
    sink.write({ kind: 'discard' });
    sink.write(state('ready'));
    expect(await dropped(metrics, 'aborted')).toBe(2);
    endTurn();
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['t1', 'ready']);
  });

  it('ends the socket at the end of the turn when nothing waits, and touches it no more', () => {
    const { socket, sink, endTurn } = setup();
    sink.write({ kind: 'end', code: 1000, reason: 'bye' });
    expect(socket.ends).toEqual([]);
    endTurn();
    expect(socket.ends).toEqual([{ code: 1000, reason: 'bye' }]);
    const touches = socket.touches;
    sink.write(text('late'));
    sink.drain();
    endTurn();
    expect(socket.touches).toBe(touches);
  });

  it('ends the socket only after everything written before the end, and drops audio written after it', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write({ kind: 'end', code: 4002, reason: 'upstream lost' });
    sink.write(audio('a2'));
    endTurn();
    expect(socket.ends).toEqual([]);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1', 't1']);
    expect(socket.ends).toEqual([{ code: 4002, reason: 'upstream lost' }]);
    expect(await dropped(metrics, 'client_gone')).toBe(1);
    expect(await depth(metrics)).toBe(0);
  });

  it('ends the socket after the frames before the end in the same turn, and drops the audio after it', async () => {
    const { socket, sink, metrics, endTurn } = setup();
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write({ kind: 'end', code: 4002, reason: 'upstream lost' });
    sink.write(audio('a2'));
    endTurn();
    expect(socket.corks).toEqual([['bin:a1', 't1']]);
    expect(socket.ends).toEqual([{ code: 4002, reason: 'upstream lost' }]);
    expect(await dropped(metrics, 'client_gone')).toBe(1);
    expect(await pushed(metrics)).toBe(1);
  });

  it('does not throw when ending a socket that is already closed', () => {
    const { socket, sink, endTurn } = setup();
    socket.mode = 'throw';
    expect(() => sink.write({ kind: 'end', code: 1000, reason: '' })).not.toThrow();
    expect(() => endTurn()).not.toThrow();
  });
});

describe('SocketSink slow-client policy close', () => {
  it('gives up instead of dropping: all the audio left waiting, the newest too, counts as too_slow', async () => {
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ policy: 'close', queueLimitMs: 180 });
    socket.bufferedAmount = OVER;
    for (const n of ['a1', 'a2', 'a3']) sink.write(audio(n));
    sink.write(text('t'));
    endTurn();
    expect(tooSlow.gaveUp).toBe(0);
    sink.write(audio('a4'));
    endTurn();
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 1 });
    expect(await dropped(metrics, 'too_slow')).toBe(4);
    expect(await depth(metrics)).toBe(0);
    const touches = socket.touches;
    socket.bufferedAmount = 0;
    sink.drain();
    sink.write(audio('a5'));
    endTurn();
    expect(socket.touches).toBe(touches);
    expect(socket.sent).toEqual([]);
    expect(await dropped(metrics, 'client_gone')).toBe(1);
  });

  it('gives up when more messages wait than maxQueuedMessages, since messages are never dropped', async () => {
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ maxQueuedMessages: 16 });
    socket.bufferedAmount = OVER;
    sink.write(audio('a'));
    for (let i = 0; i < 16; i++) sink.write(text(`t${i}`));
    endTurn();
    expect(tooSlow.gaveUp).toBe(0);
    sink.write(text('t16'));
    endTurn();
    expect(tooSlow.gaveUp).toBe(1);
    expect(await dropped(metrics, 'too_slow')).toBe(1);
    expect(sink.depth).toBe(0);
  });

  it('does not count against maxQueuedMessages the messages a turn sent', () => {
    const { sink, socket, tooSlow, endTurn } = setup({ maxQueuedMessages: 16 });
    for (let i = 0; i < 40; i++) sink.write(text(`t${i}`));
    endTurn();
    expect(tooSlow.gaveUp).toBe(0);
    expect(socket.sent).toHaveLength(40);
  });
});

describe('SocketSink byte budget', () => {
  /** Ten bytes of audio: five fill a budget of 50; the too_slow notice is 8. */
  const ten = (name: string): ClientFrame => audio(padded(name, 10));

  it("never lets a slow client's queue hold more bytes than the budget allows, dropping the oldest audio as too_slow behind the notice", async () => {
    const budget = new SessionBudget(50);
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    const heldAfterEachTurn: number[] = [];
    for (let i = 1; i <= 8; i++) {
      sink.write(ten(`f${i}`));
      endTurn();
      heldAfterEachTurn.push(budget.held);
    }
    // At f6 the queue is over: f1 goes, the notice in its place (8 bytes for f1's 10), then f2 too.
    // From then on each frame pushes out one: the notice and four frames, 48 bytes.
    expect(heldAfterEachTurn).toEqual([10, 20, 30, 40, 50, 48, 48, 48]);
    expect(await dropped(metrics, 'too_slow')).toBe(4);
    expect(tooSlow).toEqual({ calls: 1, gaveUp: 0 });
    // One overflow for each turn whose bound dropped, however many it dropped.
    expect(await overflows(metrics)).toBe(3);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(sentNames(socket)).toEqual(['too slow', 'f5', 'f6', 'f7', 'f8']);
    expect(budget.held).toBe(0);
  });

  it('leaves what the pacer holds to the pacer: bytes taken elsewhere in the session make the sink neither drop audio nor give up', async () => {
    const budget = new SessionBudget(100);
    budget.take(90);
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget, policy: 'close' });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 5; i++) {
      sink.write(ten(`f${i}`));
      endTurn();
    }

    expect(budget.used).toBe(140);
    expect(await dropped(metrics, 'too_slow')).toBe(0);
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 0 });
  });

  it('counts the bytes the upstream socket has not yet written against the queue, so that they make it drop audio', async () => {
    const budget = new SessionBudget(100);
    let upstream = 50;
    budget.upstreamBytes = () => upstream;
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 5; i++) {
      sink.write(ten(`f${i}`));
      endTurn();
    }
    // 50 queued and 50 upstream: exactly the budget.
    expect(await dropped(metrics, 'too_slow')).toBe(0);
    // f6 takes it to 110: f1 goes for the notice (108), then f2 (98).
    sink.write(ten('f6'));
    endTurn();
    expect(await dropped(metrics, 'too_slow')).toBe(2);
    expect(budget.used).toBe(98);
    sink.write(ten('f7'));
    endTurn();
    expect(await dropped(metrics, 'too_slow')).toBe(3);
    expect(budget.used).toBe(98);
    // Once the upstream has written its bytes, the queue has room again.
    upstream = 0;
    sink.write(ten('f8'));
    endTurn();
    expect(await dropped(metrics, 'too_slow')).toBe(3);
    expect(budget.used).toBe(58);
    expect(tooSlow).toEqual({ calls: 1, gaveUp: 0 });
    expect(await overflows(metrics)).toBe(2);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(sentNames(socket)).toEqual(['too slow', 'f4', 'f5', 'f6', 'f7', 'f8']);
  });

  it('gives up, never dropping text, when text alone is over the budget', async () => {
    const budget = new SessionBudget(20);
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    sink.write(text(padded('t1', 8)));
    sink.write(text(padded('t2', 8)));
    endTurn();
    // 16 bytes of text wait within the budget, and all of it leaves.
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 0 });
    socket.bufferedAmount = 0;
    sink.drain();
    expect(sentNames(socket)).toEqual(['t1', 't2']);

    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text(padded('t3', 8)));
    sink.write(text(padded('t4', 8)));
    sink.write(text(padded('t5', 8)));
    endTurn();
    // 24 bytes of text: no text is dropped to fit, and no audio dropped could make it fit; the owner closes with 4003.
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 1 });
    expect(sink.depth).toBe(0);
    expect(budget.held).toBe(0);
    expect(await dropped(metrics, 'too_slow')).toBe(1);
    expect(await overflows(metrics)).toBe(1);
    const touches = socket.touches;
    socket.bufferedAmount = 0;
    sink.drain();
    sink.write(text('t6'));
    endTurn();
    expect(socket.touches).toBe(touches);
    expect(sentNames(socket)).toEqual(['t1', 't2']);
  });

  it('gives up instead of dropping audio over the byte budget under policy close', async () => {
    const budget = new SessionBudget(50);
    const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget, policy: 'close' });
    socket.bufferedAmount = OVER;
    for (let i = 1; i <= 5; i++) {
      sink.write(ten(`f${i}`));
      endTurn();
    }
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 0 });
    // 300 ms of audio, far under queueLimitMs: the bytes alone are over.
    sink.write(ten('f6'));
    endTurn();
    expect(tooSlow).toEqual({ calls: 0, gaveUp: 1 });
    expect(await dropped(metrics, 'too_slow')).toBe(6);
    expect(await overflows(metrics)).toBe(1);
    expect(sink.depth).toBe(0);
    expect(budget.held).toBe(0);
    expect(socket.sent).toEqual([]);
  });

  it('counts one client_queue overflow per turn whose bound dropped audio, and none while nothing is over', async () => {
    const { socket, sink, metrics, endTurn } = setup({ queueLimitMs: 120 });
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(audio('a2'));
    endTurn();
    expect(await overflows(metrics)).toBe(0);
    // Four over the limit in one turn: one overflow.
    for (const n of ['a3', 'a4', 'a5', 'a6']) sink.write(audio(n));
    endTurn();
    expect(await dropped(metrics, 'too_slow')).toBe(4);
    expect(await overflows(metrics)).toBe(1);
    sink.write(audio('a7'));
    endTurn();
    expect(await overflows(metrics)).toBe(2);
    // A drain is not a bound: it counts nothing.
    socket.bufferedAmount = 0;
    sink.drain();
    expect(await overflows(metrics)).toBe(2);
    expect(await read(metrics.bufferOverflows)).toBe(2);
  });

  it('takes the bytes of each frame written, and gives them back as each is sent', () => {
    const budget = new SessionBudget(1024 * 1024);
    const { socket, sink, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('hello'));
    sink.write(audio('a2'));
    // Taken as written, before the turn ends.
    expect(budget.held).toBe(8 + 2 + 5 + 2);
    endTurn();
    expect(budget.held).toBe(17);
    socket.grows = true;
    socket.bufferedAmount = HIGH_WATER - 9;
    sink.drain();
    // speaking takes the socket to one byte under the mark, a1 above it.
    expect(socket.sentData).toEqual(['speaking', 'bin:a1']);
    expect(budget.held).toBe(5 + 2);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(budget.held).toBe(0);
    // Sent straight in the turn that wrote it, it is given back all the same.
    sink.write(audio('a3'));
    endTurn();
    expect(budget.held).toBe(0);
  });

  it('gives back exactly the bytes of the audio an abort drops, keeping the bytes of the text that stays', () => {
    const budget = new SessionBudget(1024 * 1024);
    const { socket, sink, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    sink.write(state('speaking'));
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(audio('a22'));
    endTurn();
    expect(budget.held).toBe(8 + 2 + 2 + 3);
    expect(sink.dropAudio('aborted')).toBe(2);
    expect(budget.held).toBe(8 + 2);
    sink.write(audio('b1'));
    sink.write(audio('b22'));
    expect(budget.held).toBe(15);
    sink.write({ kind: 'discard' });
    expect(budget.held).toBe(10);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(budget.held).toBe(0);
  });

  it('gives back every byte still waiting when it closes, and takes none after', () => {
    const budget = new SessionBudget(1024 * 1024);
    const { socket, sink, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write(text('t1'));
    sink.write(state('ready'));
    endTurn();
    expect(budget.held).toBe(2 + 2 + 5);
    sink.close();
    expect(budget.held).toBe(0);
    sink.write(audio('a2'));
    sink.write(text('t2'));
    expect(budget.held).toBe(0);
  });

  it('gives back every byte waiting behind an end when the end closes the sink', () => {
    const budget = new SessionBudget(1024 * 1024);
    const { socket, sink, endTurn } = setup({ budget });
    socket.bufferedAmount = OVER;
    sink.write(audio('a1'));
    sink.write({ kind: 'end', code: 1000, reason: 'bye' });
    sink.write(audio('a2'));
    sink.write(text('t1'));
    endTurn();
    expect(budget.held).toBe(2 + 2 + 2);
    socket.bufferedAmount = 0;
    sink.drain();
    expect(socket.sentData).toEqual(['bin:a1']);
    expect(socket.ends).toHaveLength(1);
    expect(budget.held).toBe(0);
  });
});

type Op =
  | { op: 'audio'; durationMs: number }
  | { op: 'text' }
  | { op: 'state' }
  | { op: 'endTurn' }
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
  { arbitrary: fc.constant({ op: 'endTurn' as const }), weight: 4 },
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

/**
 * Plays a list of operations against a fresh sink, turns ending where the list says, checking after
 * each that the gauge matches the queue and that at most one flush is ever scheduled.
 */
async function play(ops: readonly Op[], options: Partial<SinkOptions>) {
  const fixture = setup(options);
  const { socket, sink, metrics, scheduled, endTurn } = fixture;
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
      case 'endTurn':
        endTurn();
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
    expect(scheduled.length).toBeLessThanOrEqual(1);
  }
  return { ...fixture, written };
}

describe('SocketSink invariant', () => {
  it('accounts for every audio frame written: pushed + dropped + failed, and the queue empties on close', async () => {
    const policy = fc.constantFrom<SinkOptions['policy']>('drop-oldest', 'close');
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 120 }), fc.constantFrom(60, 200, 1000), policy, fc.constantFrom(16, 1000), async (ops, queueLimitMs, p, maxQueuedMessages) => {
        const { socket, sink, metrics, tooSlow, written, endTurn } = await play(ops, { queueLimitMs, policy: p, maxQueuedMessages });
        const touches = socket.touches;
        sink.close();
        // A flush still scheduled when the sink closed leaves the socket alone.
        endTurn();
        expect(socket.touches).toBe(touches);

        const drops = (await dropped(metrics, 'aborted')) + (await dropped(metrics, 'too_slow')) + (await dropped(metrics, 'client_gone'));
        const fails = (await failures(metrics, 'closed')) + (await failures(metrics, 'backpressure_limit'));
        expect(await pushed(metrics)).toBe(socket.sent.filter((s) => s.isBinary).length - (await failures(metrics, 'backpressure_limit')));
        expect((await pushed(metrics)) + drops + fails).toBe(written);
        expect(await depth(metrics)).toBe(0);
        expect(sink.depth).toBe(0);

        // A too-slow notice is text, at most one per reply that dropped: it is neither pushed nor failed audio.
        const notices = socket.sent.filter((s) => s.data === 'too slow');
        expect(notices.every((s) => !s.isBinary)).toBe(true);
        expect(notices.length).toBeLessThanOrEqual(tooSlow.calls);

        // Whatever left, left in the order it was written (a notice stands in for audio, so has no number).
        const order = socket.sent.filter((s) => s.data !== 'too slow').map((s) => Number((typeof s.data === 'string' ? s.data : s.data.toString()).slice(1)));
        expect(order).toEqual([...order].sort((a, b) => a - b));
      }),
      { numRuns: 400 },
    );
  });

  it('never loses text or state while the socket accepts it', async () => {
    const keepsSocket = opArb.filter((o) => o.op !== 'close' && o.op !== 'mode' && o.op !== 'end');
    await fc.assert(
      fc.asyncProperty(fc.array(keepsSocket, { maxLength: 80 }), async (ops) => {
        const { socket, sink, tooSlow, endTurn } = await play(ops, { queueLimitMs: 120 });
        socket.grows = false;
        socket.bufferedAmount = 0;
        sink.drain();
        endTurn();
        let n = 0;
        const messages = ops.flatMap((o) => (o.op === 'audio' ? (n++, []) : o.op === 'text' ? [`t${n++}`] : o.op === 'state' ? [`s${n++}`] : []));
        // Besides the messages written, the only text is a too-slow notice: one for each reply that dropped audio.
        const texts = socket.sent.filter((s) => !s.isBinary).map((s) => s.data);
        expect(texts.filter((d) => d !== 'too slow')).toEqual(messages);
        expect(texts.filter((d) => d === 'too slow')).toHaveLength(tooSlow.calls);
      }),
      { numRuns: 200 },
    );
  });
});

/** What the test believes waits in the sink: enough to know its bytes, and to match each frame the socket is offered against. */
type Waiting = { name: string; kind: 'audio' | 'message' | 'notice' | 'end'; bytes: number };

describe('SocketSink budget invariant', () => {
  it('holds in the budget exactly the bytes of what waits, after every operation, and nothing after close', async () => {
    // A close or an end ends the story: rare, so that most runs get to fill the budget first.
    const ending = (o: Op) => o.op === 'close' || o.op === 'end';
    const withUpstream = fc.oneof(
      { arbitrary: opArb.filter((o) => !ending(o)), weight: 120 },
      { arbitrary: opArb.filter(ending), weight: 1 },
      { arbitrary: fc.record({ op: fc.constant('upstream' as const), bytes: fc.constantFrom(0, 30, 60, 150) }), weight: 6 },
    );
    const step = fc.record({ o: withUpstream, bytes: fc.integer({ min: 1, max: 40 }) });
    const policy = fc.constantFrom<SinkOptions['policy']>('drop-oldest', 'close');
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 120, size: 'max' }), fc.constantFrom(100, 300, 1024 * 1024), fc.constantFrom(60, 1000), policy, fc.constantFrom(16, 1000), async (steps, limit, queueLimitMs, p, maxQueuedMessages) => {
        const budget = new SessionBudget(limit);
        let upstream = 0;
        budget.upstreamBytes = () => upstream;
        const { socket, sink, metrics, tooSlow, endTurn } = setup({ budget, queueLimitMs, policy: p, maxQueuedMessages });
        let waiting: Waiting[] = [];
        let closed = false;
        let n = 0;
        const add = (kind: 'audio' | 'message', frame: ClientFrame & { data: Buffer | string }) => {
          sink.write(frame);
          if (!closed) waiting.push({ name: named(show(frame.data)), kind, bytes: frame.data.length });
        };
        const close = () => {
          closed = true;
          waiting = [];
        };
        for (const { o, bytes } of steps) {
          // Only the end of a turn runs the bound, so only then is the too_slow count needed.
          const tooSlowBefore = o.op === 'endTurn' ? await dropped(metrics, 'too_slow') : 0;
          const before = { notices: tooSlow.calls, gaveUp: tooSlow.gaveUp, attempted: socket.attempted.length };
          switch (o.op) {
            case 'audio':
              add('audio', { kind: 'audio', data: Buffer.from(padded(`a${n++}`, bytes)), arrivedAt: 0, durationMs: o.durationMs });
              break;
            case 'text':
              add('message', { kind: 'text', data: padded(`t${n++}`, bytes) });
              break;
            case 'state':
              add('message', { kind: 'state', data: padded(`s${n++}`, bytes) });
              break;
            case 'endTurn':
              endTurn();
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
              waiting = waiting.filter((w) => w.kind !== 'audio');
              break;
            case 'discard':
              sink.write({ kind: 'discard' });
              waiting = waiting.filter((w) => w.kind !== 'audio');
              break;
            case 'end':
              sink.write({ kind: 'end', code: 1000, reason: '' });
              if (!closed) waiting.push({ name: END_ATTEMPT, kind: 'end', bytes: 0 });
              break;
            case 'inputEnded':
              sink.markInputEnded(0);
              break;
            case 'close':
              sink.close();
              close();
              break;
            case 'upstream':
              upstream = o.bytes;
              break;
          }
          // What the socket was offered left the queue: a notice, or else the oldest frame waiting (the model
          // keeps frames in the order written, notices at the back). An end closed the sink.
          for (const shown of socket.attempted.slice(before.attempted)) {
            const name = named(shown);
            const i = name === 'too slow' ? waiting.findIndex((w) => w.kind === 'notice') : waiting.findIndex((w) => w.kind !== 'notice');
            expect(waiting[i]?.name, `${shown} was sent, not what waited first`).toBe(name);
            waiting.splice(i, 1);
            if (name === END_ATTEMPT) close();
          }
          // What a bound dropped at the end of the turn: the oldest audio, each notice in the place of one.
          if (tooSlow.gaveUp > before.gaveUp) close();
          else if (o.op === 'endTurn') {
            for (let k = (await dropped(metrics, 'too_slow')) - tooSlowBefore; k > 0; k--) {
              const i = waiting.findIndex((w) => w.kind === 'audio');
              expect(i, 'more audio dropped than waited').toBeGreaterThanOrEqual(0);
              waiting.splice(i, 1);
            }
            for (let k = tooSlow.calls - before.notices; k > 0; k--) waiting.push({ name: 'too slow', kind: 'notice', bytes: 'too slow'.length });
          }
          expect(sink.depth).toBe(waiting.length);
          expect(budget.held).toBe(waiting.reduce((sum, w) => sum + w.bytes, 0));
          expect(budget.used).toBe(budget.held + upstream);
        }
        sink.close();
        expect(budget.held).toBe(0);
        expect(budget.used).toBe(upstream);
      }),
      { numRuns: 400 },
    );
  });
});
