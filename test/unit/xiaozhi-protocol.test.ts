import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  BINARY_TYPE_JSON,
  BINARY_TYPE_OPUS,
  decodeBinary,
  deviceHello,
  encodeBinary,
  isAcceptableHello,
  parseServerJson,
  type JsonParse,
  type ProtocolVersion,
  type ServerMessage,
} from '../../src/protocol/xiaozhi.ts';
import { opusPacketDurationMs } from '../../src/protocol/audio.ts';
import { loadSpeech } from '../../src/sim/speech.ts';

function message(text: string): ServerMessage {
  const parsed = parseServerJson(text);
  if (!parsed.ok) throw new Error(`expected ${text} to parse, got ${parsed.reason}: ${parsed.detail}`);
  return parsed.message;
}

function failure(text: string): Extract<JsonParse, { ok: false }> {
  const parsed = parseServerJson(text);
  if (parsed.ok) throw new Error(`expected ${text} to be refused, got ${JSON.stringify(parsed.message)}`);
  return parsed;
}

describe('parseServerJson: the server messages of XIAOZHI.md', () => {
  it('reads a server hello with its session id, transport and sample rate', () => {
    const text = JSON.stringify({
      type: 'hello',
      version: 1,
      transport: 'websocket',
      session_id: 'abc-123',
      audio_params: { format: 'opus', sample_rate: 24000, channels: 1, frame_duration: 60 },
    });
    expect(message(text)).toEqual({
      type: 'hello',
      sessionId: 'abc-123',
      transport: 'websocket',
      sampleRate: 24000,
    });
  });

  it('reads a hello without session id as an empty session id and without audio params as no sample rate', () => {
    expect(message('{"type":"hello","transport":"websocket"}')).toEqual({ type: 'hello', sessionId: '', transport: 'websocket', sampleRate: undefined });
  });

  it.each([['"fast"'], ['0'], ['44100'], ['null'], ['[24000]']])('ignores a hello sample rate of %s that no Opus decoder outputs', (rate) => {
    const text = `{"type":"hello","transport":"websocket","audio_params":{"sample_rate":${rate}}}`;
    expect(message(text)).toMatchObject({ type: 'hello', sampleRate: undefined });
  });

  it('reads a tts state that is not a string as an unknown tts message, without throwing', () => {
    expect(message('{"type":"tts","state":{"toString":1}}')).toMatchObject({ type: 'other', original: 'tts' });
  });

  it('refuses JSON nested deeper than 32 levels', () => {
    const deep = '{"type":"mcp","payload":' + '{"a":'.repeat(40) + '1' + '}'.repeat(40) + '}';
    expect(parseServerJson(deep)).toMatchObject({ ok: false, reason: 'too_deep' });
  });

  it('reads stt as the user text', () => {
    expect(message('{"type":"stt","text":"what time is it"}')).toEqual({ type: 'stt', text: 'what time is it' });
  });

  it('reads llm as its emoji text and emotion', () => {
    expect(message('{"type":"llm","text":"😊","emotion":"happy"}')).toEqual({ type: 'llm', text: '😊', emotion: 'happy' });
  });

  it('reads an llm message missing its fields as empty strings', () => {
    expect(message('{"type":"llm"}')).toEqual({ type: 'llm', text: '', emotion: '' });
  });

  it('reads tts start, sentence_start with its text, and stop', () => {
    expect(message('{"type":"tts","state":"start"}')).toEqual({ type: 'tts', state: 'start' });
    expect(message('{"type":"tts","state":"sentence_start","text":"Hello there."}')).toEqual({
      type: 'tts',
      state: 'sentence_start',
      text: 'Hello there.',
    });
    expect(message('{"type":"tts","state":"stop"}')).toEqual({ type: 'tts', state: 'stop' });
  });

  it('reads a sentence_start without text as an empty sentence', () => {
    expect(message('{"type":"tts","state":"sentence_start"}')).toEqual({ type: 'tts', state: 'sentence_start', text: '' });
  });

  it('reads mcp with its JSON-RPC payload untouched', () => {
    const payload = { jsonrpc: '2.0', id: 1, method: 'tools/list', params: { cursor: '' } };
    expect(message(JSON.stringify({ type: 'mcp', payload }))).toEqual({ type: 'mcp', payload });
  });

  it('tolerates a tts state it does not know as other', () => {
    expect(message('{"type":"tts","state":"sentence_end","text":"x"}')).toEqual({
      type: 'other',
      original: 'tts.sentence_end',
      body: { type: 'tts', state: 'sentence_end', text: 'x' },
    });
  });

  it.each(['system', 'alert', 'custom', 'iot', 'made_up_by_a_future_server', 'constructor', '__proto__', ''])(
    'tolerates the type "%s" as other, keeping the whole body',
    (type) => {
      const body = { type, command: 'reboot', nested: { a: [1, 2] } };
      expect(message(JSON.stringify(body))).toEqual({ type: 'other', original: type, body });
    },
  );

  it('tolerates unknown fields on known types', () => {
    expect(message('{"type":"stt","text":"hi","session_id":"s","confidence":0.9,"extra":{"x":null}}')).toEqual({ type: 'stt', text: 'hi' });
    expect(message('{"type":"tts","state":"stop","session_id":"s","reason":"done"}')).toEqual({ type: 'tts', state: 'stop' });
  });
});

