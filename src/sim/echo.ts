// The echo reply: the simulator hears the device's uplink Opus and, once the utterance ends, speaks it back
// as one sentence encoded like a server's speech, so that a test can follow audio from client to server
// and back.
import opus, { type OpusEncoder } from '@discordjs/opus';
import { OPUS_BITRATE, pcmFrames } from '../protocol/audio.ts';
import type { Logger } from '../observability/log.ts';
import type { Sentence } from './speech.ts';

export interface EchoAudio {
  /** Of the downlink: what the hello announces. */
  sampleRate: number;
  frameMs: number;
  /** In auto and realtime mode the utterance ends when no uplink frame came for this long after at least one. */
  echoSilenceMs: number;
}

export class Echo {
  /** Whether the utterance ends on silence (the device's last `listen start` was not manual). */
  private endOnSilence = false;
  /** The utterance so far, decoded at the downlink rate. */
  private heard: Buffer[] = [];
  private silenceTimer: NodeJS.Timeout | undefined;
  /** The session's Opus decoder and encoder (one native object holds both), made on first use. */
  private codec: OpusEncoder | undefined;

  constructor(
    private readonly audio: EchoAudio,
    private readonly speak: (text: string, sentences: Sentence[]) => void,
    private readonly log: Logger,
  ) {}

  get hasHeard(): boolean {
    return this.heard.length > 0;
  }

  /** `listen start`: a new utterance, which in manual mode only `listen stop` ends. */
  listen(manual: boolean): void {
    this.endOnSilence = !manual;
    this.forget();
  }

  /** Adds an uplink packet to the utterance; in auto and realtime mode, silence from now on ends it. */
  hear(packet: Buffer): void {
    try {
      this.heard.push(this.opus().decode(packet));
    } catch (err) {
      return void this.log.debug({ err }, 'undecodable uplink packet');
    }
    if (!this.endOnSilence) return;
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.speakBack(), this.audio.echoSilenceMs);
  }

  /** Ends the utterance and speaks it back as one sentence, encoded like the server's speech. */
  speakBack(): void {
    const pcm = Buffer.concat(this.heard);
    this.forget();
    const { sampleRate, frameMs } = this.audio;
    const text = `echo: ${(pcm.length / 2 / sampleRate).toFixed(2)} s of speech`;
    const packets = pcmFrames(pcm, sampleRate, frameMs).map((frame) => this.opus().encode(frame));
    this.speak(text, packets.length > 0 ? [{ text, packets }] : []);
  }

  /** The session is over: no silence may end an utterance, and the codec state goes. */
  dispose(): void {
    this.forget();
    this.codec = undefined;
  }

  /** Drops the utterance heard so far. */
  private forget(): void {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = undefined;
    this.heard = [];
  }

  private opus(): OpusEncoder {
    if (this.codec === undefined) {
      // Created at the downlink rate: a decoder outputs any rate whatever rate the packet was encoded at.
      this.codec = new opus.OpusEncoder(this.audio.sampleRate, 1);
      this.codec.setBitrate(OPUS_BITRATE);
    }
    return this.codec;
  }
}
