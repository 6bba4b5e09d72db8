// window.voicegw: the page's figures, read-only, for tests (which read them instead of guessing from
// timing) and for anyone looking from the console. The player's are counted in its worklet. It is
// defined before the page awaits anything (the player's are all zero until its worklet runs), so that
// whoever finds the page loaded finds it there.
import type { PlayerFigures } from './player-messages.ts';

export interface Line {
  role: 'user' | 'assistant';
  text: string;
}

/** An `error` from the gateway, a close, or a failure in the page itself (microphone, decoder). */
export interface Problem {
  kind: 'error' | 'close' | 'client';
  code: string | number;
  message: string;
}

export interface VoicegwFigures extends Omit<PlayerFigures, 'event'> {
  /** The gateway's state, or the connection's: connecting, activation, closed, waiting (to try again). */
  state: string;
  sessionId: string | null;
  codec: 'opus' | 'pcm16';
  transcript: Line[];
  errors: Problem[];
  /** Microphone audio sent in the current or last utterance. */
  uplinkMs: number;
  /** Microphone chunks (20 ms each) dropped since the page opened because the socket was backed up. */
  uplinkDropped: number;
}

declare global {
  interface Window {
    readonly voicegw: VoicegwFigures;
  }
}

/** Defines window.voicegw: each property a getter of a copy of what `read` says now. */
export function exposeFigures(read: () => VoicegwFigures): void {
  const figures = {};
  for (const key of Object.keys(read()) as (keyof VoicegwFigures)[]) {
    Object.defineProperty(figures, key, { enumerable: true, get: () => structuredClone(read()[key]) });
  }
  Object.defineProperty(window, 'voicegw', { value: Object.freeze(figures), enumerable: true });
}
