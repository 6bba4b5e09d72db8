// Soak: churns thousands of sessions through a gateway child process and prints its memory over time.
// Not run in CI. Usage: node --import tsx bench/soak.ts [totalSessions=5000] [concurrency=100]
// Each session: hello, one typed utterance, then one of: the whole reply, an abort mid-reply, or a
// client that vanishes mid-reply. Memory that keeps rising with sessions ended is a leak.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import WebSocket from 'ws';
import { startSimulator } from '../src/sim/simulator.ts';

const TOTAL = Number(process.argv[2] ?? 5000);
const CONCURRENCY = Number(process.argv[3] ?? 100);
const REPORT_MS = 5000;
const LIMIT_MS = 30 * 60_000;

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });

function memoryOf(pid: number): { rssMb: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { rssMb: kb / 1024 };
}

async function heapUsedMb(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('voicegw_nodejs_heap_size_used_bytes '));
  return Number(line?.split(' ')[1] ?? 0) / 1024 / 1024;
}

/** One session's life; resolves when it is over, however it ended. */
function churnOne(url: string, ending: 'whole' | 'abort' | 'vanish'): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let frames = 0;
    const timer = setTimeout(() => ws.terminate(), 60_000);
    ws.on('open', () => ws.send('{"type":"hello"}'));
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        frames++;
        if (frames === 20 && ending === 'abort') ws.send('{"type":"abort"}');
        if (frames === 20 && ending === 'vanish') ws.terminate();
        return;
      }
      const m = JSON.parse(data.toString('utf8')) as { type: string; state?: string };
      if (m.type !== 'state' || m.state !== 'ready') return;
      if (frames === 0 && ending !== 'abort') ws.send('{"type":"text","text":"hello"}');
      else if (frames === 0) ws.send('{"type":"text","text":"tell me a story"}');
      else ws.close(1000);
    });
    ws.on('error', () => {});
    ws.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function main(): Promise<void> {
  const simulator = await startSimulator({ pacing: 'burst', stopDelayMs: 50 });
  const port = await freePort();
  const gateway = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), UPSTREAM_URL: simulator.url, LOG_LEVEL: 'warn', MAX_SESSIONS: String(CONCURRENCY * 2) },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const stopAll = async () => {
    gateway.kill('SIGKILL');
    await simulator.close();
  };
  try {
    for (let i = 0; i < 100; i++) {
      if (await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const url = `ws://127.0.0.1:${port}/v1/voice`;
    const started = performance.now();
    let done = 0;
    let launched = 0;
    process.stdout.write(`soak: ${TOTAL} sessions, ${CONCURRENCY} at once, gateway pid ${gateway.pid}\n`);
    process.stdout.write('elapsed_s  sessions_done  gateway_rss_mb  heap_used_mb\n');
    const report = async () => {
      const { rssMb } = memoryOf(gateway.pid!);
      const heap = await heapUsedMb(port);
      const elapsed = ((performance.now() - started) / 1000).toFixed(0).padStart(9);
      process.stdout.write(`${elapsed}  ${String(done).padStart(13)}  ${rssMb.toFixed(1).padStart(14)}  ${heap.toFixed(1).padStart(12)}\n`);
    };
    const reporter = setInterval(() => void report(), REPORT_MS);
    const endings = ['whole', 'abort', 'vanish'] as const;
    const worker = async () => {
      while (launched < TOTAL && performance.now() - started < LIMIT_MS) {
        const ending = endings[launched++ % endings.length]!;
        await churnOne(url, ending);
        done++;
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    clearInterval(reporter);
    await report();
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const active = text.split('\n').find((l) => l.startsWith('voicegw_sessions_active '));
    process.stdout.write(`done: ${done} sessions in ${((performance.now() - started) / 1000).toFixed(0)} s; ${active}\n`);
  } finally {
    await stopAll();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`soak: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
