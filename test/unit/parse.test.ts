import { describe, expect, it } from 'vitest';
import { of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { encodeBinary, type ServerMessage } from '../../src/protocol/xiaozhi.ts';
import { parse } from '../../src/streams/parse.ts';
import type { RawUpstream, UpstreamEvent } from '../../src/streams/events.ts';
import { loadSpeech } from '../../src/sim/speech.ts';

const scheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));

const speech = loadSpeech();
const packet = speech.sentences[0]!.packets[0]!;
const TTS_START = '{"type":"tts","state":"start"}';
const msg = (message: ServerMessage): UpstreamEvent => ({ kind: 'message', message });
const audio = (data: Buffer, arrivedAt: number, durationMs: number): UpstreamEvent => ({ kind: 'audio', data, arrivedAt, durationMs, concealed: false });

/** TOC bytes: config 1 is SILK 20 ms, config 19 CELT 20 ms, code 0 one frame, code 3 a counted number. */
const SILK_20 = Buffer.from([(1 << 3) | 0, 0xff]);
const CELT_40 = Buffer.from([(19 << 3) | 1, 0xff, 0xfe]);

describe('parse', () => {
  it('turns text into message events', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('-a-b-c|', {
        a: TTS_START,
        b: '{"type":"stt","text":"hi"}',
        c: '{"type":"iot","commands":[]}',
      });
      expectObservable(raw.pipe(parse(1, () => 0))).toBe('-a-b-c|', {
        a: msg({ type: 'tts', state: 'start' }),
        b: msg({ type: 'stt', text: 'hi' }),
        c: msg({ type: 'other', original: 'iot', body: { type: 'iot', commands: [] } }),
      });
    });
  });

  it('turns v1 binary into audio timed by the TOC and stamped by the injected clock', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('-a--b---c|', { a: packet, b: SILK_20, c: CELT_40 });
      let clock = 1000;
      const now = () => (clock += 5);
      expectObservable(raw.pipe(parse(1, now))).toBe('-a--b---c|', {
        a: audio(packet, 1005, 60),
        b: audio(SILK_20, 1010, 20),
        c: audio(CELT_40, 1015, 40),
      });
    });
  });

  it('stamps arrival with the virtual time a packet arrives at', () => {
    const ts = scheduler();
    ts.run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('a 59ms b 59ms c|', { a: packet, b: packet, c: packet });
      expectObservable(raw.pipe(parse(1, () => ts.now()))).toBe('a 59ms b 59ms c|', {
        a: audio(packet, 0, 60),
        b: audio(packet, 60, 60),
        c: audio(packet, 120, 60),
      });
    });
  });

  it('hands on the v1 packet itself, not a copy', () => {
    const seen: UpstreamEvent[] = [];
    of<RawUpstream>(packet).pipe(parse(1, () => 0)).subscribe((e) => seen.push(e));
    expect(seen[0]?.kind === 'audio' && seen[0].data).toBe(packet);
  });

  it.each([2, 3] as const)('unwraps v%i binary into audio and JSON payloads into messages', (version) => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('-j-a-t|', {
        j: encodeBinary(version, Buffer.from('{"type":"tts","state":"sentence_start","text":"Hi."}'), 'json', 123),
        a: encodeBinary(version, packet, 'opus', 456),
        t: TTS_START,
      });
      expectObservable(raw.pipe(parse(version, () => 7))).toBe('-j-a-t|', {
        j: msg({ type: 'tts', state: 'sentence_start', text: 'Hi.' }),
        a: audio(packet, 7, 60),
        t: msg({ type: 'tts', state: 'start' }),
      });
    });
  });

  it('turns garbage into invalid events and keeps the stream alive', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('-a-b-c-d-e-f|', {
        a: '{oops',
        b: '[1,2]',
        c: '{"text":"no type"}',
        d: '{"type":"stt","text":5}',
        e: encodeBinary(2, Buffer.from('not json'), 'json'),
        f: TTS_START,
      });
      expectObservable(raw.pipe(parse(2, () => 0))).toBe('-a-b-c-d-e-f|', {
        a: { kind: 'invalid', detail: 'not valid JSON' },
        b: { kind: 'invalid', detail: 'not a JSON object' },
        c: { kind: 'invalid', detail: 'no string "type"' },
        d: { kind: 'invalid', detail: 'stt: no string "text"' },
        e: { kind: 'invalid', detail: 'not valid JSON' },
        f: msg({ type: 'tts', state: 'start' }),
      });
    });
  });

  it.each([2, 3] as const)('turns a v%i frame with a broken header into an invalid event, not an error', (version) => {
    scheduler().run(({ cold, expectObservable }) => {
      const good = encodeBinary(version, packet);
      const raw = cold<RawUpstream>('-a-b-c|', { a: Buffer.from([9]), b: good.subarray(0, good.length - 1), c: good });
      const out = raw.pipe(parse(version, () => 0));
      expectObservable(out).toBe('-a-b-c|', {
        a: { kind: 'invalid', detail: expect.any(String) },
        b: { kind: 'invalid', detail: expect.stringContaining('payload size') },
        c: audio(packet, 0, 60),
      });
    });
  });

  it('gives a packet with an unreadable TOC the previous frame duration, so it stays a frame', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const noCount = Buffer.from([0x03]);
      const empty = Buffer.alloc(0);
      const raw = cold<RawUpstream>('-a-x-b-y-z|', { a: SILK_20, x: noCount, b: CELT_40, y: empty, z: noCount });
      expectObservable(raw.pipe(parse(1, () => 3))).toBe('-a-x-b-y-z|', {
        a: audio(SILK_20, 3, 20),
        x: audio(noCount, 3, 20),
        b: audio(CELT_40, 3, 40),
        y: audio(empty, 3, 40),
        z: audio(noCount, 3, 40),
      });
    });
  });

  it('gives an unreadable first packet the 60 ms servers speak in', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('x|', { x: Buffer.alloc(0) });
      expectObservable(raw.pipe(parse(1, () => 0))).toBe('x|', { x: audio(Buffer.alloc(0), 0, 60) });
    });
  });

  it('remembers the previous duration per subscription, not across them', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const operator = parse(1, () => 0);
      const parsed = cold<RawUpstream>('a-x|', { a: SILK_20, x: Buffer.alloc(0) }).pipe(operator);
      const later = cold<RawUpstream>('---x|', { x: Buffer.alloc(0) }).pipe(operator);
      expectObservable(parsed).toBe('a-x|', { a: audio(SILK_20, 0, 20), x: audio(Buffer.alloc(0), 0, 20) });
      expectObservable(later).toBe('---x|', { x: audio(Buffer.alloc(0), 0, 60) });
    });
  });

  it('passes an upstream error through rather than swallowing it', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const raw = cold<RawUpstream>('a#', { a: TTS_START }, new Error('socket'));
      expectObservable(raw.pipe(parse(1, () => 0))).toBe('a#', { a: msg({ type: 'tts', state: 'start' }) }, new Error('socket'));
    });
  });
});
