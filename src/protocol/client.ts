import { z } from 'zod';
import { MAX_OPUS_PACKET_BYTES, OPUS_RATES, opusPacketDurationMs } from './audio.ts';
import { isObject, parseJsonObject } from './json.ts';

// The client protocol, version 1 (../shared/PROTOCOL.md; docs/protocol.md). Pure: parsing answers with
// a value that says what was wrong, so that a bad message is answered with an error and the session goes on.

export const PROTOCOL_VERSION = 1;
/** Any rate an Opus decoder outputs, either way. */
export const DOWNLINK_RATES = OPUS_RATES;
/** A ping's id is echoed in its pong; past this (as JSON) the ping is a bad_message. */
export const MAX_PING_ID_CHARS = 256;
/** A playout figure past a year of audio is not a measurement. */
const MAX_PLAYOUT_MS = 365 * 24 * 3600 * 1000;
/** Opus frame lengths the gateway can encode uplink PCM into. */
export const UPLINK_FRAME_MS = [20, 40, 60] as const;

const oneOf = <T extends number>(values: readonly T[]) =>
  z.number().refine((v): v is T => (values as readonly number[]).includes(v), { message: `must be one of ${values.join(', ')}` });

const helloSchema = z.object({
  type: z.literal('hello'),
  version: z.literal(PROTOCOL_VERSION, { message: `version must be ${PROTOCOL_VERSION}` }).default(PROTOCOL_VERSION),
  downlink: z
    .object({
      codec: z.enum(['pcm16', 'opus']).default('pcm16'),
      sampleRate: oneOf(DOWNLINK_RATES).default(24000),
      transport: z.enum(['binary', 'json']).default('binary'),
    })
    .prefault({}),
  uplink: z
    .object({
      codec: z.enum(['opus', 'pcm16']).default('opus'),
      sampleRate: oneOf(DOWNLINK_RATES).default(16000),
      frameMs: oneOf(UPLINK_FRAME_MS).default(60),
    })
    .prefault({}),
  pacing: z
    .object({
      mode: z.enum(['none', 'realtime']).default('none'),
      prebufferMs: z.number().int().min(0).max(5000).default(0),
    })
    .prefault({}),
});

export type ClientHello = z.infer<typeof helloSchema>;
export type Downlink = ClientHello['downlink'];
export type Uplink = ClientHello['uplink'];
export type Pacing = ClientHello['pacing'];

const listenSchema = z.discriminatedUnion('state', [
  z.object({ type: z.literal('listen'), state: z.literal('start'), mode: z.enum(['auto', 'manual', 'realtime']).default('auto') }),
  z.object({ type: z.literal('listen'), state: z.literal('stop') }),
]);

const messageSchemas = {
  hello: helloSchema,
  listen: listenSchema,
  text: z.object({ type: z.literal('text'), text: z.string().min(1).max(4096) }),
  abort: z.object({ type: z.literal('abort') }),
  // Not z.record: it reads `payload.constructor.prototype`, which a JSON key "constructor" makes throw.
  mcp: z.object({ type: z.literal('mcp'), payload: z.custom<Record<string, unknown>>(isObject, { message: 'expected a JSON object' }) }),
  // What a client that plays the audio hears (PROTOCOL.md): counted for operators, never relayed.
  playout: z.object({
    type: z.literal('playout'),
    bufferedMs: z.number().nonnegative().max(MAX_PLAYOUT_MS),
    underruns: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    playedMs: z.number().nonnegative().max(MAX_PLAYOUT_MS),
  }),
  // The id is echoed back, so its size is bounded: a pong must not cost what a client chose.
  ping: z.object({
    type: z.literal('ping'),
    id: z.unknown().refine((id) => id === undefined || JSON.stringify(id).length <= MAX_PING_ID_CHARS, {
      message: `at most ${MAX_PING_ID_CHARS} characters as JSON`,
    }),
  }),
} as const;

export type ClientMessageType = keyof typeof messageSchemas;
export type ClientMessage = { [K in ClientMessageType]: z.infer<(typeof messageSchemas)[K]> }[ClientMessageType];

export type ClientParse = { ok: true; message: ClientMessage } | { ok: false; reason: 'not_json' | 'no_type' | 'unknown_type' | 'bad_field'; detail: string };

