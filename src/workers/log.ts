import type { MessagePort } from 'node:worker_threads';
import { pino, type LevelWithSilent } from 'pino';
import type { Logger } from '../observability/log.ts';
import type { FromWorker, WorkerInit } from './messages.ts';

/**
 * A worker's logger: the main thread's level and bindings plus `worker`, each line posted to the main
 * thread, which writes it where its own lines go (a worker has no destination of its own to share).
 */
export function workerLogger(port: MessagePort, index: number, log: WorkerInit['log']): Logger {
  const destination = { write: (line: string) => port.postMessage({ kind: 'log', line } satisfies FromWorker) };
  return pino({ level: log.level as LevelWithSilent, base: log.bindings }, destination).child({ worker: index });
}

/** What a worker's logger needs to know of the main thread's. */
export function logInit(logger: Logger): WorkerInit['log'] {
  return { level: logger.level, bindings: logger.bindings() };
}

/** Writes a line a worker logged to the main thread's destination, as it is. */
export function writeLine(logger: Logger, line: string): void {
  (logger as unknown as Record<symbol, { write(line: string): void }>)[pino.symbols.streamSym]!.write(line);
}
