import { isOpusRate } from './audio.ts';
import { isObject, parseJsonObject } from './json.ts';

// The xiaozhi device protocol (../shared/XIAOZHI.md), as the gateway speaks it to a voice-AI server.
// Pure: no sockets, no clocks. Parsing never throws on wire input; it answers with a value that says
// what was wrong, so that one bad message can be counted and skipped without touching anything else.

export type ProtocolVersion = 1 | 2 | 3;
export const PROTOCOL_VERSIONS: readonly ProtocolVersion[] = [1, 2, 3];

export interface AudioParams {
  format: 'opus';
  sample_rate: number;
  channels: number;
  frame_duration: number;
}

export type ListenMode = 'auto' | 'manual' | 'realtime';

/** Device → server. */
export type DeviceMessage =
  | { type: 'hello'; version: ProtocolVersion; features: { mcp: boolean }; transport: 'websocket'; audio_params: AudioParams }
  | { type: 'listen'; state: 'start'; mode: ListenMode; session_id: string }
  | { type: 'listen'; state: 'stop'; session_id: string }
  | { type: 'listen'; state: 'detect'; text: string; session_id: string }
  | { type: 'abort'; reason?: string; session_id: string }
  | { type: 'mcp'; payload: unknown; session_id: string };

/** Server → device, after parsing. `other` keeps rare or unknown types so that they can be relayed or counted. */
export type ServerMessage =
  /** `sampleRate` only when the server named one an Opus decoder can output. */
  | { type: 'hello'; sessionId: string; transport: string; sampleRate: number | undefined }
  | { type: 'stt'; text: string }
  | { type: 'llm'; text: string; emotion: string }
  | { type: 'tts'; state: 'start' }
  | { type: 'tts'; state: 'sentence_start'; text: string }
  | { type: 'tts'; state: 'stop' }
  | { type: 'mcp'; payload: unknown }
  | { type: 'other'; original: string; body: Record<string, unknown> };

export type JsonParse =
  | { ok: true; message: ServerMessage }
  | { ok: false; reason: 'not_json' | 'not_object' | 'too_deep' | 'no_type' | 'bad_field'; detail: string };

const KNOWN_TYPES = new Set(['hello', 'stt', 'llm', 'tts', 'mcp']);

/**
 * Parses one JSON text message from the server. Unknown types come back as `other`; a known type
 * whose fields are unusable is an error, because acting on half a message is worse than skipping it.
 */
export function parseServerJson(text: string): JsonParse {
  const parsed = parseJsonObject(text);
  if (!parsed.ok) return parsed;
  const m = parsed.value;
  if (typeof m.type !== 'string') return { ok: false, reason: 'no_type', detail: 'no string "type"' };
  if (!KNOWN_TYPES.has(m.type)) return { ok: true, message: { type: 'other', original: m.type, body: m } };
  const bad = (detail: string): JsonParse => ({ ok: false, reason: 'bad_field', detail: `${m.type}: ${detail}` });
  switch (m.type) {
    case 'hello': {
      if (typeof m.transport !== 'string') return bad('no string "transport"');
      const rate = isObject(m.audio_params) ? m.audio_params.sample_rate : undefined;
      return {
        ok: true,
        message: {
          type: 'hello',
          sessionId: typeof m.session_id === 'string' ? m.session_id : '',
          transport: m.transport,
          sampleRate: typeof rate === 'number' && isOpusRate(rate) ? rate : undefined,
        },
      };
    }
    case 'stt':
      return typeof m.text === 'string' ? { ok: true, message: { type: 'stt', text: m.text } } : bad('no string "text"');
    case 'llm':
      return {
        ok: true,
        message: { type: 'llm', text: typeof m.text === 'string' ? m.text : '', emotion: typeof m.emotion === 'string' ? m.emotion : '' },
      };
    case 'tts':
      if (m.state === 'start' || m.state === 'stop') return { ok: true, message: { type: 'tts', state: m.state } };
      if (m.state === 'sentence_start') {
        return { ok: true, message: { type: 'tts', state: 'sentence_start', text: typeof m.text === 'string' ? m.text : '' } };
      }
      return { ok: true, message: { type: 'other', original: typeof m.state === 'string' ? `tts.${m.state}` : 'tts', body: m } };
    case 'mcp':
      return isObject(m.payload)
        ? { ok: true, message: { type: 'mcp', payload: m.payload } }
        : bad('no object "payload"');
  }
  return bad('unreachable');
}

