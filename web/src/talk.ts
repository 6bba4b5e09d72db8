// The user's side of the conversation: push-to-talk (manual mode), hands-free (auto mode), typed text
// and stop. Whatever the user starts while the assistant is heard interrupts it: the player goes silent
// at once, before the gateway has even heard of it.
import type { Downlink } from './downlink.ts';
import { CHUNK_MS, openMicrophone } from './mic.ts';
import type { Player } from './player.ts';
import type { ClientMessage, GatewayState } from './protocol.ts';
import { VoiceGate } from './voice-gate.ts';

export interface Link {
  /** The gateway's state, or undefined while no session is up. */
  state(): GatewayState | undefined;
  send(message: ClientMessage): boolean;
  sendAudio(pcm: Int16Array): void;
}

export class Talk {
  /** Microphone audio sent in the current or the last utterance. */
  uplinkMs = 0;
  private mic: Promise<void> | undefined;
  private pressed = false;
  private handsFree = false;
  /** Hands-free: `listen start` (auto) was sent and the voice service has not yet ended the utterance. */
  private listening = false;
  /** The gateway has said `listening` since: its next other state ends the utterance. */
  private confirmed = false;
  private readonly gate = new VoiceGate();

  constructor(
    private readonly context: AudioContext,
    private readonly link: Link,
    private readonly downlink: Downlink,
    private readonly player: Player,
    private readonly onError: (message: string) => void,
  ) {}

  text(text: string): void {
    this.interrupt();
    if (this.link.send({ type: 'text', text })) this.player.turn();
  }

  stop(): void {
    this.interrupt();
    this.link.send({ type: 'abort' });
  }

  press(): void {
    if (this.pressed || this.handsFree || this.link.state() === undefined) return;
    this.pressed = true;
    this.interrupt();
    this.uplinkMs = 0;
    this.link.send({ type: 'listen', state: 'start', mode: 'manual' });
    this.openMic();
  }

  release(): void {
    if (!this.pressed) return;
    this.pressed = false;
    if (this.link.send({ type: 'listen', state: 'stop' })) this.player.turn();
  }

  setHandsFree(on: boolean): void {
    this.handsFree = on;
    this.listening = false;
    if (on) this.openMic();
    this.changed();
  }

  /** A state from the gateway (undefined: the session is gone). */
  gatewayState(state: GatewayState | undefined): void {
    if (state === 'listening') this.confirmed = true;
    else if (this.confirmed || state === undefined) {
      // The voice service heard the utterance end: the wait for the reply starts now.
      if (this.listening && state === 'processing') this.player.turn();
      this.listening = false;
    }
    this.changed();
  }

  /** Hands-free listens again once the reply has been heard to its end. */
  changed(): void {
    if (!this.handsFree || this.listening || this.link.state() !== 'ready' || this.player.figures.playing) return;
    this.startListening();
  }

  /** Hands-free: a new utterance, which the voice service ends when it hears silence. */
  private startListening(): void {
    this.uplinkMs = 0;
    this.confirmed = false;
    this.listening = this.link.send({ type: 'listen', state: 'start', mode: 'auto' });
  }

  private chunk(pcm: Int16Array): void {
    if (this.pressed) return this.send(pcm);
    if (!this.handsFree) return;
    const onset = !this.gate.speaking;
    const chunks = this.gate.push(pcm);
    if (chunks.length === 0) return;
    // Speaking over the reply, or while the gateway thinks: a barge-in, in auto mode.
    if (onset && !this.listening && this.link.state() !== undefined) {
      this.interrupt();
      this.startListening();
    }
    if (this.listening) for (const c of chunks) this.send(c);
  }

  private send(pcm: Int16Array): void {
    this.link.sendAudio(pcm);
    this.uplinkMs += CHUNK_MS;
  }

  private interrupt(): void {
    this.downlink.interrupt(this.link.state() === 'speaking');
  }

  private openMic(): void {
    this.mic ??= openMicrophone(this.context, (pcm) => this.chunk(pcm)).catch((error: unknown) => {
      this.mic = undefined;
      this.onError(`The microphone could not be opened: ${error instanceof Error ? error.message : String(error)}`);
    });
  }
}
