// The reply's audio on its way from the socket to the player: which codec to ask for, pcm16 converted or
// Opus decoded, and what a barge-in must keep from playing.
import { OpusStream } from './opus.ts';
import type { Player } from './player.ts';
import type { GatewayState } from './protocol.ts';

/** The rates a pcm16 downlink may have (docs/protocol.md, hello). */
const PCM_RATES = [8000, 12000, 16000, 24000, 48000];

export interface DownlinkChoice {
  codec: 'opus' | 'pcm16';
  /** For pcm16: the rate asked for. */
  sampleRate: number;
}

/**
 * Opus where the browser says it decodes it (WebCodecs), else pcm16 at the AudioContext's own rate when
 * the gateway can give it, else 48000 (the player resamples). `forced` (?downlink=) picks one for tests;
 * even forced, Opus is asked for only where it can be decoded.
 */
export async function chooseDownlink(forced: string | null, contextRate: number): Promise<DownlinkChoice> {
  const sampleRate = PCM_RATES.includes(contextRate) ? contextRate : 48000;
  const opus = forced !== 'pcm16' && (await decodesOpus());
  return { codec: opus ? 'opus' : 'pcm16', sampleRate };
}

/**
 * Whether WebCodecs decodes mono Opus. The rate asked is Opus's own 48 kHz: the packets' rate is known only
 * from the gateway's hello, and a decoder that then refuses it fails like any other (see OpusStream).
 */
async function decodesOpus(): Promise<boolean> {
  if (typeof AudioDecoder === 'undefined') return false;
  try {
    const support = await AudioDecoder.isConfigSupported({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
    return support.supported === true;
  } catch {
    return false;
  }
}

export interface DownlinkEvents {
  error(message: string): void;
  /** The Opus decoder kept failing: only another downlink (pcm16) can play this session's audio. */
  opusFailed(message: string): void;
}

export class Downlink {
  private opus: OpusStream | undefined;
  /** The pcm16 rate; undefined while no session is up (frames are then ignored) or with opus. */
  private pcmRate: number | undefined;
  /**
   * After a barge-in: the id of the ping sent right behind the message that interrupted, until its pong.
   * The gateway answers a ping through the one queue its audio goes through, once it has handled what
   * came before it, so every frame after that pong is of a new reply.
   */
  private discardUntil: string | undefined;
  /**
   * Frames before that pong are of the interrupted reply, unless the new reply beat the ping to the
   * gateway (it was read apart from the message before it, and the voice service answered in between).
   * The new reply's frames follow its `state speaking`, with no other state after it; the old reply's
   * are always followed by one: the gateway leaves `speaking` when it handles the interruption (to
   * `listening`, `processing` or `ready`), before the pong. So frames after a `speaking` are held, not
   * dropped: played at the pong if no other state came, dropped if one did.
   */
  private held: ArrayBuffer[] | undefined;
  private markers = 0;

  constructor(
    private readonly player: Player,
    private readonly events: DownlinkEvents,
  ) {}

  /** A session began with these downlink parameters (the gateway's hello). */
  start(downlink: { codec: 'pcm16' | 'opus'; sampleRate: number }): void {
    this.stop();
    if (downlink.codec === 'pcm16') this.pcmRate = downlink.sampleRate;
    else {
      this.opus = new OpusStream(downlink.sampleRate, {
        audio: (samples, rate) => this.player.push(samples, rate),
        error: (message) => this.events.error(message),
        gaveUp: (message) => this.events.opusFailed(message),
      });
    }
    this.player.flush();
  }

  /** One binary frame from the gateway. */
  frame(data: ArrayBuffer): void {
    if (this.discardUntil === undefined) this.play(data);
    else this.held?.push(data);
  }

  /** A state from the gateway; `replyOver` when it ends `speaking`: the reply's frames have all arrived. */
  state(state: GatewayState, replyOver: boolean): void {
    if (this.discardUntil !== undefined) this.held = state === 'speaking' ? [] : undefined;
    if (!replyOver) return;
    if (this.opus !== undefined) this.opus.after(() => this.player.end());
    else this.player.end();
  }

  /**
   * Barge-in or abort: the player goes silent, and the frames until the pong of the returned ping id are
   * thrown away (but see `held`). Send that ping right behind the message that interrupts.
   */
  interrupt(): string {
    this.discardUntil = `flush-${++this.markers}`;
    this.held = undefined;
    this.opus?.drop();
    this.player.flush();
    return this.discardUntil;
  }

  pong(id: unknown): void {
    if (id !== this.discardUntil) return;
    const held = this.held ?? [];
    this.discardUntil = this.held = undefined;
    for (const frame of held) this.play(frame);
  }

  /** The session is gone: no more frames come, and what is buffered plays out. */
  stop(): void {
    this.opus?.close();
    this.opus = this.pcmRate = undefined;
    this.discardUntil = this.held = undefined;
    this.player.end();
  }

  private play(data: ArrayBuffer): void {
    if (this.opus !== undefined) return this.opus.packet(data);
    // No session (it may have ended while held frames were being played: the Opus decoder gave up).
    if (this.pcmRate === undefined) return;
    // Typed arrays read the platform's byte order: little-endian, as pcm16 is, wherever browsers run.
    const pcm = new Int16Array(data, 0, data.byteLength >> 1);
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i]! / 32768;
    this.player.push(samples, this.pcmRate);
  }
}
