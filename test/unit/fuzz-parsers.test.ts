import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { from } from 'rxjs';
import { DOWNLINK_RATES, MAX_PING_ID_CHARS, UPLINK_FRAME_MS, parseClientMessage, type ClientMessage, type ClientParse } from '../../src/protocol/client.ts';
import {
  decodeBinary,
  encodeBinary,
  parseServerJson,
  type JsonParse,
  type ProtocolVersion,
  type ServerMessage,
} from '../../src/protocol/xiaozhi.ts';
import { opusPacketDurationMs } from '../../src/protocol/audio.ts';
import { parse } from '../../src/streams/parse.ts';
import type { RawUpstream, UpstreamEvent } from '../../src/streams/events.ts';
import { loadSpeech } from '../../src/sim/speech.ts';

// Property-based fuzzing of every parser that reads wire input: the client protocol (PROTOCOL.md), the
// xiaozhi server side (XIAOZHI.md: JSON, binary v1/v2/v3) and the `parse` operator that joins them.
// Whatever arrives, a parser answers with a value of its documented shape and never throws.

const RUNS = { strings: 2000, json: 2000, mutated: 1000, bytes: 2000, stream: 300 } as const;

const speech = loadSpeech();
const PACKETS = speech.sentences.flatMap((s) => s.packets);
const VERSIONS: readonly ProtocolVersion[] = [1, 2, 3];

// Wire text, built as text: a JSON tree whose leaves are raw JSON fragments, so that it can hold keys an
// object literal cannot (__proto__), nesting JSON.stringify would overflow on, and numbers JS cannot keep.

type Node = { k: 'raw'; text: string } | { k: 'obj'; entries: [string, Node][] } | { k: 'arr'; items: Node[] };

function tree(value: unknown): Node {
  if (Array.isArray(value)) return { k: 'arr', items: value.map(tree) };
  if (value !== null && typeof value === 'object') return { k: 'obj', entries: Object.entries(value).map(([key, v]) => [key, tree(v)]) };
  return { k: 'raw', text: JSON.stringify(value) ?? 'null' };
}

function render(node: Node): string {
  if (node.k === 'raw') return node.text;
  if (node.k === 'arr') return `[${node.items.map(render).join(',')}]`;
  return `{${node.entries.map(([key, v]) => `${JSON.stringify(key)}:${render(v)}`).join(',')}}`;
}

const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__'] as const;

const deep = (n: number, kind: 'arr' | 'obj'): string => (kind === 'arr' ? `${'['.repeat(n)}${']'.repeat(n)}` : `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`);

// Made once: building and parsing them is what costs, and their exact sizes do not matter.
/** Past the 4096-character text limit, past the 64 KiB client frame limit, and far past both. */
const HUGE = [4097, 65_537, 300_000].map((n) => JSON.stringify('x'.repeat(n)));
/** Past the depth JSON.stringify survives (about 5000 on Node 20), and more. */
const DEEP = [64, 1000, 6000, 12_000].flatMap((n) => [deep(n, 'arr'), deep(n, 'obj')]);

/** JSON fragments of every kind a hostile or broken peer could put in a field. */
const junk: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? 'null') },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      'null', 'true', 'false', '0', '-0', '-1', '1.5', '5001', '1e308', '-1e308', `1${'0'.repeat(400)}`, '[]', '{}', '""',
      '"hello"', '"listen"', '"start"', '"stop"', '"opus"', '"pcm16"', '"json"', '"binary"', '"realtime"', '"websocket"',
      '24000', '"24000"', '16000', '60', '[24000]', '{"codec":"opus"}', '"\\u0000"', '"\\ud800"', '"😊"',
      '{"__proto__":{"type":"hello","polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}', '{"__proto__":null}',
    ),
  },
  { weight: 1, arbitrary: fc.constantFrom(...HUGE) },
  { weight: 1, arbitrary: fc.constantFrom(...DEEP) },
);

type Mutation = { op: 'delete' | 'replace' | 'add'; at: number; key: string; value: string };

const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom('delete' as const, 'replace' as const, 'replace' as const, 'add' as const),
  at: fc.nat(),
  key: fc.oneof(fc.constantFrom(...PROTO_KEYS, 'type', 'state', 'payload', 'id', 'text', 'downlink', 'audio_params'), fc.string({ maxLength: 8 })),
  value: junk,
});

