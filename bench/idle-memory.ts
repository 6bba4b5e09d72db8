// npm run bench:memory: how much memory does the gateway hold per open session that is doing nothing
// (issue 10: at most 35 KB, whichever uplink codec the session negotiated), and the plain ws relay
// (bench/ws-relay.ts) the same way in the same run? For each target and each uplink codec, a fresh
// simulator child and a fresh target child; the sessions' clients live in this process. RSS is the
// target's VmRSS (/proc/<pid>/status: every thread, native memory included) once it has settled: a full
// GC in every isolate of the target (through the inspector, on a loopback port), then a wait. Without the
// GC, the garbage of startup (tsx compiling the sources) is collected at a random moment and moves RSS by
// 10-20 MiB, as much as a thousand sessions should cost.
//   1. idle, before any session;
//   2. with half the sessions open (hello done, state ready), then with all of them: per session, and the
//      marginal cost of the second half (fixed costs that appear with the first sessions cancel out);
//   3. after each session has asked one question and heard the whole reply: held between replies.
// Prints a markdown table and writes bench/results/memory[-LABEL]-YYYY-MM-DD.md. See bench/README.md.
//
// Knobs: MEMORY_SESSIONS=1000, MEMORY_OPEN_S=10 (the sessions open spread over this), MEMORY_UPLINKS=opus,pcm16,
// MEMORY_CODEC=pcm16|opus (the downlink), MEMORY_REPLY=1|0 (0: no reply phase), MEMORY_ONLY=voicegw|ws-relay,
// MEMORY_LABEL (a word in the file name, e.g. "before").
import { execSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism, cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { startGateway, startSimulator, type GatewayTarget } from '../src/cli/loadtest/targets.ts';
import { table } from './baseline.ts';

const SESSIONS = Number(process.env.MEMORY_SESSIONS ?? 1000);
if (!Number.isInteger(SESSIONS) || SESSIONS < 2) throw new Error('MEMORY_SESSIONS must be a whole number ≥ 2');
const OPEN_S = Number(process.env.MEMORY_OPEN_S ?? 10);
const UPLINKS = (process.env.MEMORY_UPLINKS ?? 'opus,pcm16').split(',') as ('opus' | 'pcm16')[];
if (UPLINKS.some((u) => u !== 'opus' && u !== 'pcm16')) throw new Error('MEMORY_UPLINKS: opus and/or pcm16');
const CODEC = process.env.MEMORY_CODEC ?? 'pcm16';
if (CODEC !== 'pcm16' && CODEC !== 'opus') throw new Error('MEMORY_CODEC must be pcm16 or opus');
const REPLY = process.env.MEMORY_REPLY !== '0';
const ONLY = process.env.MEMORY_ONLY;
const LABEL = process.env.MEMORY_LABEL;
if (LABEL !== undefined && !/^[\w.]+$/.test(LABEL)) throw new Error('MEMORY_LABEL must be letters, digits, _ or .');
/** The questions are spread over this long: a thousand replies at once would only make the targets late. */
const ASK_S = 20;
/** A session not open (or a reply not ended) by then is counted as failed; it stays in the figures' denominator only if open. */
const OPEN_TIMEOUT_MS = 30_000;
const REPLY_TIMEOUT_MS = 120_000;
/** Settled: after this wait, two readings 500 ms apart within SETTLED_BYTES of each other. */
const SETTLE_MS = 2000;
const SETTLED_BYTES = 256 * 1024;

const sh = (command: string) => {
  try {
    return execSync(command, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
};
const REVISION = `${sh('git rev-parse --short HEAD') || '?'}${sh("git status --porcelain -- src ':!src/cli/loadtest' bench/ws-relay.ts") === '' ? '' : ' + uncommitted changes'}`;

type TargetName = 'voicegw' | 'ws-relay';
/** `env`: the inspector's port, for the settle's GC. */
const TARGETS: { name: TargetName; start: (upstreamUrl: string, env: Record<string, string>) => Promise<GatewayTarget> }[] = [
  // Room for every session, and admission by load lifted: what is measured is holding them, not refusing them.
  {
    name: 'voicegw',
    start: (upstreamUrl, env) =>
      startGateway({ upstreamUrl, env: { MAX_SESSIONS: String(SESSIONS + 100), ADMISSION_MAX_LAG_MS: '10000', ADMISSION_MAX_LATENESS_MS: '10000', ...env } }),
  },
  { name: 'ws-relay', start: (upstreamUrl, env) => startGateway({ upstreamUrl, env, entry: 'bench/ws-relay.ts', stopSignal: 'SIGTERM' }) },
];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Two full GCs in every isolate of the target: its main thread and, through NodeWorker, each worker thread
 * (voicegw with WORKERS runs one uWS App per worker). Over the inspector protocol on the target's
 * `--inspect` port (loopback); what was garbage then no longer counts as memory the sessions hold.
 */
async function collectGarbage(inspectPort: number): Promise<void> {
  const [target] = (await (await fetch(`http://127.0.0.1:${inspectPort}/json/list`)).json()) as { webSocketDebuggerUrl: string }[];
  const ws = new WebSocket(target!.webSocketDebuggerUrl, { perMessageDeflate: false });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const pending = new Map<string, () => void>();
  const workers: string[] = [];
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString()) as { id?: number; method?: string; params?: { sessionId: string; message: string } };
    if (m.id !== undefined) pending.get(`main ${m.id}`)?.();
    else if (m.method === 'NodeWorker.attachedToWorker') workers.push(m.params!.sessionId);
    else if (m.method === 'NodeWorker.receivedMessageFromWorker') {
      const inner = JSON.parse(m.params!.message) as { id?: number };
      pending.get(`${m.params!.sessionId} ${inner.id}`)?.();
    }
  });
  let id = 0;
  /** Sends a command to the main thread (`worker` undefined) or to a worker, and waits for its answer (at most 10 s). */
  const call = (method: string, params: object, worker?: string) =>
    new Promise<void>((resolve) => {
      const n = ++id;
      const key = `${worker ?? 'main'} ${n}`;
      const timer = setTimeout(() => done(), 10_000);
      const done = () => {
        clearTimeout(timer);
        pending.delete(key);
        resolve();
      };
      pending.set(key, done);
      const command = JSON.stringify({ id: n, method, params });
      ws.send(worker === undefined ? command : JSON.stringify({ id: ++id, method: 'NodeWorker.sendMessageToWorker', params: { sessionId: worker, message: command } }));
    });
  try {
    await call('NodeWorker.enable', { waitForDebuggerOnStart: false });
    await sleep(300); // the workers that exist are announced now
    for (let pass = 0; pass < 2; pass++) {
      await call('HeapProfiler.collectGarbage', {});
      for (const worker of workers) await call('HeapProfiler.collectGarbage', {}, worker);
    }
  } finally {
    ws.close();
  }
}

