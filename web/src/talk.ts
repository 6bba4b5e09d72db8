// The user's side of the conversation: push-to-talk (manual mode), hands-free (auto mode), typed text
// and stop. Whatever the user starts while the assistant is heard interrupts it: the player goes silent
// at once, before the gateway has even heard of it, and what is still on its way of the reply is thrown
// away until the gateway confirms (the pong of a ping sent right behind) that nothing more of it comes.
import type { Downlink } from './downlink.ts';
import { CHUNK_MS, openMicrophone } from './mic.ts';
import type { PlayerEvent } from './player-messages.ts';
import type { Player } from './player.ts';
import type { ClientMessage, GatewayState } from './protocol.ts';
import { VoiceGate } from './voice-gate.ts';

export interface Link {
  /** The gateway's state, or undefined while no session is up. */
  state(): GatewayState | undefined;
  send(message: ClientMessage): boolean;
  /** Returns whether the audio went (not before the gateway's hello, nor into a backed-up socket). */
  sendAudio(pcm: Int16Array): boolean;
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
  /**
   * From the gateway's `speaking` until the player has played the reply out (`drained`) or was stopped:
   * hands-free must not open the microphone to a reply still coming out of the speaker.
   */
  private replyPending = false;
  private readonly gate = new VoiceGate();

  constructor(
    private readonly context: AudioContext,
    private readonly link: Link,
    private readonly downlink: Downlink,
    private readonly player: Player,
    private readonly onError: (message: string) => void,
  ) {}

  text(text: string): void {
    // The typed turn ends a hands-free utterance too: its `processing` is not the end of speech.
    this.listening = false;
    if (this.barge({ type: 'text', text })) this.player.turn();
  }

  stop(): void {
    this.barge({ type: 'abort' });
  }

  press(): void {
    if (this.pressed || this.handsFree || this.link.state() === undefined) return;
    this.pressed = true;
    this.uplinkMs = 0;
    this.barge({ type: 'listen', state: 'start', mode: 'manual' });
    this.openMic();
  }

  release(): void {
    if (!this.pressed) return;
    this.pressed = false;
    if (this.link.send({ type: 'listen', state: 'stop' })) this.player.turn();
  }

  setHandsFree(on: boolean): void {
    if (on) this.release();
    // Turned off mid-utterance: what was said so far is the turn, as a release of the button would be.
    else if (this.listening && this.link.send({ type: 'listen', state: 'stop' })) this.player.turn();
    this.handsFree = on;
    this.listening = false;
    if (on) this.openMic();
    this.changed();
  }

  /** A state from the gateway (undefined: the session is gone, and so is all of this). */
  gatewayState(state: GatewayState | undefined): void {
    if (state === undefined) this.pressed = this.replyPending = false;
    if (state === 'speaking') this.replyPending = true;
    if (state === 'listening') this.confirmed = true;
    else if (this.confirmed || state === undefined) {
      // The voice service heard the utterance end: the wait for the reply starts now.
      if (this.listening && state === 'processing') this.player.turn();
      this.listening = this.confirmed = false;
    }
    this.changed();
  }

  /** The player's news: a reply played out, or stopped, is no longer pending. */
  playerEvent(event: PlayerEvent): void {
    if (event === 'drained' || event === 'stopped') this.replyPending = false;
    if (event !== 'tick') this.changed();
  }

  /** Hands-free listens again once the reply has been heard to its end. */
  private changed(): void {
    if (!this.handsFree || this.listening || this.replyPending || this.link.state() !== 'ready' || this.player.figures.playing) return;
    this.startListening();
  }

  /** Hands-free: a new utterance, which the voice service ends when it hears silence. */
  private startListening(): void {
    this.uplinkMs = 0;
    this.confirmed = false;
    this.listening = this.barge({ type: 'listen', state: 'start', mode: 'auto' });
  }

  /**
   * Sends a message that interrupts whatever reply there is (listen start, text, abort): silence now, and
   * the reply's frames still on their way discarded until the pong of the ping that follows it.
   */
  private barge(message: ClientMessage): boolean {
    const marker = this.downlink.interrupt();
    this.replyPending = false;
    if (!this.link.send(message)) return false;
    this.link.send({ type: 'ping', id: marker });
    return true;
  }

  private chunk(pcm: Int16Array): void {
    if (this.pressed) return this.send(pcm);
    if (!this.handsFree) return;
    const onset = !this.gate.speaking;
    const chunks = this.gate.push(pcm);
    if (chunks.length === 0) return;
    // Speaking over the reply, or while the gateway thinks: a barge-in, in auto mode. Not while the
    // gateway reconnects to the voice service: it would refuse the listen start, and the reply goes on.
    const state = this.link.state();
    if (onset && !this.listening && state !== undefined && state !== 'reconnecting') this.startListening();
    if (this.listening) for (const c of chunks) this.send(c);
  }

  private send(pcm: Int16Array): void {
    if (this.link.sendAudio(pcm)) this.uplinkMs += CHUNK_MS;
  }

  private openMic(): void {
    this.mic ??= openMicrophone(this.context, (pcm) => this.chunk(pcm)).catch((error: unknown) => {
      this.mic = undefined;
      this.onError(`The microphone could not be opened: ${error instanceof Error ? error.message : String(error)}`);
    });
  }
}
