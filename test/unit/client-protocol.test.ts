import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  DOWNLINK_RATES,
  MAX_PING_ID_CHARS,
  UPLINK_FRAME_MS,
  negotiate,
  parseClientMessage,
  type ClientHello,
  type ClientMessage,
  type ClientParse,
} from '../../src/protocol/client.ts';

const parse = (value: unknown): ClientParse => parseClientMessage(JSON.stringify(value));

function accepted(value: unknown): ClientMessage {
  const parsed = parse(value);
  if (!parsed.ok) throw new Error(`expected ${JSON.stringify(value)} to be accepted: ${parsed.detail}`);
  return parsed.message;
}

function hello(value: Record<string, unknown> = {}): ClientHello {
  const message = accepted({ type: 'hello', ...value });
  if (message.type !== 'hello') throw new Error('not a hello');
  return message;
}

const DEFAULT_HELLO: ClientHello = {
  type: 'hello',
  version: 1,
  downlink: { codec: 'pcm16', sampleRate: 24000, transport: 'binary' },
  uplink: { codec: 'opus', sampleRate: 16000, frameMs: 60 },
  pacing: { mode: 'none', prebufferMs: 0 },
};

describe('parseClientMessage: hello', () => {
  it('fills every default of PROTOCOL.md into a bare hello', () => {
    expect(hello()).toEqual(DEFAULT_HELLO);
  });

  it('fills the defaults of each section left empty', () => {
    expect(hello({ downlink: {}, uplink: {}, pacing: {} })).toEqual(DEFAULT_HELLO);
  });

  it('fills the missing fields of a section given in part', () => {
    expect(hello({ downlink: { codec: 'opus' } }).downlink).toEqual({ codec: 'opus', sampleRate: 24000, transport: 'binary' });
    expect(hello({ uplink: { frameMs: 20 } }).uplink).toEqual({ codec: 'opus', sampleRate: 16000, frameMs: 20 });
    expect(hello({ pacing: { mode: 'realtime' } }).pacing).toEqual({ mode: 'realtime', prebufferMs: 0 });
  });

  it('accepts the full hello PROTOCOL.md shows, unchanged', () => {
    expect(hello({ ...DEFAULT_HELLO })).toEqual(DEFAULT_HELLO);
  });

  it.each(['pcm16', 'opus'])('accepts downlink codec %s', (codec) => {
    expect(hello({ downlink: { codec } }).downlink.codec).toBe(codec);
  });

  it.each([...DOWNLINK_RATES])('accepts downlink sampleRate %i', (sampleRate) => {
    expect(hello({ downlink: { sampleRate } }).downlink.sampleRate).toBe(sampleRate);
  });

  it.each(['binary', 'json'])('accepts downlink transport %s', (transport) => {
    expect(hello({ downlink: { transport } }).downlink.transport).toBe(transport);
  });

  it.each(['opus', 'pcm16'])('accepts uplink codec %s', (codec) => {
    expect(hello({ uplink: { codec } }).uplink.codec).toBe(codec);
  });

  it.each([...DOWNLINK_RATES])('accepts uplink sampleRate %i', (sampleRate) => {
    expect(hello({ uplink: { sampleRate } }).uplink.sampleRate).toBe(sampleRate);
  });

  it.each([...UPLINK_FRAME_MS])('accepts uplink frameMs %i', (frameMs) => {
    expect(hello({ uplink: { frameMs } }).uplink.frameMs).toBe(frameMs);
  });

  it.each(['none', 'realtime'])('accepts pacing mode %s', (mode) => {
    expect(hello({ pacing: { mode } }).pacing.mode).toBe(mode);
  });

  it.each([0, 1, 60, 500, 5000])('accepts pacing prebufferMs %i', (prebufferMs) => {
    expect(hello({ pacing: { prebufferMs } }).pacing.prebufferMs).toBe(prebufferMs);
  });

  it('ignores unknown fields, as a newer client may send more', () => {
    expect(hello({ future: true, downlink: { codec: 'opus', stereo: true } })).toEqual({
      ...DEFAULT_HELLO,
      downlink: { codec: 'opus', sampleRate: 24000, transport: 'binary' },
    });
  });

  it.each([
    [{ downlink: { sampleRate: 44100 } }, 'downlink.sampleRate'],
    [{ downlink: { sampleRate: '24000' } }, 'downlink.sampleRate'],
    [{ downlink: { codec: 'mp3' } }, 'downlink.codec'],
    [{ downlink: { transport: 'xml' } }, 'downlink.transport'],
    [{ downlink: null }, 'downlink'],
    [{ version: 2 }, 'version'],
    [{ version: '1' }, 'version'],
    [{ pacing: { prebufferMs: -1 } }, 'pacing.prebufferMs'],
    [{ pacing: { prebufferMs: 1.5 } }, 'pacing.prebufferMs'],
    [{ pacing: { prebufferMs: 5001 } }, 'pacing.prebufferMs'],
    [{ pacing: { mode: 'fast' } }, 'pacing.mode'],
    [{ uplink: { frameMs: 30 } }, 'uplink.frameMs'],
    [{ uplink: { sampleRate: 44100 } }, 'uplink.sampleRate'],
    [{ uplink: { codec: 'aac' } }, 'uplink.codec'],
  ])('refuses %j as bad_field naming %s', (fields, name) => {
    const parsed = parse({ type: 'hello', ...fields });
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    expect(parsed.reason).toBe('bad_field');
    expect(parsed.detail).toContain(`hello: ${name}:`);
  });
});

