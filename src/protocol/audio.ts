// Audio as both protocols carry it: Opus packets and 16-bit mono PCM. The one home of the numbers the
// gateway, the simulator and the clients share, so that they cannot drift apart.

/** The rates an Opus decoder outputs, and so the rates PROTOCOL.md and XIAOZHI.md allow. */
export const OPUS_RATES = [8000, 12000, 16000, 24000, 48000] as const;
export type OpusRate = (typeof OPUS_RATES)[number];

/** XIAOZHI.md: servers expect the firmware's 16 kHz uplink. */
export const XIAOZHI_UPLINK_RATE = 16000;
/** XIAOZHI.md: what servers speak when their hello does not say. */
export const XIAOZHI_DEFAULT_RATE = 24000;
/** What a speech device's encoder uses: the gateway's uplink, the simulator's echo, the CLI's utterances. */
export const OPUS_BITRATE = 24_000;
/** The largest 60 ms Opus packet: three 20 ms frames of 1275 bytes each. */
export const MAX_OPUS_PACKET_BYTES = 3 * 1275;
/** The longest packet Opus defines. */
export const MAX_OPUS_PACKET_MS = 120;

export const isOpusRate = (rate: number): rate is OpusRate => (OPUS_RATES as readonly number[]).includes(rate);

/** Bytes of one frame of 16-bit mono PCM. */
export function pcmFrameBytes(sampleRate: number, frameMs: number): number {
  return (sampleRate / 1000) * frameMs * 2;
}

/** Cuts PCM into whole frames; silence pads the last. */
export function pcmFrames(pcm: Buffer, sampleRate: number, frameMs: number): Buffer[] {
  const frameBytes = pcmFrameBytes(sampleRate, frameMs);
  const frames: Buffer[] = [];
  for (let offset = 0; offset < pcm.length; offset += frameBytes) {
    const frame = Buffer.alloc(frameBytes);
    pcm.copy(frame, 0, offset, offset + frameBytes);
    frames.push(frame);
  }
  return frames;
}

/**
 * Opus packets describe their own length: the TOC byte's config gives the frame size, its code the
 * count. 0 means unreadable, including a count that claims more than a packet can hold.
 */
export function opusPacketDurationMs(packet: Buffer): number {
  if (packet.length === 0) return 0;
  const toc = packet[0]!;
  const config = toc >> 3;
  let frameMs: number;
  if (config < 12) frameMs = [10, 20, 40, 60][config & 3]!;
  else if (config < 16) frameMs = (config & 1) === 0 ? 10 : 20;
  else frameMs = [2.5, 5, 10, 20][config & 3]!;
  const code = toc & 3;
  if (code === 0) return frameMs;
  if (code === 1 || code === 2) return 2 * frameMs;
  if (packet.length < 2) return 0;
  const ms = (packet[1]! & 0x3f) * frameMs;
  return ms <= MAX_OPUS_PACKET_MS ? ms : 0;
}