/** Parses one client text frame. Unknown fields are ignored, as a newer client may send more. */
export function parseClientMessage(text: string): ClientParse {
  const json = parseJsonObject(text);
  if (!json.ok) {
    const detail = json.reason === 'too_deep' ? `a message may not be ${json.detail}` : 'text frames must carry one JSON object';
    return { ok: false, reason: json.reason === 'too_deep' ? 'bad_field' : 'not_json', detail };
  }
  const body = json.value;
  const type = body.type;
  if (typeof type !== 'string') return { ok: false, reason: 'no_type', detail: 'a message needs a string "type"' };
  if (!Object.hasOwn(messageSchemas, type)) return { ok: false, reason: 'unknown_type', detail: `unknown message type "${type.slice(0, 64)}"` };
  const parsed = messageSchemas[type as ClientMessageType].safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    return { ok: false, reason: 'bad_field', detail: `${type}: ${where}${issue?.message ?? 'invalid'}` };
  }
  return { ok: true, message: parsed.data as ClientMessage };
}

/** The parameters in force for a session: what the client asked for, with what the gateway decided. */
export interface Negotiated {
  downlink: Downlink;
  uplink: Uplink;
  pacing: Pacing;
}

/**
 * What the gateway grants. PCM downlink is decoded straight to the requested rate; Opus downlink passes
 * the upstream's packets through untouched, so its rate is the upstream's and the request's rate is moot.
 */
export function negotiate(hello: ClientHello, upstreamRate: number): Negotiated {
  const downlink = hello.downlink.codec === 'opus' ? { ...hello.downlink, sampleRate: upstreamRate } : hello.downlink;
  return { downlink, uplink: hello.uplink, pacing: hello.pacing };
}

/**
 * What is wrong with one binary frame of uplink audio in the negotiated codec, or undefined: pcm16
 * frames hold whole samples; an Opus frame is one packet whose TOC byte reads.
 */
export function uplinkAudioProblem(codec: Uplink['codec'], data: Buffer): string | undefined {
  if (codec === 'pcm16') return data.length % 2 === 0 ? undefined : `pcm16 frames hold whole 16-bit samples: ${data.length} bytes is odd`;
  if (data.length === 0 || data.length > MAX_OPUS_PACKET_BYTES || opusPacketDurationMs(data) === 0) {
    return `not an Opus packet: ${data.length} bytes (at most ${MAX_OPUS_PACKET_BYTES})`;
  }
  return undefined;
}

export type ErrorCode =
  | 'bad_message'
  | 'bad_audio'
  | 'hello_required'
  | 'upstream_unavailable'
  | 'upstream_lost'
  | 'too_slow'
  | 'overloaded'
  | 'activation_timeout'
  | 'internal';

export type SessionState = 'ready' | 'listening' | 'processing' | 'speaking' | 'reconnecting';

/** Gateway → client. */
export type ServerMessage =
  | ({ type: 'hello'; version: typeof PROTOCOL_VERSION; sessionId: string } & Negotiated)
  | { type: 'state'; state: SessionState }
  | { type: 'user_text'; text: string }
  | { type: 'assistant_text'; text: string }
  | { type: 'emotion'; emotion: string; emoji: string }
  | { type: 'audio_frame'; seq: number; data: string }
  | { type: 'mcp'; payload: unknown }
  | { type: 'error'; code: ErrorCode; message: string }
  | { type: 'activation'; code: string; message: string }
  | { type: 'pong'; id: unknown };

/**
 * One thing to write to a client socket, in order: audio (binary PCM or Opus, or a json `audio_frame`)
 * or a text message. Only audio may be dropped; `state` messages mark reply boundaries for the sink,
 * `discard` (abort) drops every audio frame still waiting, and `end` closes the socket once everything
 * before it has been written.
 */
export type ClientFrame =
  | { readonly kind: 'audio'; readonly data: Buffer | string; readonly arrivedAt: number; readonly durationMs: number }
  | { readonly kind: 'text' | 'state'; readonly data: string }
  | { readonly kind: 'discard' }
  | ClientEnd;

export interface ClientEnd {
  readonly kind: 'end';
  readonly code: number;
  readonly reason: string;
}

export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  tooBig: 1009,
  internal: 1011,
  tryAgainLater: 1013,
  helloTimeout: 4001,
  upstreamUnavailable: 4002,
  tooSlow: 4003,
} as const;