/** Applies mutations to a message: a field deleted or replaced with junk, or a new key added anywhere. */
function mutate(value: unknown, mutations: readonly Mutation[]): string {
  const root = tree(value);
  for (const m of mutations) {
    const objects: Extract<Node, { k: 'obj' }>[] = [];
    const walk = (n: Node): void => {
      if (n.k === 'obj') {
        objects.push(n);
        n.entries.forEach(([, v]) => walk(v));
      } else if (n.k === 'arr') n.items.forEach(walk);
    };
    walk(root);
    const fields = objects.flatMap((o) => o.entries.map((_, i) => ({ o, i })));
    if (m.op === 'add' || fields.length === 0) {
      objects[m.at % objects.length]!.entries.push([m.key, { k: 'raw', text: m.value }]);
      continue;
    }
    const { o, i } = fields[m.at % fields.length]!;
    if (m.op === 'delete') o.entries.splice(i, 1);
    else o.entries[i] = [o.entries[i]![0], { k: 'raw', text: m.value }];
  }
  return render(root);
}

// Real messages of each protocol, with random but valid fields: the starting points of mutation.

const jsonObject = fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 });

const clientMessage: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record(
    {
      type: fc.constant('hello'),
      version: fc.constant(1),
      downlink: fc.record(
        { codec: fc.constantFrom('pcm16', 'opus'), sampleRate: fc.constantFrom(...DOWNLINK_RATES), transport: fc.constantFrom('binary', 'json') },
        { requiredKeys: [] },
      ),
      uplink: fc.record(
        { codec: fc.constantFrom('opus', 'pcm16'), sampleRate: fc.constantFrom(...DOWNLINK_RATES), frameMs: fc.constantFrom(...UPLINK_FRAME_MS) },
        { requiredKeys: [] },
      ),
      pacing: fc.record({ mode: fc.constantFrom('none', 'realtime'), prebufferMs: fc.integer({ min: 0, max: 5000 }) }, { requiredKeys: [] }),
    },
    { requiredKeys: ['type'] },
  ),
  fc.record({ type: fc.constant('listen'), state: fc.constant('start'), mode: fc.constantFrom('auto', 'manual', 'realtime') }, { requiredKeys: ['type', 'state'] }),
  fc.constant({ type: 'listen', state: 'stop' }),
  fc.record({ type: fc.constant('text'), text: fc.string({ minLength: 1, maxLength: 40 }) }),
  fc.constant({ type: 'abort' }),
  fc.record({ type: fc.constant('mcp'), payload: jsonObject }),
  fc.record({ type: fc.constant('ping'), id: fc.jsonValue({ maxDepth: 2 }).filter((id) => JSON.stringify(id).length <= MAX_PING_ID_CHARS) }),
);

const serverMessage: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({
    type: fc.constant('hello'),
    version: fc.constant(1),
    transport: fc.constant('websocket'),
    session_id: fc.uuid(),
    audio_params: fc.record({ format: fc.constant('opus'), sample_rate: fc.constantFrom(16000, 24000), channels: fc.constant(1), frame_duration: fc.constant(60) }),
  }),
  fc.record({ type: fc.constant('stt'), text: fc.string({ maxLength: 30 }) }),
  fc.record({ type: fc.constant('llm'), text: fc.constantFrom('😊', '😢', ''), emotion: fc.constantFrom('happy', 'sad', 'neutral') }),
  fc.record({ type: fc.constant('tts'), state: fc.constantFrom('start', 'stop') }),
  fc.record({ type: fc.constant('tts'), state: fc.constant('sentence_start'), text: fc.string({ maxLength: 30 }) }),
  fc.record({ type: fc.constant('mcp'), payload: fc.record({ jsonrpc: fc.constant('2.0'), id: fc.nat(), method: fc.constantFrom('initialize', 'tools/list', 'tools/call') }) }),
  fc.record({ type: fc.constantFrom('system', 'alert', 'custom', 'iot', 'goodbye'), command: fc.string({ maxLength: 8 }) }),
);

/** Any text a socket could carry: random strings, random JSON, and real messages with mutated fields. */
const wireText = (messages: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<string> =>
  fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.string({ unit: 'binary', maxLength: 200 }),
    fc.json({ maxDepth: 4 }),
    fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? 'null'),
    fc.tuple(messages, fc.array(mutation, { maxLength: 4 })).map(([m, ms]) => mutate(m, ms)),
    junk,
  );

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

