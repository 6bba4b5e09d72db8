// Failures the simulator injects on purpose, as real servers and networks fail: a connection closed or
// stalled mid-reply, a message that is not JSON, audio no decoder accepts, a message far too large.
import type { Sentence } from './speech.ts';

/**
 * An upstream failure, injected in each reply (speech or echo) right after its first `afterFrames` audio
 * frames (0: right after `tts start`); a reply with fewer frames never meets it.
 * - `close`: closes with `closeCode` (default 1011; a code ws may send, e.g. 1000, 1011, 4000-4999), or
 *   with 1006 destroys the TCP connection without a close frame.
 * - `stall`: from then on sends nothing (no more audio, no `tts stop`) and answers nothing, yet stays open.
 * - `malformed-json`: one text message that is not JSON, then the reply goes on.
 * - `garbage-binary`: one extra audio message, framed for the protocol version, whose payload is
 *   GARBAGE_PACKET; then the reply goes on.
 * - `oversized`: one unframed binary message of `oversizedBytes` (default 2 MiB, beyond a sane maximum
 *   message size), then the reply goes on as long as the peer stays.
 */
export interface Fault {
  kind: 'close' | 'stall' | 'malformed-json' | 'garbage-binary' | 'oversized';
  afterFrames: number;
  closeCode?: number;
  oversizedBytes?: number;
}

/**
 * A well-formed TOC (hybrid fullband 20 ms, code 3: three CBR frames, 60 ms like the fixture's packets)
 * whose 4 payload bytes cannot split into 3 equal frames, so opus_decode answers OPUS_INVALID_PACKET.
 */
export const CORRUPT_PACKET: Buffer = Buffer.from([0x6b, 0x03, 0x00, 0x00, 0x00, 0x00]);

/** The `garbage-binary` fault's payload: random bytes behind a TOC of code 3 that counts zero frames, which no decoder accepts. */
export const GARBAGE_PACKET: Buffer = Buffer.from('0300a7f15c3e9b20d4680e7fc2195a8b3d61e4f0', 'hex');

/** The `oversized` fault's message size unless it says otherwise. */
const OVERSIZED_BYTES = 2 * 1024 * 1024;

/** The session a fault strikes. */
export interface FaultTarget {
  close(code: number): void;
  /** Sends nothing and answers nothing from now on, yet stays open. */
  stall(): void;
  send(data: string | Buffer): void;
  /** Frames a packet for the session's protocol version. */
  sendAudio(packet: Buffer): void;
}

/** Injects the fault if it is due after `framesSent` frames of a reply; false when the reply must go no further. */
export function strike(fault: Fault | undefined, framesSent: number, session: FaultTarget): boolean {
  if (fault === undefined || fault.afterFrames !== framesSent) return true;
  switch (fault.kind) {
    case 'close':
      session.close(fault.closeCode ?? 1011);
      return false;
    case 'stall':
      session.stall();
      return false;
    case 'malformed-json':
      session.send('{"type":"tts",');
      return true;
    case 'garbage-binary':
      session.sendAudio(GARBAGE_PACKET);
      return true;
    case 'oversized':
      session.send(Buffer.alloc(fault.oversizedBytes ?? OVERSIZED_BYTES));
      return true;
  }
}

/** The speech with its chosen frames (counted from 0 over all its sentences) sent as CORRUPT_PACKET instead. */
export function corruptFrames(sentences: Sentence[], frames: readonly number[]): Sentence[] {
  const chosen = new Set(frames);
  let n = 0;
  return sentences.map((s) => ({ text: s.text, packets: s.packets.map((p) => (chosen.has(n++) ? CORRUPT_PACKET : p)) }));
}
