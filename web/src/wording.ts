// What the page tells the user about each error code and close code of docs/protocol.md
// (test/unit/web-wording.test.ts checks that each code of its tables has words here).
import type { CloseNext } from './session.ts';

const ERRORS: Record<string, string> = {
  bad_message: 'The gateway did not understand a message from this page, and ignored it.',
  bad_audio: 'A piece of microphone audio did not fit the agreed format and was dropped.',
  hello_required: 'The page spoke before the session was ready; that was ignored.',
  upstream_unavailable: 'The voice service cannot be reached right now.',
  upstream_lost: 'The voice service dropped the connection; the gateway is reconnecting to it.',
  too_slow: 'This connection is too slow: some of the reply was skipped.',
  overloaded: 'The gateway is busy or shutting down.',
  activation_timeout: 'The activation code was not entered in time; a new connection gets a new code.',
  internal: 'The gateway failed on this session.',
};

const CLOSES: Record<number, string> = {
  1000: 'The session ended.',
  1001: 'The gateway is shutting down.',
  1009: 'A message was too large for the gateway.',
  1011: 'The gateway had an internal error.',
  1013: 'The gateway is at capacity.',
  4001: 'The session was not set up in time.',
  4002: 'The voice service is unavailable, or the device was not activated in time.',
  4003: 'This connection was too slow to keep up with the audio.',
};

/** 1006, no close frame: a browser sees a refused upgrade (HTTP 401) as a connection that never opened. */
const NEVER_OPENED = 'The connection was refused before it opened (as a missing or wrong token is), or the gateway could not be reached.';
const DROPPED = 'The connection to the gateway dropped.';

/** An `error` message in words, with the gateway's own detail where the code alone says too little. */
export function errorText(code: string, message: string): string {
  const text = ERRORS[code];
  if (text === undefined) return `The gateway reported an error (${code}): ${message}`;
  return code === 'bad_message' ? `${text} (${message})` : text;
}

/** A close in words, and what happens next. */
export function closeText(code: number, reason: string, next: CloseNext): string {
  let text = CLOSES[code] ?? `The connection closed (${code}).`;
  if (code === 1000 && reason === 'idle') text = 'The session was closed after being idle.';
  if (code === 1006) text = next.opened ? DROPPED : NEVER_OPENED;
  if (next.retryInMs !== undefined) return `${text} Trying again in ${Math.ceil(next.retryInMs / 1000)} s.`;
  return `${text} ${next.gaveUp === true ? 'The page has stopped trying by itself; press' : 'Press'} Connect to start again.`;
}