/** VmRSS: every thread's resident memory, the JS heap, native buffers, libopus state and the kernel's view of the stack included. */
function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** RSS once it has stopped moving: a full GC, SETTLE_MS, then until two readings 500 ms apart agree (at most 5 s more). */
async function settledRss(pid: number, inspectPort: number): Promise<number> {
  await collectGarbage(inspectPort);
  await sleep(SETTLE_MS);
  let last = rssBytes(pid);
  for (let i = 0; i < 10; i++) {
    await sleep(500);
    const now = rssBytes(pid);
    if (Math.abs(now - last) < SETTLED_BYTES) return now;
    last = now;
  }
  return last;
}

/** voicegw's JS heap in use, from its /metrics; undefined for the relay, which has none. */
async function heapUsedBytes(port: number): Promise<number | undefined> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const m = /^voicegw_nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
    return m === null ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** One client: hello with the uplink codec asked, then nothing until told to ask one question. */
class IdleClient {
  readonly ws: WebSocket;
  readonly open: Promise<boolean>;
  private onReady: (() => void) | undefined;
  private speaking = false;

  constructor(url: string, uplink: 'opus' | 'pcm16') {
    this.ws = new WebSocket(url, { perMessageDeflate: false });
    this.ws.on('open', () =>
      this.ws.send(
        JSON.stringify({
          type: 'hello',
          version: 1,
          downlink: { codec: CODEC, sampleRate: 24000, transport: 'binary' },
          uplink: { codec: uplink, sampleRate: 16000, frameMs: 60 },
          pacing: { mode: 'none', prebufferMs: 0 },
        }),
      ),
    );
    this.ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(data.toString()) as { type?: string; state?: string };
      if (m.type !== 'state') return;
      if (m.state === 'speaking') this.speaking = true;
      if (m.state === 'ready') this.onReady?.();
    });
    this.ws.on('error', () => {});
    this.open = this.until(OPEN_TIMEOUT_MS);
  }

  /** One question; true once its reply has ended (the `ready` after `speaking`). */
  ask(): Promise<boolean> {
    this.speaking = false;
    const ended = this.until(REPLY_TIMEOUT_MS, () => this.speaking);
    this.ws.send(JSON.stringify({ type: 'text', text: 'hello' }));
    return ended;
  }

  /** Resolves true at the next `state ready` for which `when` holds, false on a close or after `ms`. */
  private until(ms: number, when = () => true): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.onReady = undefined;
        resolve(ok);
      };
      this.onReady = () => when() && done(true);
      this.ws.once('close', () => done(false));
    });
  }
}