describe('parseClientMessage: frames that are not messages', () => {
  it.each(['', 'hello', '{"type":"hello"', '{type:"hello"}'])('refuses %j as not_json', (text) => {
    expect(parseClientMessage(text)).toMatchObject({ ok: false, reason: 'not_json' });
  });

  it.each(['null', '[]', '[{"type":"hello"}]', '1', '"hello"', 'false'])('refuses %s, which is not an object, as not_json', (text) => {
    expect(parseClientMessage(text)).toMatchObject({ ok: false, reason: 'not_json' });
  });

  it.each(['{}', '{"type":null}', '{"type":1}', '{"type":["hello"]}', '{"kind":"hello"}'])('refuses %s as no_type', (text) => {
    expect(parseClientMessage(text)).toMatchObject({ ok: false, reason: 'no_type' });
  });

  it.each(['goodbye', 'HELLO', 'state', 'audio_frame', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', ''])(
    'refuses type "%s" as unknown_type',
    (type) => {
      expect(parse({ type })).toMatchObject({ ok: false, reason: 'unknown_type' });
    },
  );

  it('keeps a huge unknown type name out of its detail', () => {
    const parsed = parse({ type: 'x'.repeat(10_000) });
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.detail.length).toBeLessThan(200);
  });
});

describe('parseClientMessage: the other client messages', () => {
  it('reads listen start with mode auto by default', () => {
    expect(accepted({ type: 'listen', state: 'start' })).toEqual({ type: 'listen', state: 'start', mode: 'auto' });
  });

  it.each(['auto', 'manual', 'realtime'])('reads listen start in mode %s', (mode) => {
    expect(accepted({ type: 'listen', state: 'start', mode })).toEqual({ type: 'listen', state: 'start', mode });
  });

  it('reads listen stop', () => {
    expect(accepted({ type: 'listen', state: 'stop' })).toEqual({ type: 'listen', state: 'stop' });
  });

  it.each([{}, { state: 'detect' }, { state: 'start', mode: 'push' }, { state: 1 }])('refuses listen %j as bad_field', (fields) => {
    expect(parse({ type: 'listen', ...fields })).toMatchObject({ ok: false, reason: 'bad_field' });
  });

  it('reads text with its text', () => {
    expect(accepted({ type: 'text', text: 'what is the weather' })).toEqual({ type: 'text', text: 'what is the weather' });
  });

  it.each([{ text: '' }, {}, { text: 42 }, { text: null }])('refuses text %j as bad_field naming text', (fields) => {
    const parsed = parse({ type: 'text', ...fields });
    expect(parsed).toMatchObject({ ok: false, reason: 'bad_field' });
    if (!parsed.ok) expect(parsed.detail).toContain('text: text:');
  });

  it('reads abort, with or without extra fields', () => {
    expect(accepted({ type: 'abort' })).toEqual({ type: 'abort' });
    expect(accepted({ type: 'abort', reason: 'user' })).toEqual({ type: 'abort' });
  });

  it('reads mcp with its object payload untouched', () => {
    const payload = { jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'volume' }] } };
    expect(accepted({ type: 'mcp', payload })).toEqual({ type: 'mcp', payload });
  });

  it.each(['{"constructor":null}', '{"constructor":"x","prototype":1}', '{"__proto__":{"polluted":true}}'])(
    'reads an mcp payload with JavaScript-ish keys %s as the plain JSON object it is',
    (payload) => {
      const parsed = parseClientMessage(`{"type":"mcp","payload":${payload}}`);
      expect(parsed.ok).toBe(true);
      expect(JSON.stringify(parsed.ok && parsed.message.type === 'mcp' ? parsed.message.payload : undefined)).toBe(payload);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    },
  );

  it.each([{}, { payload: null }, { payload: [] }, { payload: 'x' }, { payload: 3 }])('refuses mcp %j: its payload must be an object', (fields) => {
    const parsed = parse({ type: 'mcp', ...fields });
    expect(parsed).toMatchObject({ ok: false, reason: 'bad_field' });
    if (!parsed.ok) expect(parsed.detail).toContain('payload');
  });

  it('reads ping with any JSON id of up to MAX_PING_ID_CHARS characters, kept as it came', () => {
    fc.assert(
      fc.property(
        fc.jsonValue().filter((id) => JSON.stringify(id).length <= MAX_PING_ID_CHARS),
        (id) => {
          const message = accepted({ type: 'ping', id });
          expect(message).toEqual({ type: 'ping', id: JSON.parse(JSON.stringify(id)) });
        },
      ),
    );
  });

  it('refuses a ping whose id is longer than MAX_PING_ID_CHARS as JSON, since the pong would echo it', () => {
    const atLimit = 'x'.repeat(MAX_PING_ID_CHARS - 2);
    expect(accepted({ type: 'ping', id: atLimit })).toEqual({ type: 'ping', id: atLimit });
    const parsed = parseClientMessage(JSON.stringify({ type: 'ping', id: `${atLimit}x` }));
    expect(parsed).toMatchObject({ ok: false, reason: 'bad_field' });
    expect(!parsed.ok && parsed.detail).toBe(`ping: id: at most ${MAX_PING_ID_CHARS} characters as JSON`);
    expect(parseClientMessage(JSON.stringify({ type: 'ping', id: { deep: ['x'.repeat(60_000)] } }))).toMatchObject({ ok: false, reason: 'bad_field' });
  });

  it('reads ping without an id', () => {
    expect(accepted({ type: 'ping' })).toMatchObject({ type: 'ping' });
  });
});

