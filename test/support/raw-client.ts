// A WebSocket client written against node:net, so that a test controls when it reads: the slow client
// of flow-control tests. It does the RFC 6455 handshake by hand, masks what it sends, and parses frames
// only while it is reading; `pause()` leaves the gateway's bytes in the kernel's buffers.
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

export interface RawReceived {
  json: Record<string, any>[];
  binary: Buffer[];
  /** Everything in arrival order: a JSON message, or 'audio' for a binary frame. */
  order: (Record<string, any> | 'audio')[];
  /** The close frame from the server, once parsed. */
  close: { code: number; reason: string } | undefined;
  /** Bytes of WebSocket frames taken off the socket so far. */
  bytes: number;
}

export class RawClient {
  readonly received: RawReceived = { json: [], binary: [], order: [], close: undefined, bytes: 0 };
  readonly errors: Error[] = [];
  /** Resolves when the TCP connection is gone (either side). */
  readonly ended: Promise<void>;
  private buffer: Buffer = Buffer.alloc(0);
  private fragments: { opcode: number; parts: Buffer[] } | undefined;
  private conditions: { test: (r: RawReceived) => boolean; resolve: () => void; reject: (e: Error) => void }[] = [];
  private ended_ = false;

  private constructor(private readonly socket: Socket) {
    socket.on('error', (error) => this.errors.push(error));
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => {
      this.ended_ = true;
      this.check();
    });
  }

  /** Opens a TCP connection and upgrades it; rejects unless the answer is 101 with the right accept key. */
  static async connect(port: number, path = '/v1/voice', host = '127.0.0.1'): Promise<RawClient> {
    const socket = connect({ port, host, noDelay: true });
    const client = new RawClient(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const key = randomBytes(16).toString('base64');
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const rest = await new Promise<Buffer>((resolve, reject) => {
      let head = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        socket.off('data', onData);
        socket.off('close', onClose);
        const lines = head.subarray(0, end).toString('latin1').split('\r\n');
        const accept = lines.find((l) => /^sec-websocket-accept:/i.test(l))?.split(':')[1]?.trim();
        const expected = createHash('sha1').update(key + GUID).digest('base64');
        if (!/^HTTP\/1\.1 101 /.test(lines[0] ?? '') || accept !== expected) {
          socket.destroy();
          reject(new Error(`upgrade refused: ${lines[0]}`));
          return;
        }
        // The socket keeps flowing until the first pause(): frames may follow the headers at once.
        socket.pause();
        resolve(head.subarray(end + 4));
      };
      const onClose = () => reject(new Error('connection closed during the upgrade'));
      socket.on('data', onData);
      socket.once('close', onClose);
    });
    client.buffer = rest;
    socket.on('data', (chunk: Buffer) => client.onData(chunk));
    client.parse();
    socket.resume();
    return client;
  }

  /** Stops reading: what the server sends piles up in the kernel's buffers, then in the server's. */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  send(message: unknown): void {
    this.frame(OP_TEXT, Buffer.from(typeof message === 'string' ? message : JSON.stringify(message), 'utf8'));
  }

  sendBinary(data: Buffer): void {
    this.frame(OP_BINARY, data);
  }

  /** Sends one binary message as `parts` frames of about equal size: a first frame and continuations. */
  sendFragmented(data: Buffer, parts: number): void {
    const size = Math.ceil(data.length / parts);
    for (let i = 0; i < parts; i++) {
      const fin = i === parts - 1;
      this.frame(i === 0 ? OP_BINARY : OP_CONTINUATION, data.subarray(i * size, fin ? data.length : (i + 1) * size), fin);
    }
  }

  /** Sends a close frame; the server answers with its own and ends the connection. */
  sendClose(code = 1000, reason = ''): void {
    const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
    payload.writeUInt16BE(code, 0);
    payload.write(reason, 2);
    this.frame(OP_CLOSE, payload);
  }

  /** Resolves once what was received (and parsed) satisfies `test`; rejects if the connection ends first. */
  until(test: (received: RawReceived) => boolean): Promise<void> {
    if (test(this.received)) return Promise.resolve();
    if (this.ended_) return Promise.reject(this.endedError());
    return new Promise((resolve, reject) => this.conditions.push({ test, resolve, reject }));
  }

  /** Ends the TCP connection now. */
  destroy(): void {
    this.socket.destroy();
  }

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  private frame(opcode: number, payload: Buffer, fin = true): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    const mask = randomBytes(4);
    const n = payload.length;
    const header = n < 126 ? Buffer.alloc(2) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
    header[0] = (fin ? 0x80 : 0) | opcode;
    if (n < 126) header[1] = 0x80 | n;
    else if (n < 65536) {
      header[1] = 0x80 | 126;
      header.writeUInt16BE(n, 2);
    } else {
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(n), 2);
    }
    const masked = Buffer.alloc(n);
    for (let i = 0; i < n; i++) masked[i] = payload[i]! ^ mask[i & 3]!;
    this.socket.write(Buffer.concat([header, mask, masked]));
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.parse();
  }

  private parse(): void {
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) break;
      const fin = (b[0]! & 0x80) !== 0;
      const opcode = b[0]! & 0x0f;
      const masked = (b[1]! & 0x80) !== 0;
      let length = b[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (b.length < 4) break;
        length = b.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (b.length < 10) break;
        length = Number(b.readBigUInt64BE(2));
        offset = 10;
      }
      const maskKey = masked ? b.subarray(offset, offset + 4) : undefined;
      if (masked) offset += 4;
      if (b.length < offset + length) break;
      let payload = Buffer.from(b.subarray(offset, offset + length));
      if (maskKey !== undefined) payload = Buffer.from(payload.map((x, i) => x ^ maskKey[i & 3]!));
      this.buffer = b.subarray(offset + length);
      this.received.bytes += offset + length;
      this.onFrame(fin, opcode, payload);
    }
    this.check();
  }

  private onFrame(fin: boolean, opcode: number, payload: Buffer): void {
    if (opcode === OP_PING) return this.frame(OP_PONG, payload);
    if (opcode === OP_PONG) return;
    if (opcode === OP_CLOSE) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this.received.close = { code, reason: payload.subarray(2).toString('utf8') };
      // Answer the close, as RFC 6455 asks; the server then ends the TCP connection.
      this.frame(OP_CLOSE, payload.subarray(0, 2));
      return;
    }
    if (opcode === OP_CONTINUATION) {
      if (this.fragments === undefined) return;
      this.fragments.parts.push(payload);
      if (!fin) return;
      const whole = Buffer.concat(this.fragments.parts);
      const first = this.fragments.opcode;
      this.fragments = undefined;
      return this.onMessage(first, whole);
    }
    if (!fin) {
      this.fragments = { opcode, parts: [payload] };
      return;
    }
    this.onMessage(opcode, payload);
  }

  private onMessage(opcode: number, payload: Buffer): void {
    if (opcode === OP_BINARY) {
      this.received.binary.push(payload);
      this.received.order.push('audio');
      return;
    }
    const message = JSON.parse(payload.toString('utf8')) as Record<string, any>;
    this.received.json.push(message);
    this.received.order.push(message);
  }

  private check(): void {
    this.conditions = this.conditions.filter((c) => {
      if (c.test(this.received)) c.resolve();
      else if (this.ended_) c.reject(this.endedError());
      else return true;
      return false;
    });
  }

  private endedError(): Error {
    return new Error(`connection ended first: last messages ${JSON.stringify(this.received.json.slice(-3))}, close ${JSON.stringify(this.received.close)}`);
  }
}
