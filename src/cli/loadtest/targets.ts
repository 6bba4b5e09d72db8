// What a run loads when no --url is given: the tool's simulator and the gateway, each a child process
// on 127.0.0.1, as in production. No child outlives the tool, however it ends.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { SendTimes } from './report.ts';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const SIM_CHILD = fileURLToPath(new URL('./sim-child.ts', import.meta.url));
const START_MS = 30_000;
const EXIT_MS = 5000;

const children = new Set<ChildProcess>();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

export interface SimulatorTarget {
  url: string;
  pid: number;
  /** Send times of the audio of every tagged session since the last call, on this process's clock; then forgets them. */
  takeSendTimes(): Promise<SendTimes>;
  stop(): Promise<void>;
}

export interface GatewayTarget {
  url: string;
  pid: number;
  port: number;
  stop(): Promise<void>;
}

/** Keeps the end of a child's output, for the message when it fails. */
function tail(child: ChildProcess): () => string {
  let output = '';
  const keep = (d: Buffer) => (output = (output + d.toString('utf8')).slice(-2000));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return () => output.trim().split('\n').at(-1) ?? '';
}

async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await Promise.race([exited, sleep(EXIT_MS)]);
    child.kill('SIGKILL');
  }
  children.delete(child);
}

/** Rejects with the child's last words if it exits before `ready` settles, or when START_MS passes. */
async function started<T>(what: string, child: ChildProcess, last: () => string, ready: Promise<T>): Promise<T> {
  const done = new AbortController();
  let onExit = (_code: number | null): void => {};
  const exited = new Promise<never>((_, reject) => {
    onExit = (code) => reject(new Error(`${what} exited (${code}): ${last()}`));
    if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode);
    else child.once('exit', onExit);
  });
  const late = sleep(START_MS, undefined, { signal: done.signal }).then(() => Promise.reject(new Error(`${what} did not answer within ${START_MS / 1000} s: ${last()}`)));
  try {
    return await Promise.race([ready, exited, late]);
  } catch (error) {
    await stop(child, 'SIGKILL');
    throw error;
  } finally {
    done.abort();
    child.off('exit', onExit);
  }
}

export async function startSimulator(options: { pacing: 'xiaozhi' | 'burst' }): Promise<SimulatorTarget> {
  const child = fork(SIM_CHILD, [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, LOADTEST_SIM_PACING: options.pacing, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  children.add(child);
  const last = tail(child);
  const url = await started(
    'the simulator',
    child,
    last,
    new Promise<string>((resolve) => child.on('message', (m: { type?: string; url?: string }) => m.type === 'ready' && resolve(m.url!))),
  );
  let nextId = 0;
  return {
    url,
    pid: child.pid!,
    takeSendTimes: () => {
      const id = nextId++;
      // Both clocks are CLOCK_MONOTONIC: one subtraction maps the child's stamps onto performance.now().
      const offset = performance.now() - Number(process.hrtime.bigint()) / 1e6;
      return started(
        'the simulator',
        child,
        last,
        new Promise<SendTimes>((resolve) => {
          const onMessage = (m: { type?: string; id?: number; sends?: [string, number[][]][] }) => {
            if (m.type !== 'sends' || m.id !== id) return;
            child.off('message', onMessage);
            resolve(new Map(m.sends!.map(([tag, replies]) => [tag, replies.map((times) => times.map((t) => t + offset))])));
          };
          child.on('message', onMessage);
          child.send({ type: 'take', id });
        }),
      );
    },
    stop: () => stop(child, 'SIGTERM'),
  };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no free port');
  return address.port;
}

/**
 * `node --import tsx src/main.ts` on a free loopback port in front of `upstreamUrl`; resolves once
 * /healthz answers. `entry` starts another gateway the same way (bench/ws-relay.ts, for a comparison
 * that differs in nothing but the gateway); `stopSignal` is the one that ends it at once.
 */
export async function startGateway(options: {
  upstreamUrl: string;
  env?: Record<string, string>;
  entry?: string;
  stopSignal?: NodeJS.Signals;
}): Promise<GatewayTarget> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', options.entry ?? 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', ...options.env, HOST: '127.0.0.1', PORT: String(port), UPSTREAM_URL: options.upstreamUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const last = tail(child);
  const healthy = (async () => {
    // Bounded by `started`, which gives up after START_MS; this loop ends with it.
    while (children.has(child)) {
      if (await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false)) return;
      await sleep(100);
    }
  })();
  await started(options.entry ?? 'the gateway', child, last, healthy);
  return {
    url: `ws://127.0.0.1:${port}/v1/voice`,
    pid: child.pid!,
    port,
    // voicegw stops at once on SIGINT; SIGTERM would drain for up to 30 s.
    stop: () => stop(child, options.stopSignal ?? 'SIGINT'),
  };
}