describe('parseServerJson: malformed input', () => {
  it.each(['', 'not json', '{"type":"stt"', "{'type':'stt'}", 'undefined', '{"type":"tts",}'])('answers not_json for %j', (text) => {
    expect(failure(text).reason).toBe('not_json');
  });

  it.each(['[]', '[{"type":"stt","text":"x"}]', 'null', '42', '"hello"', 'true'])('answers not_object for %s', (text) => {
    expect(failure(text).reason).toBe('not_object');
  });

  it.each(['{}', '{"type":null}', '{"type":7}', '{"type":["stt"]}', '{"type":{"name":"stt"}}', '{"text":"hi"}'])(
    'answers no_type for %s',
    (text) => {
      expect(failure(text).reason).toBe('no_type');
    },
  );

  it.each([
    '{"type":"hello"}',
    '{"type":"hello","transport":1}',
    '{"type":"stt"}',
    '{"type":"stt","text":5}',
    '{"type":"stt","text":null}',
    '{"type":"mcp"}',
    '{"type":"mcp","payload":"x"}',
    '{"type":"mcp","payload":null}',
  ])('answers bad_field naming the type for %s', (text) => {
    const parsed = failure(text);
    expect(parsed.reason).toBe('bad_field');
    expect(parsed.detail).toMatch(/^(hello|stt|mcp): /);
  });

  it('never throws on any string', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 200 }), fc.json()), (text) => {
        const parsed = parseServerJson(text);
        expect(typeof parsed.ok).toBe('boolean');
      }),
    );
  });

  it('never throws on any JSON value, and answers ok or a reason', () => {
    const known = fc.constantFrom('hello', 'stt', 'llm', 'tts', 'mcp', 'system');
    const shaped = fc.record({ type: known, text: fc.jsonValue(), state: fc.jsonValue(), transport: fc.jsonValue(), payload: fc.jsonValue() }, { requiredKeys: ['type'] });
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), shaped), (value) => {
        const parsed = parseServerJson(JSON.stringify(value) ?? 'null');
        if (!parsed.ok) expect(['not_json', 'not_object', 'too_deep', 'no_type', 'bad_field']).toContain(parsed.reason);
      }),
    );
  });
});

describe('isAcceptableHello', () => {
  it('accepts a hello over websocket', () => {
    expect(isAcceptableHello({ type: 'hello', sessionId: 's', transport: 'websocket', sampleRate: undefined })).toBe(true);
  });

  it('accepts a hello with any session id, even an empty one', () => {
    expect(isAcceptableHello({ type: 'hello', sessionId: '', transport: 'websocket', sampleRate: undefined })).toBe(true);
  });

  it('refuses a hello over another transport', () => {
    expect(isAcceptableHello({ type: 'hello', sessionId: 's', transport: 'udp', sampleRate: undefined })).toBe(false);
    expect(isAcceptableHello({ type: 'hello', sessionId: 's', transport: 'WebSocket', sampleRate: undefined })).toBe(false);
  });

  it('refuses anything that is not a hello', () => {
    expect(isAcceptableHello({ type: 'stt', text: 'websocket' })).toBe(false);
    expect(isAcceptableHello({ type: 'other', original: 'hello2', body: { transport: 'websocket' } })).toBe(false);
  });
});

