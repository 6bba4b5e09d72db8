// One WebSocket to /v1/voice at a time: the hello at open, messages and audio in, and a new connection,
// after a growing wait, when the gateway's close says to try again later.
import type { ClientMessage, GatewayMessage } from './protocol.ts';

/** Shutting down (1001), at capacity (1013), voice service unavailable (4002): worth another try. */
export const RETRY_CODES: ReadonlySet<number> = new Set([1001, 1013, 4002]);
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;

export interface SessionEvents {
  connecting(): void;
  message(message: GatewayMessage): void;
  audio(frame: ArrayBuffer): void;
  /** The connection closed; `retryInMs` when a new one will be tried after that long. */
  closed(code: number, reason: string, retryInMs: number | undefined): void;
}

export class Session {
  private ws: WebSocket | undefined;
  /** Tries since the last session that came up: the wait doubles with each. */
  private retries = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly url: () => string,
    private readonly hello: () => ClientMessage,
    private readonly events: SessionEvents,
  ) {}

  connect(): void {
    this.close();
    const ws = new WebSocket(this.url());
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws.send(JSON.stringify(this.hello()));
    ws.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      if (typeof e.data !== 'string') return this.events.audio(e.data);
      const message = JSON.parse(e.data) as GatewayMessage;
      if (message.type === 'hello') this.retries = 0;
      this.events.message(message);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = undefined;
      const retryInMs = RETRY_CODES.has(e.code) ? this.backoff() : undefined;
      if (retryInMs !== undefined) this.retryTimer = setTimeout(() => this.connect(), retryInMs);
      this.events.closed(e.code, e.reason, retryInMs);
    };
    this.ws = ws;
    this.events.connecting();
  }

  /** Sends when connected; returns whether it did. */
  send(message: ClientMessage): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  sendAudio(pcm: Int16Array): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(pcm);
  }

  /** Ends the session (1000) and any wait for the next try; no event follows. */
  close(): void {
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000);
  }

  /** Doubling from 1 s up to 30 s, ±20 % so that many pages refused at once do not come back at once. */
  private backoff(): number {
    const base = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.retries++);
    return Math.round(base * (0.8 + 0.4 * Math.random()));
  }
}
