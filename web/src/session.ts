// One WebSocket to /v1/voice at a time: the hello at open, messages and audio in, and a new connection,
// after a growing wait, when the close says to try again later or the connection dropped.
import type { ClientMessage, GatewayMessage } from './protocol.ts';

/** Shutting down (1001), at capacity (1013), voice service unavailable (4002): worth another try. */
const RETRY_CODES: ReadonlySet<number> = new Set([1001, 1013, 4002]);
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
/** Tries without a session coming up before the page stops trying by itself (about 4 minutes of waits). */
const MAX_RETRIES = 10;
/**
 * Microphone audio waiting in the socket past this (about 2 s of 16 kHz pcm16) is a link that cannot
 * carry it: further chunks are dropped rather than queued, so that what the gateway hears is not
 * seconds late, and the page's memory does not grow.
 */
const UPLINK_HIGH_WATER = 64 * 1024;

/** How a connection ended: whether it had opened, and what happens next. */
export interface CloseNext {
  /** The WebSocket had opened: a 1006 then is a dropped connection, not a refused one. */
  opened: boolean;
  /** A new connection will be tried after this long. */
  retryInMs?: number;
  /** It was worth another try, but the page has tried MAX_RETRIES times in a row. */
  gaveUp?: boolean;
}

export interface SessionEvents {
  connecting(): void;
  message(message: GatewayMessage): void;
  audio(frame: ArrayBuffer): void;
  /** A text frame that is not a JSON object with a type: ignored. */
  unreadable(): void;
  closed(code: number, reason: string, next: CloseNext): void;
}

export class Session {
  /** Microphone chunks dropped because the socket was backed up (UPLINK_HIGH_WATER). */
  uplinkDropped = 0;
  private ws: WebSocket | undefined;
  /** The gateway's hello has come on the current connection: audio may go up. */
  private up = false;
  /** Tries since the last session that came up: the wait doubles with each. */
  private retries = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Waiting for the page to be visible again before the next try. */
  private wake: (() => void) | undefined;

  constructor(
    private readonly url: () => string,
    private readonly hello: () => ClientMessage,
    private readonly events: SessionEvents,
  ) {}

  /** A new connection, asked for by the user (or the page): the count of automatic tries starts again. */
  connect(): void {
    this.retries = 0;
    this.open();
  }

  /** Sends when connected; returns whether it did. */
  send(message: ClientMessage): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Sends microphone audio once the session is up (before, the gateway refuses it); returns whether it did. */
  sendAudio(pcm: Int16Array): boolean {
    if (!this.up || this.ws?.readyState !== WebSocket.OPEN) return false;
    if (this.ws.bufferedAmount > UPLINK_HIGH_WATER) {
      this.uplinkDropped++;
      return false;
    }
    this.ws.send(pcm);
    return true;
  }

  /** Ends the session (1000) and any wait for the next try; no event follows. */
  close(): void {
    clearTimeout(this.retryTimer);
    if (this.wake !== undefined) document.removeEventListener('visibilitychange', this.wake);
    this.wake = undefined;
    const ws = this.ws;
    this.ws = undefined;
    this.up = false;
    ws?.close(1000);
  }

  private open(): void {
    this.close();
    const ws = new WebSocket(this.url());
    let opened = false;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify(this.hello()));
    };
    ws.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
      if (typeof e.data !== 'string') return this.events.audio(e.data);
      const message = parse(e.data);
      if (message === undefined) return this.events.unreadable();
      if (message.type === 'hello') {
        this.retries = 0;
        this.up = true;
      }
      this.events.message(message);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = undefined;
      this.up = false;
      // A connection that had opened and then dropped without a close frame (1006) is a network's or a
      // restarted gateway's doing: worth another try, as a close that says so is.
      const worthRetry = RETRY_CODES.has(e.code) || (e.code === 1006 && opened);
      const gaveUp = worthRetry && this.retries >= MAX_RETRIES;
      const retryInMs = worthRetry && !gaveUp ? this.backoff() : undefined;
      if (retryInMs !== undefined) this.retryTimer = setTimeout(() => this.retry(), retryInMs);
      this.events.closed(e.code, e.reason, { opened, retryInMs, gaveUp });
    };
    this.ws = ws;
    this.events.connecting();
  }

  /** A page in the background does not try: it waits until it is seen again (and tries at once then). */
  private retry(): void {
    if (!document.hidden) return this.open();
    const wake = () => {
      if (document.hidden) return;
      document.removeEventListener('visibilitychange', wake);
      this.wake = undefined;
      this.open();
    };
    this.wake = wake;
    document.addEventListener('visibilitychange', wake);
  }

  /** Doubling from 1 s up to 30 s, ±20 % so that many pages refused at once do not come back at once. */
  private backoff(): number {
    const base = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.retries++);
    return Math.round(base * (0.8 + 0.4 * Math.random()));
  }
}

/** A gateway message, or undefined for text that is not a JSON object with a string `type`. */
function parse(text: string): GatewayMessage | undefined {
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string') return undefined;
    return value as GatewayMessage;
  } catch {
    return undefined;
  }
}
