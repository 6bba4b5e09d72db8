import type { ServerMessage as XiaozhiMessage } from '../protocol/xiaozhi.ts';

// What flows downlink between the operators: from the upstream socket, audio on to the client and control
// messages to the session actor.

/** An upstream WebSocket message as it came off the socket: text is JSON, binary is framed audio. */
export type RawUpstream = string | Buffer;

/** One frame of speech. `data` is an Opus packet before decodeOpus and PCM after it (pcm16 downlink). */
export interface AudioFrame {
  readonly kind: 'audio';
  readonly data: Buffer;
  /** performance.now() when the packet came off the upstream socket: the start of frame latency. */
  readonly arrivedAt: number;
  /** The audio's length: what the slow-client queue and pacing count in. */
  readonly durationMs: number;
  /** Made by packet-loss concealment in place of a packet that would not decode. */
  readonly concealed: boolean;
}

export interface UpstreamControl {
  readonly kind: 'message';
  readonly message: XiaozhiMessage;
}

/** An upstream message that could not be used; it is counted and skipped, never fatal. */
export interface UpstreamInvalid {
  readonly kind: 'invalid';
  readonly detail: string;
}

export type UpstreamEvent = AudioFrame | UpstreamControl | UpstreamInvalid;
