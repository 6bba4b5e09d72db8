// Audio as the load tool sees it: how long a downlink frame plays.

/** Frame sizes in ms by TOC configuration (RFC 6716, 3.1): SILK 0-11, Hybrid 12-15, CELT 16-31. */
function opusFrameMs(config: number): number {
  if (config < 12) return [10, 20, 40, 60][config % 4]!;
  if (config < 16) return [10, 20][config % 2]!;
  return [2.5, 5, 10, 20][config % 4]!;
}

/**
 * How long an Opus packet plays, from its TOC byte; undefined for an empty or unreadable packet (a lost
 * packet, which a decoder conceals with a frame as long as the one before).
 */
export function opusPacketMs(packet: Uint8Array): number | undefined {
  const toc = packet[0];
  if (toc === undefined) return undefined;
  const code = toc & 3;
  const frames = code === 0 ? 1 : code < 3 ? 2 : (packet[1] ?? 0) & 0x3f;
  return frames === 0 ? undefined : frames * opusFrameMs(toc >> 3);
}

/** How long a downlink frame plays: pcm16 by its length, Opus by its TOC. */
export function frameMs(codec: 'pcm16' | 'opus', sampleRate: number, payload: Uint8Array, previousMs: number): number {
  if (codec === 'pcm16') return (payload.length / 2 / sampleRate) * 1000;
  return opusPacketMs(payload) ?? previousMs;
}