const serverText = wireText(serverMessage);

// The documented shapes.

const CLIENT_TYPES = ['hello', 'listen', 'text', 'abort', 'mcp', 'ping'];
const CLIENT_REASONS = ['not_json', 'no_type', 'unknown_type', 'bad_field'];
const SERVER_REASONS = ['not_json', 'not_object', 'too_deep', 'no_type', 'bad_field'];
/** An error detail is echoed to the client: it must stay short whatever the input was. */
const MAX_DETAIL = 512;


function expectClientMessage(m: ClientMessage): void {
  expect(CLIENT_TYPES).toContain(m.type);
  switch (m.type) {
    case 'hello':
      expect(m.version).toBe(1);
      expect(['pcm16', 'opus']).toContain(m.downlink.codec);
      expect(DOWNLINK_RATES).toContain(m.downlink.sampleRate);
      expect(['binary', 'json']).toContain(m.downlink.transport);
      expect(['opus', 'pcm16']).toContain(m.uplink.codec);
      expect(DOWNLINK_RATES).toContain(m.uplink.sampleRate);
      expect(UPLINK_FRAME_MS).toContain(m.uplink.frameMs);
      expect(['none', 'realtime']).toContain(m.pacing.mode);
      expect(Number.isInteger(m.pacing.prebufferMs) && m.pacing.prebufferMs >= 0 && m.pacing.prebufferMs <= 5000).toBe(true);
      return;
    case 'listen':
      if (m.state === 'start') expect(['auto', 'manual', 'realtime']).toContain(m.mode);
      else expect(m.state).toBe('stop');
      return;
    case 'text':
      expect(typeof m.text).toBe('string');
      expect(m.text.length >= 1 && m.text.length <= 4096).toBe(true);
      return;
    case 'mcp':
      expect(isObject(m.payload)).toBe(true);
      return;
    case 'abort':
    case 'ping':
      return;
  }
}

function expectClientParse(r: ClientParse): void {
  if (r.ok) {
    expect(Object.keys(r).sort()).toEqual(['message', 'ok']);
    expectClientMessage(r.message);
  } else {
    expect(r.ok).toBe(false);
    expect(Object.keys(r).sort()).toEqual(['detail', 'ok', 'reason']);
    expect(CLIENT_REASONS).toContain(r.reason);
    expect(typeof r.detail).toBe('string');
    expect(r.detail.length > 0 && r.detail.length <= MAX_DETAIL).toBe(true);
  }
}

function expectServerMessage(m: ServerMessage): void {
  switch (m.type) {
    case 'hello':
      expect(typeof m.sessionId).toBe('string');
      expect(typeof m.transport).toBe('string');
      if (m.sampleRate !== undefined) expect([8000, 12000, 16000, 24000, 48000]).toContain(m.sampleRate);
      return;
    case 'stt':
      expect(typeof m.text).toBe('string');
      return;
    case 'llm':
      expect(typeof m.text).toBe('string');
      expect(typeof m.emotion).toBe('string');
      return;
    case 'tts':
      expect(['start', 'sentence_start', 'stop']).toContain(m.state);
      if (m.state === 'sentence_start') expect(typeof m.text).toBe('string');
      return;
    case 'mcp':
      expect(m.payload !== null && typeof m.payload === 'object').toBe(true);
      return;
    case 'other':
      expect(typeof m.original).toBe('string');
      expect(isObject(m.body)).toBe(true);
      return;
    default:
      throw new Error(`unexpected server message type ${(m as { type: unknown }).type}`);
  }
}

function expectServerParse(r: JsonParse): void {
  if (r.ok) {
    expect(Object.keys(r).sort()).toEqual(['message', 'ok']);
    expectServerMessage(r.message);
  } else {
    expect(Object.keys(r).sort()).toEqual(['detail', 'ok', 'reason']);
    expect(SERVER_REASONS).toContain(r.reason);
    expect(typeof r.detail).toBe('string');
    expect(r.detail.length > 0 && r.detail.length <= MAX_DETAIL).toBe(true);
  }
}

/** Nothing a parser reads may reach Object.prototype. */
function expectNoPollution(): void {
  const probe = {} as Record<string, unknown>;
  expect(probe.polluted).toBeUndefined();
  expect(probe.type).toBeUndefined();
}

