import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** The process logger. Sessions log through `logger.child({ sessionId })`; nothing per frame above debug. */
export function createLogger(level: LevelWithSilent = 'info'): Logger {
  return pino({ level, base: { service: 'voicegw' } });
}

/** For tests and tools that must say nothing. */
export const silentLogger: Logger = pino({ level: 'silent' });
