import { describe, expect, it } from 'vitest';
import { TestScheduler } from 'rxjs/testing';
import { from, lastValueFrom, toArray } from 'rxjs';
import type { ClientFrame, ServerMessage } from '../../src/protocol/client.ts';
import type { AudioFrame } from '../../src/streams/events.ts';
import { DISCARD, toClient, type Outbound } from '../../src/streams/to-client.ts';

const scheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const frame = (bytes: number[], arrivedAt = 0, durationMs = 60): AudioFrame => ({
  kind: 'audio',
  data: Buffer.from(bytes),
  arrivedAt,
  durationMs,
  concealed: false,
});
const out = (message: ServerMessage): Outbound => ({ kind: 'message', message });
const render = (items: Outbound[], transport: 'binary' | 'json') => lastValueFrom(from(items).pipe(toClient(transport), toArray()));
/** The socket payload of a frame that has one (audio, text, state). */
const dataOf = (frame: ClientFrame | undefined): Buffer | string => {
  if (frame === undefined || !('data' in frame)) throw new Error(`no data in ${JSON.stringify(frame)}`);
  return frame.data;
};

describe('toClient, binary transport', () => {
  it('passes audio frames through as the same object', async () => {
    const a = frame([1, 2, 3]);
    const b = frame([4, 5], 10, 20);
    const [ra, rb] = await render([a, b], 'binary');
    expect(ra).toBe(a);
    expect(rb).toBe(b);
  });

  it('renders state messages as JSON of kind state', async () => {
    const [rendered] = await render([out({ type: 'state', state: 'speaking' })], 'binary');
    expect(rendered).toEqual({ kind: 'state', data: '{"type":"state","state":"speaking"}' });
  });

  it.each<ServerMessage>([
    { type: 'user_text', text: 'what time is it' },
    { type: 'assistant_text', text: 'It is noon.' },
    { type: 'emotion', emotion: 'happy', emoji: '😊' },
    { type: 'mcp', payload: { jsonrpc: '2.0', id: 1 } },
    { type: 'error', code: 'too_slow', message: 'dropped audio' },
    { type: 'pong', id: [1, 'a'] },
  ])('renders $type as JSON of kind text', async (message) => {
    const [rendered] = await render([out(message)], 'binary');
    expect(rendered?.kind).toBe('text');
    expect(JSON.parse(dataOf(rendered) as string)).toEqual(message);
  });

  it('passes discard and end through as the same objects', async () => {
    const end: Outbound = { kind: 'end', code: 4003, reason: 'client too slow' };
    const [d, e] = await render([DISCARD, end], 'binary');
    expect(d).toBe(DISCARD);
    expect(e).toBe(end);
  });

  it('keeps the order of audio and messages', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = frame([1]);
      const b = frame([2]);
      const source = cold<Outbound>('-s-a-t-b-r|', {
        s: out({ type: 'state', state: 'speaking' }),
        a,
        t: out({ type: 'assistant_text', text: 'Hi.' }),
        b,
        r: out({ type: 'state', state: 'ready' }),
      });
      expectObservable(source.pipe(toClient('binary'))).toBe('-s-a-t-b-r|', {
        s: { kind: 'state', data: '{"type":"state","state":"speaking"}' },
        a,
        t: { kind: 'text', data: '{"type":"assistant_text","text":"Hi."}' },
        b,
        r: { kind: 'state', data: '{"type":"state","state":"ready"}' },
      });
    });
  });
});

describe('toClient, json transport', () => {
  const audioFrames = (frames: ClientFrame[]) =>
    frames.filter((f) => f.kind === 'audio').map((f) => JSON.parse(dataOf(f) as string) as { type: string; seq: number; data: string });

  it('renders audio as audio_frame messages whose base64 data decodes back to the bytes', async () => {
    const bytes = [[0, 1, 2, 255], [], Array.from({ length: 2880 }, (_, i) => i & 0xff)];
    const frames = await render(bytes.map((b) => frame(b)), 'json');
    const messages = audioFrames(frames);
    expect(messages.map((m) => m.type)).toEqual(['audio_frame', 'audio_frame', 'audio_frame']);
    messages.forEach((m, i) => expect([...Buffer.from(m.data, 'base64')]).toEqual(bytes[i]));
  });

  it('keeps audio frames audio, with their arrival and duration, so the sink can queue and drop them', async () => {
    const [rendered] = await render([frame([9], 1234, 40)], 'json');
    expect(rendered).toMatchObject({ kind: 'audio', arrivedAt: 1234, durationMs: 40 });
    expect(typeof dataOf(rendered)).toBe('string');
  });

  it('numbers audio frames 0..n-1, skipping messages', async () => {
    const items: Outbound[] = [out({ type: 'state', state: 'speaking' }), frame([1]), out({ type: 'assistant_text', text: 'x' }), frame([2]), frame([3]), out({ type: 'state', state: 'ready' })];
    const frames = await render(items, 'json');
    expect(frames.map((f) => f.kind)).toEqual(['state', 'audio', 'text', 'audio', 'audio', 'state']);
    expect(audioFrames(frames).map((m) => m.seq)).toEqual([0, 1, 2]);
  });

  it('renders messages exactly as the binary transport does', async () => {
    const items: Outbound[] = [out({ type: 'state', state: 'ready' }), out({ type: 'user_text', text: 'hi' })];
    expect(await render(items, 'json')).toEqual(await render(items, 'binary'));
  });

  it('passes discard and end through untouched, without counting them', async () => {
    const end: Outbound = { kind: 'end', code: 1000, reason: 'bye' };
    const frames = await render([frame([1]), DISCARD, frame([2]), end], 'json');
    expect(frames[1]).toBe(DISCARD);
    expect(frames[3]).toBe(end);
    expect(audioFrames(frames).map((m) => m.seq)).toEqual([0, 1]);
  });

  it('counts per subscription: a second subscription starts again at 0', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const rendered = cold<Outbound>('a-b|', { a: frame([1]), b: frame([2]) }).pipe(toClient('json'));
      const seqs = (n: number) => `{"type":"audio_frame","seq":${n},"data":"${Buffer.from([n + 1]).toString('base64')}"}`;
      const expected = {
        a: { kind: 'audio', data: seqs(0), arrivedAt: 0, durationMs: 60 },
        b: { kind: 'audio', data: seqs(1), arrivedAt: 0, durationMs: 60 },
      };
      expectObservable(rendered).toBe('a-b|', expected);
      expectObservable(rendered, '---^').toBe('---a-b|', expected);
    });
  });

  it('counts each subscription separately even when they overlap', () => {
    scheduler().run(({ hot, expectObservable }) => {
      const source = hot<Outbound>('a-b-c|', { a: frame([1]), b: frame([2]), c: frame([3]) });
      const rendered = source.pipe(toClient('json'));
      const seqOf = (seq: number, byte: number) => ({
        kind: 'audio',
        data: `{"type":"audio_frame","seq":${seq},"data":"${Buffer.from([byte]).toString('base64')}"}`,
        arrivedAt: 0,
        durationMs: 60,
      });
      expectObservable(rendered).toBe('a-b-c|', { a: seqOf(0, 1), b: seqOf(1, 2), c: seqOf(2, 3) });
      expectObservable(rendered, '--^').toBe('--b-c|', { b: seqOf(0, 2), c: seqOf(1, 3) });
    });
  });
});
