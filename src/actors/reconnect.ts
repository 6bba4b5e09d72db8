/** After losing the upstream: this many attempts, with exponential backoff from baseMs, capped at maxMs. */
export interface Backoff {
  attempts: number;
  baseMs: number;
  maxMs: number;
}

/**
 * How long to wait before reconnect attempt `attempt` (0 first), or undefined when the attempts are
 * spent and the session should give up.
 */
export function reconnectDelay(attempt: number, backoff: Backoff): number | undefined {
  if (attempt >= backoff.attempts) return undefined;
  return Math.min(backoff.baseMs * 2 ** attempt, backoff.maxMs);
}