describe('parseClientMessage never throws', () => {
  it('on any string', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 200 }), fc.json()), (text) => {
        expect(typeof parseClientMessage(text).ok).toBe('boolean');
      }),
    );
  });

  it('on any JSON value', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const parsed = parseClientMessage(JSON.stringify(value) ?? 'null');
        if (!parsed.ok) expect(['not_json', 'no_type', 'unknown_type', 'bad_field']).toContain(parsed.reason);
      }),
    );
  });

  it('on any JSON object with a known type and arbitrary fields', () => {
    const type = fc.constantFrom('hello', 'listen', 'text', 'abort', 'mcp', 'ping');
    const field = fc.oneof(fc.jsonValue(), fc.dictionary(fc.constantFrom('codec', 'sampleRate', 'transport', 'frameMs', 'mode', 'prebufferMs'), fc.jsonValue()));
    const keys = fc.constantFrom('version', 'downlink', 'uplink', 'pacing', 'state', 'mode', 'text', 'payload', 'id', '__proto__', 'constructor');
    fc.assert(
      fc.property(type, fc.dictionary(keys, field), (t, fields) => {
        const parsed = parseClientMessage(JSON.stringify({ ...fields, type: t }));
        if (parsed.ok) expect(parsed.message.type).toBe(t);
        else expect(['bad_field']).toContain(parsed.reason);
      }),
    );
  });
});

describe('negotiate', () => {
  it.each([...DOWNLINK_RATES])('keeps the requested rate %i for pcm16 downlink, whatever the upstream rate', (sampleRate) => {
    const h = hello({ downlink: { codec: 'pcm16', sampleRate } });
    expect(negotiate(h, 24000).downlink).toEqual({ codec: 'pcm16', sampleRate, transport: 'binary' });
    expect(negotiate(h, 16000).downlink.sampleRate).toBe(sampleRate);
  });

  it('reports the upstream rate for opus downlink, whatever rate was requested', () => {
    const h = hello({ downlink: { codec: 'opus', sampleRate: 8000, transport: 'json' } });
    expect(negotiate(h, 24000).downlink).toEqual({ codec: 'opus', sampleRate: 24000, transport: 'json' });
    expect(negotiate(h, 16000).downlink.sampleRate).toBe(16000);
  });

  it('passes uplink and pacing through as requested', () => {
    const h = hello({ uplink: { codec: 'pcm16', sampleRate: 48000, frameMs: 20 }, pacing: { mode: 'realtime', prebufferMs: 300 } });
    const n = negotiate(h, 24000);
    expect(n.uplink).toEqual({ codec: 'pcm16', sampleRate: 48000, frameMs: 20 });
    expect(n.pacing).toEqual({ mode: 'realtime', prebufferMs: 300 });
  });

  it('leaves the hello it was given unchanged', () => {
    const h = hello({ downlink: { codec: 'opus', sampleRate: 8000 } });
    negotiate(h, 24000);
    expect(h.downlink.sampleRate).toBe(8000);
  });
});