/** The device hello: Opus up, at the rate and frame length the gateway will encode with. */
export function deviceHello(version: ProtocolVersion, uplink: { sampleRate: number; frameMs: number }): DeviceMessage {
  return {
    type: 'hello',
    version,
    features: { mcp: true },
    transport: 'websocket',
    audio_params: { format: 'opus', sample_rate: uplink.sampleRate, channels: 1, frame_duration: uplink.frameMs },
  };
}

/** Accepts a server hello only as XIAOZHI.md says: type hello and transport websocket. */
export function isAcceptableHello(message: ServerMessage): message is Extract<ServerMessage, { type: 'hello' }> {
  return message.type === 'hello' && message.transport === 'websocket';
}

// Binary framing. Version 1 is one raw Opus packet per WebSocket message; versions 2 and 3 wrap it.

export const BINARY_TYPE_OPUS = 0;
export const BINARY_TYPE_JSON = 1;
const V2_HEADER = 16;
const V3_HEADER = 4;

export type BinaryParse =
  | { ok: true; kind: 'opus' | 'json'; payload: Buffer; timestamp: number }
  | { ok: false; detail: string };

/** Unwraps one binary WebSocket message. The payload is a view into `data`, not a copy. */
export function decodeBinary(version: ProtocolVersion, data: Buffer): BinaryParse {
  if (version === 1) return { ok: true, kind: 'opus', payload: data, timestamp: 0 };
  if (version === 2) {
    if (data.length < V2_HEADER) return { ok: false, detail: `v2 frame of ${data.length} bytes is shorter than its header` };
    const v = data.readUInt16BE(0);
    if (v !== 2) return { ok: false, detail: `v2 frame says version ${v}` };
    const type = data.readUInt16BE(2);
    const size = data.readUInt32BE(12);
    if (size !== data.length - V2_HEADER) return { ok: false, detail: `v2 payload size ${size} but ${data.length - V2_HEADER} bytes follow` };
    if (type !== BINARY_TYPE_OPUS && type !== BINARY_TYPE_JSON) return { ok: false, detail: `v2 frame of unknown type ${type}` };
    return { ok: true, kind: type === BINARY_TYPE_OPUS ? 'opus' : 'json', payload: data.subarray(V2_HEADER), timestamp: data.readUInt32BE(8) };
  }
  if (data.length < V3_HEADER) return { ok: false, detail: `v3 frame of ${data.length} bytes is shorter than its header` };
  const type = data.readUInt8(0);
  const size = data.readUInt16BE(2);
  if (size !== data.length - V3_HEADER) return { ok: false, detail: `v3 payload size ${size} but ${data.length - V3_HEADER} bytes follow` };
  if (type !== BINARY_TYPE_OPUS && type !== BINARY_TYPE_JSON) return { ok: false, detail: `v3 frame of unknown type ${type}` };
  return { ok: true, kind: type === BINARY_TYPE_OPUS ? 'opus' : 'json', payload: data.subarray(V3_HEADER), timestamp: 0 };
}

/** Wraps one payload for the wire. Version 3 carries at most 65535 payload bytes. */
export function encodeBinary(version: ProtocolVersion, payload: Buffer, kind: 'opus' | 'json' = 'opus', timestamp = 0): Buffer {
  if (version === 1) return payload;
  const type = kind === 'opus' ? BINARY_TYPE_OPUS : BINARY_TYPE_JSON;
  if (version === 2) {
    const out = Buffer.allocUnsafe(V2_HEADER + payload.length);
    out.writeUInt16BE(2, 0);
    out.writeUInt16BE(type, 2);
    out.writeUInt32BE(0, 4);
    out.writeUInt32BE(timestamp >>> 0, 8);
    out.writeUInt32BE(payload.length, 12);
    payload.copy(out, V2_HEADER);
    return out;
  }
  if (payload.length > 0xffff) throw new RangeError(`v3 payload of ${payload.length} bytes exceeds 65535`);
  const out = Buffer.allocUnsafe(V3_HEADER + payload.length);
  out.writeUInt8(type, 0);
  out.writeUInt8(0, 1);
  out.writeUInt16BE(payload.length, 2);
  payload.copy(out, V3_HEADER);
  return out;
}

/** Parses one JSON text message from a device: what a xiaozhi server (the simulator) reads. */
export function parseDeviceJson(text: string): { ok: true; message: Record<string, unknown> & { type: string } } | { ok: false; detail: string } {
  const parsed = parseJsonObject(text);
  if (!parsed.ok) return parsed;
  const m = parsed.value;
  if (typeof m.type !== 'string') return { ok: false, detail: 'no string "type"' };
  return { ok: true, message: m as Record<string, unknown> & { type: string } };
}
