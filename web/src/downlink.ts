// The reply's audio on its way from the socket to the player: which codec to ask for, pcm16 converted or
// Opus decoded, and what a barge-in must keep from playing.
import { OpusStream } from './opus.ts';
import type { Player } from './player.ts';

/** The rates a pcm16 downlink may have (docs/protocol.md, hello). */
const PCM_RATES = [8000, 12000, 16000, 24000, 48000];

export interface DownlinkChoice {
  codec: 'opus' | 'pcm16';
  /** For pcm16: the rate asked for. */
  sampleRate: number;
}

/**
 * Opus where the browser decodes it (WebCodecs), else pcm16 at the AudioContext's own rate when the
 * gateway can give it, else 48000 (the player resamples). `forced` (?downlink=) picks one for tests.
 */
export function chooseDownlink(forced: string | null, contextRate: number): DownlinkChoice {
  const sampleRate = PCM_RATES.includes(contextRate) ? contextRate : 48000;
  const opus = typeof AudioDecoder !== 'undefined';
  return { codec: forced === 'pcm16' || !opus ? 'pcm16' : 'opus', sampleRate };
}

export class Downlink {
  private opus: OpusStream | undefined;
  private sampleRate = 48000;
  /** After a barge-in during a reply: frames still arriving belong to it, until the gateway's next state. */
  private discarding = false;

  constructor(
    private readonly player: Player,
    private readonly onError: (message: string) => void,
  ) {}

  /** A session began with these downlink parameters (the gateway's hello). */
  start(downlink: { codec: string; sampleRate: number }): void {
    this.stop();
    this.sampleRate = downlink.sampleRate;
    if (downlink.codec === 'opus') this.opus = new OpusStream(downlink.sampleRate, (samples, rate) => this.player.push(samples, rate), this.onError);
    this.player.flush();
  }

  /** One binary frame from the gateway. */
  frame(data: ArrayBuffer): void {
    if (this.discarding) return;
    if (this.opus !== undefined) return this.opus.packet(data);
    // Typed arrays read the platform's byte order: little-endian, as pcm16 is, wherever browsers run.
    const pcm = new Int16Array(data, 0, data.byteLength >> 1);
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i]! / 32768;
    this.player.push(samples, this.sampleRate);
  }

  /** The gateway's state changed: the interrupted reply's frames have all arrived; `replyOver` when speaking ended. */
  state(replyOver: boolean): void {
    this.discarding = false;
    if (!replyOver) return;
    if (this.opus !== undefined) this.opus.after(() => this.player.end());
    else this.player.end();
  }

  /** Barge-in or abort: the player goes silent; during a reply (`speaking`) its frames still in flight go too. */
  interrupt(speaking: boolean): void {
    this.discarding = speaking;
    this.opus?.drop();
    this.player.flush();
  }

  /** The session is gone: no more frames come, and what is buffered plays out. */
  stop(): void {
    this.opus?.close();
    this.opus = undefined;
    this.discarding = false;
    this.player.end();
  }
}