describe('deviceHello', () => {
  it('is the hello XIAOZHI.md shows, with Opus up at the given rate and frame length', () => {
    expect(deviceHello(1, { sampleRate: 16000, frameMs: 60 })).toEqual({
      type: 'hello',
      version: 1,
      features: { mcp: true },
      transport: 'websocket',
      audio_params: { format: 'opus', sample_rate: 16000, channels: 1, frame_duration: 60 },
    });
  });

  it('carries the protocol version and the uplink parameters it is given', () => {
    expect(deviceHello(3, { sampleRate: 24000, frameMs: 20 })).toMatchObject({
      version: 3,
      audio_params: { sample_rate: 24000, frame_duration: 20 },
    });
  });
});

describe('binary framing', () => {
  const kind = fc.constantFrom('opus' as const, 'json' as const);

  it('version 1 is the packet itself, both ways', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
        const payload = Buffer.from(bytes);
        const wire = encodeBinary(1, payload);
        expect(wire.equals(payload)).toBe(true);
        expect(decodeBinary(1, wire)).toEqual({ ok: true, kind: 'opus', payload, timestamp: 0 });
      }),
    );
  });

  it('version 2 round trips kind, payload and timestamp', () => {
    fc.assert(
      fc.property(kind, fc.uint8Array({ maxLength: 4000 }), fc.integer({ min: 0, max: 0xffffffff }), (k, bytes, timestamp) => {
        const payload = Buffer.from(bytes);
        const wire = encodeBinary(2, payload, k, timestamp);
        expect(wire.length).toBe(16 + payload.length);
        const decoded = decodeBinary(2, wire);
        expect(decoded).toEqual({ ok: true, kind: k, payload, timestamp });
      }),
    );
  });

  it('version 2 writes the header XIAOZHI.md describes', () => {
    const wire = encodeBinary(2, Buffer.from([0xaa, 0xbb]), 'json', 0x01020304);
    expect([...wire]).toEqual([0, 2, 0, BINARY_TYPE_JSON, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, 0xaa, 0xbb]);
  });

  it('version 3 round trips kind and payloads of 0 to 65535 bytes', () => {
    fc.assert(
      fc.property(kind, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 255 }), (k, size, fill) => {
        const payload = Buffer.alloc(size, fill);
        if (size > 0) payload[size - 1] = (fill + 1) & 0xff;
        const wire = encodeBinary(3, payload, k);
        expect(wire.length).toBe(4 + size);
        const decoded = decodeBinary(3, wire);
        expect(decoded.ok && decoded.kind).toBe(k);
        expect(decoded.ok && decoded.payload.equals(payload)).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  it('version 3 round trips arbitrary small payloads byte for byte', () => {
    fc.assert(
      fc.property(kind, fc.uint8Array({ maxLength: 1000 }), (k, bytes) => {
        const payload = Buffer.from(bytes);
        expect(decodeBinary(3, encodeBinary(3, payload, k))).toEqual({ ok: true, kind: k, payload, timestamp: 0 });
      }),
    );
  });

  it('version 3 round trips the largest payload it can carry, 65535 bytes', () => {
    const payload = Buffer.alloc(0xffff, 7);
    const decoded = decodeBinary(3, encodeBinary(3, payload));
    expect(decoded.ok && decoded.payload.length).toBe(0xffff);
  });

  it('version 3 writes the header XIAOZHI.md describes', () => {
    const wire = encodeBinary(3, Buffer.alloc(0x0102, 1), 'opus');
    expect([...wire.subarray(0, 4)]).toEqual([BINARY_TYPE_OPUS, 0, 0x01, 0x02]);
  });

  it('version 3 refuses to encode more than 65535 bytes with a RangeError', () => {
    expect(() => encodeBinary(3, Buffer.alloc(0x10000))).toThrow(RangeError);
    expect(() => encodeBinary(3, Buffer.alloc(100_000), 'json')).toThrow(RangeError);
  });

  it('decoding gives a view of the wire bytes, not a copy', () => {
    const wire = encodeBinary(3, Buffer.from([1, 2, 3]));
    const decoded = decodeBinary(3, wire);
    expect(decoded.ok && decoded.payload.buffer).toBe(wire.buffer);
  });
});

describe('binary framing: malformed buffers', () => {
  const v2 = (fields: { version?: number; type?: number; size?: number }, payload: number[] = []): Buffer => {
    const out = Buffer.alloc(16 + payload.length);
    out.writeUInt16BE(fields.version ?? 2, 0);
    out.writeUInt16BE(fields.type ?? 0, 2);
    out.writeUInt32BE(fields.size ?? payload.length, 12);
    Buffer.from(payload).copy(out, 16);
    return out;
  };
  const v3 = (fields: { type?: number; size?: number }, payload: number[] = []): Buffer => {
    const out = Buffer.alloc(4 + payload.length);
    out.writeUInt8(fields.type ?? 0, 0);
    out.writeUInt16BE(fields.size ?? payload.length, 2);
    Buffer.from(payload).copy(out, 4);
    return out;
  };

  it.each([0, 1, 4, 15])('v2 refuses a frame truncated to %i header bytes', (n) => {
    expect(decodeBinary(2, encodeBinary(2, Buffer.from([1, 2, 3])).subarray(0, n)).ok).toBe(false);
  });

  it('v2 refuses a size field that claims more or fewer bytes than follow', () => {
    expect(decodeBinary(2, v2({ size: 5 }, [1, 2, 3])).ok).toBe(false);
    expect(decodeBinary(2, v2({ size: 1 }, [1, 2, 3])).ok).toBe(false);
    expect(decodeBinary(2, v2({ size: 0xffffffff }, [1])).ok).toBe(false);
  });

  it('v2 refuses a frame whose header says another version', () => {
    expect(decodeBinary(2, v2({ version: 1 }, [1]))).toMatchObject({ ok: false, detail: expect.stringContaining('version 1') });
    expect(decodeBinary(2, v2({ version: 3 }, [1])).ok).toBe(false);
  });

  it('v2 refuses an unknown payload type', () => {
    expect(decodeBinary(2, v2({ type: 2 }, [1]))).toMatchObject({ ok: false, detail: expect.stringContaining('unknown type 2') });
  });

  it.each([0, 1, 3])('v3 refuses a frame truncated to %i header bytes', (n) => {
    expect(decodeBinary(3, encodeBinary(3, Buffer.from([1, 2, 3])).subarray(0, n)).ok).toBe(false);
  });

  it('v3 refuses a size field that claims more or fewer bytes than follow', () => {
    expect(decodeBinary(3, v3({ size: 4 }, [1, 2, 3])).ok).toBe(false);
    expect(decodeBinary(3, v3({ size: 2 }, [1, 2, 3])).ok).toBe(false);
    expect(decodeBinary(3, v3({ size: 0xffff }, [])).ok).toBe(false);
  });

  it('v3 refuses an unknown payload type', () => {
    expect(decodeBinary(3, v3({ type: 9 }, [1]))).toMatchObject({ ok: false, detail: expect.stringContaining('unknown type 9') });
  });

  it('a truncated well-formed frame is always refused', () => {
    fc.assert(
      fc.property(fc.constantFrom(2 as const, 3 as const), fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.nat(), (version, bytes, cut) => {
        const wire = encodeBinary(version, Buffer.from(bytes));
        const truncated = wire.subarray(0, cut % wire.length);
        expect(decodeBinary(version, truncated).ok).toBe(false);
      }),
    );
  });

  it('never throws on arbitrary bytes, for any version', () => {
    fc.assert(
      fc.property(fc.constantFrom<ProtocolVersion>(1, 2, 3), fc.uint8Array({ maxLength: 64 }), (version, bytes) => {
        const decoded = decodeBinary(version, Buffer.from(bytes));
        if (decoded.ok) {
          expect(['opus', 'json']).toContain(decoded.kind);
        } else {
          expect(decoded.detail.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('accepts arbitrary bytes only when their header is consistent', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        const data = Buffer.from(bytes);
        const consistent = data.length >= 4 && data[0]! <= 1 && data.readUInt16BE(2) === data.length - 4;
        expect(decodeBinary(3, data).ok).toBe(consistent);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('opusPacketDurationMs', () => {
  it('reads 60 ms from every packet of the recorded speech', () => {
    const speech = loadSpeech();
    const packets = speech.sentences.flatMap((s) => s.packets);
    expect(packets.length).toBeGreaterThan(0);
    for (const packet of packets) expect(opusPacketDurationMs(packet)).toBe(speech.frameMs);
    expect(speech.frameMs).toBe(60);
  });

  const toc = (config: number, code: number) => (config << 3) | code;

  it.each([
    [0, 10],
    [1, 20],
    [2, 40],
    [3, 60],
    [4, 10],
    [7, 60],
    [8, 10],
    [9, 20],
    [10, 40],
    [11, 60],
  ])('reads SILK config %i as %i ms frames', (config, ms) => {
    expect(opusPacketDurationMs(Buffer.from([toc(config, 0), 0]))).toBe(ms);
  });

  it.each([
    [12, 10],
    [13, 20],
    [14, 10],
    [15, 20],
  ])('reads hybrid config %i as %i ms frames', (config, ms) => {
    expect(opusPacketDurationMs(Buffer.from([toc(config, 0), 0]))).toBe(ms);
  });

  it.each([
    [16, 2.5],
    [17, 5],
    [18, 10],
    [19, 20],
    [28, 2.5],
    [31, 20],
  ])('reads CELT config %i as %d ms frames', (config, ms) => {
    expect(opusPacketDurationMs(Buffer.from([toc(config, 0), 0]))).toBe(ms);
  });

  it('reads code 0 as one frame, codes 1 and 2 as two frames', () => {
    expect(opusPacketDurationMs(Buffer.from([toc(1, 0)]))).toBe(20);
    expect(opusPacketDurationMs(Buffer.from([toc(1, 1), 0, 0]))).toBe(40);
    expect(opusPacketDurationMs(Buffer.from([toc(1, 2), 1, 0, 0]))).toBe(40);
  });

  it('reads code 3 as the frame count in the low six bits of the second byte', () => {
    expect(opusPacketDurationMs(Buffer.from([toc(13, 3), 0x03]))).toBe(60);
    expect(opusPacketDurationMs(Buffer.from([toc(19, 3), 0xc6]))).toBe(120);
    expect(opusPacketDurationMs(Buffer.from([toc(16, 3), 0x01]))).toBe(2.5);
  });

  it('answers 0 for a packet it cannot read: empty, or code 3 without its count byte', () => {
    expect(opusPacketDurationMs(Buffer.alloc(0))).toBe(0);
    expect(opusPacketDurationMs(Buffer.from([0x03]))).toBe(0);
  });

  it('never throws and never answers a negative duration', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4 }), (bytes) => {
        const ms = opusPacketDurationMs(Buffer.from(bytes));
        expect(ms).toBeGreaterThanOrEqual(0);
        expect(Number.isFinite(ms)).toBe(true);
      }),
    );
  });

  it('calls a packet unreadable when its frame count claims more than the 120 ms a packet can hold', () => {
    // CELT 20 ms frames (config 31), code 3, 63 frames: 1260 ms.
    expect(opusPacketDurationMs(Buffer.from([(31 << 3) | 3, 63]))).toBe(0);
    expect(opusPacketDurationMs(Buffer.from([(31 << 3) | 3, 6]))).toBe(120);
  });
});