/** Starts `n` clients spread over `seconds`; answers those that opened. */
async function openClients(url: string, uplink: 'opus' | 'pcm16', n: number, seconds: number): Promise<{ clients: IdleClient[]; failed: number }> {
  const t0 = performance.now();
  const all: IdleClient[] = [];
  for (let i = 0; i < n; i++) {
    const wait = t0 + (i * seconds * 1000) / n - performance.now();
    if (wait > 0) await sleep(wait);
    all.push(new IdleClient(url, uplink));
  }
  const opened = await Promise.all(all.map((c) => c.open));
  return { clients: all.filter((_, i) => opened[i]), failed: opened.filter((ok) => !ok).length };
}

interface Row {
  target: TargetName;
  uplink: 'opus' | 'pcm16';
  open: number;
  failed: number;
  idle: number;
  half: number;
  halfOpen: number;
  full: number;
  heapIdle: number | undefined;
  heapFull: number | undefined;
  /** After one reply each; NaN without the reply phase. */
  replied: number;
  repliesFailed: number;
  heapReplied: number | undefined;
}

async function measure(target: (typeof TARGETS)[number], uplink: 'opus' | 'pcm16'): Promise<Row> {
  const sim = await startSimulator({ pacing: 'xiaozhi' });
  let gw: GatewayTarget | undefined;
  const clients: IdleClient[] = [];
  const inspectPort = await freePort();
  try {
    gw = await target.start(sim.url, { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --inspect=127.0.0.1:${inspectPort}`.trim() });
    const settled = () => settledRss(gw!.pid, inspectPort);
    const idle = await settled();
    const heapIdle = await heapUsedBytes(gw.port);
    const half = Math.floor(SESSIONS / 2);
    const first = await openClients(gw.url, uplink, half, OPEN_S / 2);
    clients.push(...first.clients);
    const rssHalf = await settled();
    const second = await openClients(gw.url, uplink, SESSIONS - half, OPEN_S / 2);
    clients.push(...second.clients);
    const full = await settled();
    const heapFull = await heapUsedBytes(gw.port);
    console.log(`${target.name}, uplink ${uplink}: ${clients.length} open; RSS ${mib(idle)} → ${mib(rssHalf)} → ${mib(full)} MiB`);
    let replied = NaN;
    let repliesFailed = 0;
    let heapReplied: number | undefined;
    if (REPLY) {
      const asked = clients.map(async (c, i) => {
        await sleep((i * ASK_S * 1000) / clients.length);
        return c.ask();
      });
      repliesFailed = (await Promise.all(asked)).filter((ok) => !ok).length;
      replied = await settled();
      heapReplied = await heapUsedBytes(gw.port);
      console.log(`${target.name}, uplink ${uplink}: after one reply each (${repliesFailed} failed): RSS ${mib(replied)} MiB`);
    }
    const stillOpen = clients.filter((c) => c.ws.readyState === WebSocket.OPEN).length;
    return {
      target: target.name,
      uplink,
      open: stillOpen,
      failed: first.failed + second.failed + (clients.length - stillOpen),
      idle,
      half: rssHalf,
      halfOpen: first.clients.length,
      full,
      heapIdle,
      heapFull,
      replied,
      repliesFailed,
      heapReplied,
    };
  } finally {
    clients.forEach((c) => c.ws.terminate());
    await gw?.stop();
    await sim.stop();
  }
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const kib = (bytes: number | undefined) => (bytes === undefined || !Number.isFinite(bytes) ? '–' : (bytes / 1024).toFixed(1));

function markdown(rows: Row[], seconds: number, otherLoad: number): string {
  const col = (f: (r: Row) => string) => rows.map(f);
  const perSession = (r: Row, rss: number) => kib((rss - r.idle) / r.open);
  const lines: string[][] = [
    ['', ...col((r) => `${r.target}, uplink ${r.uplink}`)],
    ['sessions open at the end (failed to open or closed)', ...col((r) => `${r.open} (${r.failed})`)],
    ['RSS idle, before any session (MiB)', ...col((r) => mib(r.idle))],
    [`RSS with ${Math.floor(SESSIONS / 2)} sessions open, hello done (MiB)`, ...col((r) => mib(r.half))],
    [`RSS with ${SESSIONS} sessions open, hello done (MiB)`, ...col((r) => mib(r.full))],
    ['**KiB per session, hello done: (RSS with all − idle) ÷ sessions**', ...col((r) => `**${perSession(r, r.full)}**`)],
    ['KiB per added session, hello done: second half only', ...col((r) => kib((r.full - r.half) / (r.open - r.halfOpen)))],
    ['JS heap used per session, hello done (KiB; voicegw /metrics)', ...col((r) => kib(r.heapFull === undefined || r.heapIdle === undefined ? undefined : (r.heapFull - r.heapIdle) / r.open))],
  ];
  if (REPLY) {
    lines.push(
      ['RSS after one reply each, held between replies (MiB)', ...col((r) => `${mib(r.replied)}${r.repliesFailed > 0 ? ` (${r.repliesFailed} replies failed)` : ''}`)],
      ['**KiB per session after one reply: (RSS − idle) ÷ sessions**', ...col((r) => `**${perSession(r, r.replied)}**`)],
      ['JS heap used per session after one reply (KiB)', ...col((r) => kib(r.heapReplied === undefined || r.heapIdle === undefined ? undefined : (r.heapReplied - r.heapIdle) / r.open))],
    );
  }
  return (
    `# Memory per idle session on ${new Date().toISOString().slice(0, 10)}\n\n` +
    `\`${LABEL === undefined ? '' : `MEMORY_LABEL=${LABEL} `}npm run bench:memory\` · ${REVISION} · nproc ${availableParallelism()} (${cpus()[0]?.model ?? '?'}) · node ${process.version} · ` +
    `${seconds.toFixed(0)} s · other load before the run: ${otherLoad.toFixed(2)} cores.\n\n` +
    `For each target and uplink codec, a fresh simulator child and a fresh target child (voicegw: WORKERS ${process.env.WORKERS ?? 'default'}, ` +
    `MAX_SESSIONS ${SESSIONS + 100}, admission by load lifted). ${SESSIONS} clients in the bench process open over ${OPEN_S} s (half, settle, the other half, settle), ` +
    `each with hello (downlink ${CODEC} 24 kHz binary, uplink as the column says, 16 kHz, 60 ms) and nothing more` +
    (REPLY ? `; then each asks one typed question (spread over ${ASK_S} s) and hears the whole reply, and the sessions are held idle between replies` : '') +
    `. RSS is the target's VmRSS (every thread), read once it settled: two full GCs in each of its isolates (inspector \`HeapProfiler.collectGarbage\`), ` +
    `${SETTLE_MS / 1000} s, then two readings 500 ms apart within ${SETTLED_BYTES / 1024} KiB. ` +
    `1 KiB = 1024 bytes. The first figure includes fixed costs that appear only once sessions exist (V8's young generation growing, JIT code); ` +
    `the second half's figure leaves them out.\n\n` +
    `${table(lines)}\n`
  );
}

/** CPU the rest of the machine uses while this process sleeps, in cores. */
async function otherLoadCores(): Promise<number> {
  const busy = () => {
    const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return v.reduce((a, b) => a + b, 0) - v[3]! - (v[4] ?? 0);
  };
  const b0 = busy();
  await sleep(2000);
  return (busy() - b0) / (Number(sh('getconf CLK_TCK')) || 100) / 2;
}

async function main(): Promise<void> {
  const started = Date.now();
  const otherLoad = await otherLoadCores();
  console.log(`bench:memory: ${SESSIONS} sessions, uplinks ${UPLINKS.join(', ')}, downlink ${CODEC}${REPLY ? ', then one reply each' : ''}; other load ${otherLoad.toFixed(2)} cores`);
  const rows: Row[] = [];
  for (const target of TARGETS) {
    if (ONLY !== undefined && ONLY !== target.name) continue;
    for (const uplink of UPLINKS) rows.push(await measure(target, uplink));
  }
  const md = markdown(rows, (Date.now() - started) / 1000, otherLoad);
  console.log(`\n${md}`);
  const name = ['memory', LABEL, new Date().toISOString().slice(0, 10)].filter((part) => part !== undefined).join('-');
  const dir = new URL('results/', import.meta.url);
  mkdirSync(dir, { recursive: true });
  writeFileSync(new URL(`${name}.md`, dir), md);
  console.log(`written: bench/results/${name}.md`);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));
main().then(
  () => process.exit(),
  (error: unknown) => {
    console.error(`bench:memory failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