describe('parseClientMessage under fuzzing', () => {
  it('answers any string with ok and a typed message, or a reason and a short detail', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 }), fc.string({ unit: 'grapheme', maxLength: 100 })), (text) => {
        expectClientParse(parseClientMessage(text));
      }),
      { numRuns: RUNS.strings },
    );
  });

  it('answers any JSON value, object or not, with the documented shape', () => {
    fc.assert(
      fc.property(fc.oneof(fc.json({ maxDepth: 5 }), fc.jsonValue({ maxDepth: 5 }).map((v) => JSON.stringify(v) ?? 'null')), (text) => {
        expectClientParse(parseClientMessage(text));
      }),
      { numRuns: RUNS.json },
    );
  });

  it('answers real messages with mutated fields, huge strings, deep nesting and prototype keys with the documented shape', () => {
    fc.assert(
      fc.property(clientMessage, fc.array(mutation, { maxLength: 5 }), (m, mutations) => {
        const text = mutate(m, mutations);
        expectClientParse(parseClientMessage(text));
        expectNoPollution();
      }),
      { numRuns: RUNS.mutated },
    );
  });

  it('accepts every unmutated real message as the type it was', () => {
    fc.assert(
      fc.property(clientMessage, (m) => {
        const r = parseClientMessage(JSON.stringify(m));
        expectClientParse(r);
        expect(r.ok && r.message.type).toBe(m.type);
      }),
      { numRuns: 500 },
    );
  });
});

describe('parseServerJson under fuzzing', () => {
  it('answers any string with ok and a typed message, or a reason and a short detail', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 })), (text) => {
        expectServerParse(parseServerJson(text));
      }),
      { numRuns: RUNS.strings },
    );
  });

  it('answers any JSON value with the documented shape', () => {
    fc.assert(
      fc.property(fc.oneof(fc.json({ maxDepth: 5 }), fc.jsonValue({ maxDepth: 5 }).map((v) => JSON.stringify(v) ?? 'null')), (text) => {
        expectServerParse(parseServerJson(text));
      }),
      { numRuns: RUNS.json },
    );
  });

  it('answers real server messages with mutated fields, huge strings, deep nesting and prototype keys with the documented shape', () => {
    fc.assert(
      fc.property(serverMessage, fc.array(mutation, { maxLength: 5 }), (m, mutations) => {
        const text = mutate(m, mutations);
        expectServerParse(parseServerJson(text));
        expectNoPollution();
      }),
      { numRuns: RUNS.mutated },
    );
  });
});

// Binary frames: arbitrary bytes, and well-formed frames of every version with corrupted bytes.

const bytes = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 300 }) },
  { weight: 1, arbitrary: fc.constantFrom(...PACKETS.slice(0, 10)).map((p) => new Uint8Array(p)) },
);

/** A frame of the version, then some of its bytes overwritten, some cut off or some appended. */
const framed = fc
  .record({
    version: fc.constantFrom(...VERSIONS),
    payload: bytes,
    kind: fc.constantFrom('opus' as const, 'json' as const),
    timestamp: fc.nat(),
    flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
    cut: fc.integer({ min: -4, max: 4 }),
  })
  .map(({ version, payload, kind, timestamp, flips, cut }) => {
    const frame = Buffer.from(encodeBinary(version, Buffer.from(payload), kind, timestamp));
    for (const [at, byte] of flips) if (frame.length > 0) frame[at % Math.min(frame.length, 20)] = byte;
    const out = cut < 0 ? frame.subarray(0, Math.max(0, frame.length + cut)) : Buffer.concat([frame, Buffer.alloc(cut, 0xab)]);
    return { version, data: out };
  });

function expectBinaryParse(version: ProtocolVersion, data: Buffer): void {
  const r = decodeBinary(version, data);
  if (r.ok) {
    expect(['opus', 'json']).toContain(r.kind);
    expect(Buffer.isBuffer(r.payload)).toBe(true);
    expect(Number.isInteger(r.timestamp) && r.timestamp >= 0).toBe(true);
    const header = version === 1 ? 0 : version === 2 ? 16 : 4;
    expect(r.payload.length).toBe(data.length - header);
    if (version === 1) expect(r.kind).toBe('opus');
  } else {
    expect(Object.keys(r).sort()).toEqual(['detail', 'ok']);
    expect(typeof r.detail).toBe('string');
    expect(r.detail.length > 0 && r.detail.length <= MAX_DETAIL).toBe(true);
  }
}

