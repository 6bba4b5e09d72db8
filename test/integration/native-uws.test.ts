import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** How long a child may take to start or to exit before it is killed and the test fails. */
const BOUND_MS = 15_000;

interface Run {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  /** Exit code (or null and the signal), killed with SIGKILL after BOUND_MS. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean }>;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** `node --import tsx src/main.ts` with the given environment on top of this one. */
function startMain(env: Record<string, string>): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const run: Run = { child, stdout: '', stderr: '', exited: undefined as never };
  child.stdout!.on('data', (d: Buffer) => (run.stdout += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (run.stderr += d.toString('utf8')));
  run.exited = new Promise((resolve) => {
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, BOUND_MS);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, killed });
    });
  });
  return run;
}

/** Resolves with the port from the "voicegw listening" log line, or rejects if the child exits first. */
function listeningPort(run: Run): Promise<number> {
  return new Promise((resolve, reject) => {
    const look = () => {
      for (const line of run.stdout.split('\n')) {
        if (!line.includes('voicegw listening')) continue;
        const port = (JSON.parse(line) as { port?: unknown }).port;
        if (typeof port === 'number') return resolve(port);
      }
    };
    run.child.stdout!.on('data', look);
    look();
    void run.exited.then(({ code }) => reject(new Error(`exited (${code}) before listening: ${run.stderr}`)));
  });
}

describe('native uWebSockets.js', () => {
  it('starts on the native binary, serves /healthz and exits 0 on SIGTERM', async () => {
    const run = startMain({ LOG_LEVEL: 'info' });
    const port = await listeningPort(run);
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe('ok');
    run.child.kill('SIGTERM');
    const { code, killed } = await run.exited;

    expect(killed).toBe(false);
    expect(code).toBe(0);
  });

  it('refuses to start on the pure-JS fallback: exits non-zero naming the uWebSockets.js native binary on stderr', async () => {
    const run = startMain({ UWS_USE_FALLBACK: '1', LOG_LEVEL: 'info' });
    const { code, killed } = await run.exited;

    expect(killed).toBe(false);
    expect(code).not.toBe(0);
    expect(code).not.toBeNull();
    expect(run.stderr).toMatch(/uWebSockets\.js native binary/);
    expect(run.stdout).not.toContain('voicegw listening');
  });
});
