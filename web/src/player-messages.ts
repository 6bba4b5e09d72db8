// What the page and the player worklet say to each other over the node's MessagePort.

/** Page → player. Times (`at`) are the page's Date.now(). */
export type PlayerCommand =
  /** One downlink frame, decoded, at `sampleRate` (a new rate drops what is buffered: a new session). */
  | { type: 'frame'; samples: Float32Array; sampleRate: number }
  /**
   * The reply's audio is all here: play out what is buffered even below the target, no underrun at its
   * end; answered with `drained` once nothing is left (at once when nothing is buffered).
   */
  | { type: 'end' }
  /** The user's turn ended: the next start of playback measures the time to first audio from the latest `at`. */
  | { type: 'turn'; at: number }
  /** Barge-in or abort: drop everything buffered; measure the stop from `at`. */
  | { type: 'flush'; at: number }
  | { type: 'target'; ms: number };

export type PlayerEvent = 'tick' | 'started' | 'underrun' | 'drained' | 'stopped';

/**
 * Player → page: its figures, counted where the audio is rendered, posted on each event and every ~50 ms
 * while a reply is playing or buffered, or something else changed.
 */
export interface PlayerFigures {
  event: PlayerEvent;
  playing: boolean;
  /** Times the buffer ran dry in the middle of a reply: more of it came after. */
  underruns: number;
  framesReceived: number;
  /** Frames whose last sample has been rendered. */
  framesPlayed: number;
  /** Frames dropped by a flush, whole or in part. */
  framesDropped: number;
  playedMs: number;
  bufferedMs: number;
  /** From the end of the user's last turn to the rendering of the reply's first sample; null before any. */
  firstAudioMs: number | null;
  /** From the last barge-in or abort (of audible playback) to the rendering of the first silent quantum; null before any. */
  lastStopMs: number | null;
}

/** The figures before anything has played. */
export function noFigures(): PlayerFigures {
  return {
    event: 'tick',
    playing: false,
    underruns: 0,
    framesReceived: 0,
    framesPlayed: 0,
    framesDropped: 0,
    playedMs: 0,
    bufferedMs: 0,
    firstAudioMs: null,
    lastStopMs: null,
  };
}
