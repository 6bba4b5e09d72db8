// The gateway as its own process, `node --import tsx src/main.ts`: for what only a real process shows
// (signals, exit codes, its resident memory).
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { closedPort, testEnv } from './gateway.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** How long the child may take to start, and to exit once it should. */
export const START_MS = 15_000;
export const EXIT_MS = 5_000;

export interface Child {
  process: ChildProcess;
  port: number;
  url: string;
  output: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Rejects naming `what` unless `promise` settles within `ms`. */
export function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Gateway processes a test started; `kill()` in afterEach ends whatever is still running. */
export class Children {
  private readonly running: ChildProcess[] = [];

  /** Starts the gateway on a free loopback port in front of `upstreamUrl`; resolves once it listens. */
  async start(upstreamUrl: string, env: Record<string, string>): Promise<Child> {
    const port = await closedPort();
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env: { ...process.env, ...testEnv({ PORT: String(port), UPSTREAM_URL: upstreamUrl, LOG_LEVEL: 'info', ...env }) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.running.push(child);
    const run: Child = {
      process: child,
      port,
      url: `ws://127.0.0.1:${port}/v1/voice`,
      output: '',
      exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
    };
    const listening = new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        run.output += d.toString('utf8');
        if (run.output.includes('"voicegw listening"')) resolve();
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      void run.exited.then(({ code }) => reject(new Error(`the gateway exited (${code}) before listening:\n${run.output}`)));
    });
    await within(START_MS, 'the gateway to listen', listening);
    return run;
  }

  kill(): void {
    for (const child of this.running.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