describe('decodeBinary under fuzzing', () => {
  it('answers arbitrary bytes in versions 1, 2 and 3 with a payload or a detail', () => {
    fc.assert(
      fc.property(fc.constantFrom(...VERSIONS), fc.uint8Array({ maxLength: 300 }), (version, data) => {
        expectBinaryParse(version, Buffer.from(data));
      }),
      { numRuns: RUNS.bytes },
    );
  });

  it('answers corrupted, cut and padded frames of every version with a payload or a detail', () => {
    fc.assert(
      fc.property(framed, ({ version, data }) => {
        expectBinaryParse(version, data);
        expect(Number.isFinite(opusPacketDurationMs(data))).toBe(true);
      }),
      { numRuns: RUNS.bytes },
    );
  });

  it('gives back what encodeBinary wrapped, in every version', () => {
    fc.assert(
      fc.property(fc.constantFrom(...VERSIONS), bytes, fc.constantFrom('opus' as const, 'json' as const), fc.nat(), (version, payload, kind, timestamp) => {
        const r = decodeBinary(version, encodeBinary(version, Buffer.from(payload), kind, timestamp));
        expect(r.ok).toBe(true);
        if (!r.ok) return;
        expect(Buffer.compare(r.payload, Buffer.from(payload))).toBe(0);
        expect(r.kind).toBe(version === 1 ? 'opus' : kind);
        expect(r.timestamp).toBe(version === 2 ? timestamp : 0);
      }),
      { numRuns: 1000 },
    );
  });

  it('reads an Opus duration from any bytes without throwing: finite and never negative', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 8 }), (data) => {
        const ms = opusPacketDurationMs(Buffer.from(data));
        expect(Number.isFinite(ms) && ms >= 0).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});

// The parse operator over whole streams of random upstream messages.

/** One raw upstream message: text of any kind, arbitrary bytes, real Opus packets, or framed payloads. */
const rawUpstream = (version: ProtocolVersion): fc.Arbitrary<RawUpstream> =>
  fc.oneof(
    serverText,
    fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
    fc.constantFrom(...PACKETS).map((p) => encodeBinary(version, p)),
    // Version 3 carries at most 65535 payload bytes.
    serverText.map((t) => encodeBinary(version, Buffer.from(t).subarray(0, 65535), 'json')),
    framed.map(({ data }) => data),
  );

function expectEvent(raw: RawUpstream, version: ProtocolVersion, event: UpstreamEvent): void {
  switch (event.kind) {
    case 'message':
      expectServerMessage(event.message);
      return;
    case 'invalid':
      expect(typeof event.detail).toBe('string');
      expect(event.detail.length > 0 && event.detail.length <= MAX_DETAIL).toBe(true);
      return;
    case 'audio':
      expect(typeof raw).not.toBe('string');
      expect(Buffer.isBuffer(event.data)).toBe(true);
      expect(Number.isFinite(event.durationMs) && event.durationMs > 0).toBe(true);
      expect(event.concealed).toBe(false);
      expect(event.arrivedAt).toBe(42);
      return;
    default:
      throw new Error(`unexpected event ${JSON.stringify(event)}`);
  }
  void version;
}

describe('the parse operator under fuzzing', () => {
  it('emits exactly one well-formed event per raw message, in order, and never errors', () => {
    const streams = fc.constantFrom(...VERSIONS).chain((version) => fc.record({ version: fc.constant(version), raws: fc.array(rawUpstream(version), { maxLength: 30 }) }));
    fc.assert(
      fc.property(streams, ({ version, raws }) => {
        const events: UpstreamEvent[] = [];
        let error: unknown;
        let completed = false;
        from(raws)
          .pipe(parse(version, () => 42))
          .subscribe({ next: (e) => events.push(e), error: (e: unknown) => (error = e ?? 'error'), complete: () => (completed = true) });
        expect(error).toBeUndefined();
        expect(completed).toBe(true);
        expect(events.length).toBe(raws.length);
        raws.forEach((raw, i) => {
          expectEvent(raw, version, events[i]!);
          // Version 1 has no framing: every binary message is a packet.
          if (version === 1 && typeof raw !== 'string') expect(events[i]!.kind).toBe('audio');
          if (typeof raw === 'string') expect(events[i]!.kind).not.toBe('audio');
        });
      }),
      { numRuns: RUNS.stream },
    );
  });
});
