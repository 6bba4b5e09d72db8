// The messages of docs/protocol.md that this page sends and reads.

export type GatewayState = 'ready' | 'listening' | 'processing' | 'speaking' | 'reconnecting';

interface DownlinkParams {
  codec: 'pcm16' | 'opus';
  sampleRate: number;
}

export type GatewayMessage =
  | { type: 'hello'; version: number; sessionId: string; downlink: DownlinkParams }
  | { type: 'state'; state: GatewayState }
  | { type: 'user_text'; text: string }
  | { type: 'assistant_text'; text: string }
  | { type: 'emotion'; emotion: string; emoji: string }
  | { type: 'activation'; code: string; message: string }
  | { type: 'error'; code: string; message: string }
  | { type: 'pong'; id: unknown }
  | { type: 'mcp'; payload: unknown };

export type ClientMessage =
  | {
      type: 'hello';
      version: 1;
      downlink: { codec: 'pcm16' | 'opus'; sampleRate?: number; transport: 'binary' };
      uplink: { codec: 'pcm16'; sampleRate: number; frameMs: number };
    }
  | { type: 'listen'; state: 'start'; mode: 'manual' | 'auto' }
  | { type: 'listen'; state: 'stop' }
  | { type: 'text'; text: string }
  | { type: 'abort' }
  | { type: 'ping'; id: string }
  | { type: 'mcp'; payload: Record<string, unknown> }
  | { type: 'playout'; bufferedMs: number; underruns: number; playedMs: number };
