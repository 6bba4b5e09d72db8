import { Observable } from 'rxjs';
import WebSocket from 'ws';
import {
  deviceHello,
  encodeBinary,
  isAcceptableHello,
  parseServerJson,
  type DeviceMessage,
  type ProtocolVersion,
} from '../protocol/xiaozhi.ts';
import type { RawUpstream } from '../streams/events.ts';

/** Where one connection goes and as which device: fixed, or handed out per device by an OTA server. */
export interface UpstreamTarget {
  url: string;
  token: string | undefined;
  deviceId: string;
  clientId: string;
}

export interface UpstreamOptions {
  protocolVersion: ProtocolVersion;
  helloTimeoutMs: number;
  maxMessageBytes: number;
  /** What the gateway will send up: Opus at this rate and frame length. */
  uplink: { sampleRate: number; frameMs: number };
}

/** About 10 s of 24 kbit/s Opus: well past any hiccup, well short of a memory problem. */
const MAX_UPLINK_BUFFERED_BYTES = 32 * 1024;

export type UpstreamErrorKind = 'connect' | 'hello_timeout' | 'bad_hello' | 'closed' | 'socket' | 'stall' | 'not_reading';

export class UpstreamError extends Error {
  override name = 'UpstreamError';
  constructor(
    readonly kind: UpstreamErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** Device messages as the session writes them; the upstream adds the server's session_id. */
export type UpstreamMessage = DeviceMessage extends infer M ? (M extends { session_id: string } ? Omit<M, 'session_id'> : never) : never;

/**
 * One xiaozhi device session with a server, over one connection at a time. `connect(target)` is cold:
 * each subscription opens a WebSocket with the xiaozhi upgrade headers, sends the device hello, and emits
 * the server's hello (raw, like every message after it) once it is acceptable. It errors with an
 * UpstreamError when the server is unreachable, does not answer hello in time, answers wrongly, or
 * closes; unsubscribing closes the socket.
 */
export class Upstream {
  private socket: WebSocket | undefined;
  private serverSessionId = '';

  constructor(private readonly options: UpstreamOptions) {}

  connect(target: UpstreamTarget): Observable<RawUpstream> {
    return new Observable<RawUpstream>((subscriber) => {
      const o = this.options;
      const headers: Record<string, string> = { 'Protocol-Version': String(o.protocolVersion), 'Device-Id': target.deviceId, 'Client-Id': target.clientId };
      // As the firmware: "Bearer " unless the token already names its scheme.
      if (target.token !== undefined) headers.Authorization = target.token.includes(' ') ? target.token : `Bearer ${target.token}`;
      const socket = new WebSocket(target.url, { headers, perMessageDeflate: false, maxPayload: o.maxMessageBytes, handshakeTimeout: o.helloTimeoutMs });
      let helloDone = false;
      const fail = (kind: UpstreamErrorKind, message: string) => {
        if (!subscriber.closed) subscriber.error(new UpstreamError(kind, message));
      };
      const helloTimer = setTimeout(() => fail('hello_timeout', `no hello from the upstream within ${o.helloTimeoutMs} ms`), o.helloTimeoutMs);

      socket.on('open', () => {
        socket.send(JSON.stringify(deviceHello(o.protocolVersion, o.uplink)));
      });
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (helloDone) {
          subscriber.next(isBinary ? data : data.toString('utf8'));
          return;
        }
        const text = isBinary ? '' : data.toString('utf8');
        const parsed = parseServerJson(text);
        if (!parsed.ok || !isAcceptableHello(parsed.message)) {
          fail('bad_hello', `the upstream's first message is not an acceptable hello: ${text.slice(0, 120) || '<binary>'}`);
          return;
        }
        helloDone = true;
        clearTimeout(helloTimer);
        this.serverSessionId = parsed.message.sessionId;
        this.socket = socket;
        subscriber.next(text);
      });
      socket.on('error', (error: Error) => {
        fail(helloDone ? 'socket' : 'connect', error.message);
      });
      socket.on('close', (code: number, reason: Buffer) => {
        fail(helloDone ? 'closed' : 'connect', `upstream closed (${code}${reason.length > 0 ? ` ${reason.toString('utf8')}` : ''})`);
      });

      return () => {
        clearTimeout(helloTimer);
        if (this.socket === socket) this.socket = undefined;
        socket.removeAllListeners();
        // ws reports errors after close too; without a listener they would be thrown.
        socket.on('error', () => {});
        // A close handshake would keep unsent bytes alive until ws gives up on it: an upstream that
        // does not read them gets the connection cut instead.
        if (socket.readyState === WebSocket.OPEN && socket.bufferedAmount === 0) socket.close(1000);
        else socket.terminate();
      };
    });
  }

  /** Bytes sent but not yet taken by the upstream's connection: what a server that stops reading leaves here. */
  get bufferedAmount(): number {
    return this.socket?.bufferedAmount ?? 0;
  }

  /** Sends a control message once the hello is done; without an open session there is nobody to tell. */
  send(message: UpstreamMessage): void {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ ...message, session_id: this.serverSessionId }));
  }

  /**
   * Sends one Opus packet, framed for the protocol version. False when it cannot go: no open session,
   * or an upstream that has not taken the last second or so of audio (a client sending faster than
   * real time must not grow the gateway's memory).
   */
  sendAudio(packet: Buffer): boolean {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== WebSocket.OPEN || socket.bufferedAmount > MAX_UPLINK_BUFFERED_BYTES) return false;
    socket.send(encodeBinary(this.options.protocolVersion, packet));
    return true;
  }
}
