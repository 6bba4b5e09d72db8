// npm run bench: the gateway's CPU time per delivered audio frame, set against the bare libopus decode
// cost measured in the same run, and against a plain `ws` relay (bench/ws-relay.ts). See bench/README.md.
//
// Knobs (defaults = the reported configuration; README.md says more): BENCH_PACING=xiaozhi,burst (the
// upstream traffic shapes to run, in order), BENCH_SESSIONS=200,
// BENCH_WARMUP_S=6, BENCH_WINDOW_S=20, BENCH_ONLY=gateway|ws-relay, BENCH_CHILD_FLAGS (extra node flags
// for the children), BENCH_PERF=0|1 (libopus's share of each child's CPU, from perf; on where perf is
// installed), BENCH_NICE=-10.
import { execFileSync, execSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { startSimulator, type SimSession } from '../src/sim/simulator.ts';
import { loadSpeech } from '../src/sim/speech.ts';
import { bareDecodeUs, median, table } from './baseline.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 200);
const WARMUP_S = Number(process.env.BENCH_WARMUP_S ?? 6);
const WINDOW_S = Number(process.env.BENCH_WINDOW_S ?? 20);
const ONLY = process.env.BENCH_ONLY;
/**
 * xiaozhi: as xiaozhi-esp32-server paces speech (5 frames at once, then one per 60 ms): one upstream read
 * and one client write per frame, the production shape. burst: whole sentences at once, as other servers
 * send them: many frames per read and per (corked) write, so the relay's own work shows.
 */
const PACINGS = (process.env.BENCH_PACING ?? 'xiaozhi,burst').split(',') as ('xiaozhi' | 'burst')[];
const CHILD_FLAGS = (process.env.BENCH_CHILD_FLAGS ?? '').split(' ').filter((f) => f !== '');
/** On by default where perf exists: the in-process libopus share is the figure other load skews least. */
const PERF = process.env.BENCH_PERF === undefined ? sh('command -v perf') !== '' : process.env.BENCH_PERF === '1';
const NICE = process.env.BENCH_NICE;
/** Sessions start their first reply spread over this long, so that the 5-frame bursts of all sessions do not coincide. */
const STAGGER_MS = 5000;
/** After the window no new question is asked; replies in flight get this long to finish and be checked. */
const SETTLE_MS = 12_000;
const TARGET_GATEWAY = 1.15;
const TARGET_RELAY = 1.6;
const CLK_TCK = Number(sh('getconf CLK_TCK')) || 100;

function sh(command: string): string {
  try {
    return execSync(command, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

const children = new Set<ChildProcess>();
// Whatever happens, no child outlives the bench.
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));

// (a) Bare decode: the floor any relay that hands out PCM pays per frame (bench/baseline.ts).

const speech = loadSpeech();
const packets = speech.sentences.flatMap((s) => s.packets);

// (b), (c): a child process serving SESSIONS real client sessions.

/** utime and stime of a process (all its threads), in seconds. */
function procCpu(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
  return { user: Number(fields[11]) / CLK_TCK, sys: Number(fields[12]) / CLK_TCK };
}

/** Busy CPU seconds of the whole machine (/proc/stat): shows other load sharing the cores. */
function machineBusySeconds(): number {
  const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (v.reduce((a, b) => a + b, 0) - v[3]! - (v[4] ?? 0)) / CLK_TCK;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const address = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function startChild(script: string, upstreamUrl: string): Promise<{ child: ChildProcess; port: number; tail: () => string }> {
  const port = await freePort();
  const node = [process.execPath, ...CHILD_FLAGS, '--import', 'tsx', script];
  // `nice` execs node in place: child.pid stays node's pid, and every thread it starts inherits the niceness.
  const [command, ...args] = NICE ? ['nice', '-n', NICE, ...node] : node;
  const child = spawn(command!, args, {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn', UPSTREAM_URL: upstreamUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  const keep = (d: Buffer) => (output = (output + d.toString()).slice(-4000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const tail = () => output;
  // PORT=0 is not reported back, hence a port picked here and a poll of /healthz until it answers.
  for (const deadline = Date.now() + 30_000; ; await sleep(100)) {
    if (child.exitCode !== null) throw new Error(`${script} exited with ${child.exitCode} at start:\n${tail()}`);
    if (Date.now() > deadline) throw new Error(`${script} did not answer /healthz in 30 s:\n${tail()}`);
    const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);
    if (ok) return { child, port, tail };
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM'); // a clean exit first, so that a profiler flag can write its profile
    await Promise.race([exited, sleep(5000)]);
    child.kill('SIGKILL');
  }
  children.delete(child);
}

/** Starts `perf record` on a process; the returned function stops it and answers libopus's share of its samples. */
function perfLibopusShare(pid: number): () => Promise<number> {
  const file = join(tmpdir(), `voicegw-bench-${pid}.perf`);
  const perf = spawn('perf', ['record', '-q', '-F', '499', '-p', String(pid), '-o', file], { stdio: 'ignore' });
  children.add(perf);
  return async () => {
    const exited = new Promise((resolve) => perf.once('exit', resolve));
    perf.kill('SIGINT');
    await Promise.race([exited, sleep(10_000)]);
    children.delete(perf);
    try {
      const report = execFileSync('perf', ['report', '-i', file, '--sort', 'dso', '--stdio', '-q'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const line = report.split('\n').find((l) => l.includes('opus.node'));
      return line ? Number.parseFloat(line) / 100 : NaN;
    } catch {
      return NaN; // perf not permitted here (perf_event_paranoid): the column stays empty
    } finally {
      rmSync(file, { force: true });
    }
  };
}

interface Totals {
  windowFrames: number;
  repliesOk: number;
  /** Replies that ended with another frame count than the simulator sent. */
  repliesBad: number;
  missingFrames: number;
  extraFrames: number;
  errors: string[];
  latencies: number[];
}

/**
 * Frames per second all sessions receive when every hop keeps up: per reply, the simulator sends each
 * sentence's first 5 frames at once and the rest one per frame duration, then `tts stop` 420 ms later,
 * and the client asks again at once. A run well below this rate fell behind real time (starved of CPU).
 */
function realTimeRate(): number {
  const frames = packets.length;
  const replyMs = speech.sentences.reduce((ms, s) => ms + Math.max(0, s.packets.length - 5) * speech.frameMs, 0) + 420;
  return (SESSIONS * frames * 1000) / replyMs;
}

/** Send times of the simulator's audio packets, per upstream session (keyed by its Client-Id header). */
const sentAt = new Map<string, { t: number[]; head: number }>();

/**
 * One client session: hello with the defaults (pcm16, 24 kHz, binary), then a typed question, and the
 * next one as soon as the reply ends (state ready). Each reply must hold exactly `expected` frames.
 */
class BenchClient {
  private frames = 0;
  private asking = true;
  private closing = false;
  private sent: { t: number[]; head: number } | undefined;
  readonly ready: Promise<void>;
  replying = false;
  windowFrames = 0;

  constructor(
    private readonly ws: WebSocket,
    private readonly expected: number,
    private readonly totals: Totals,
    private readonly window: { open: boolean },
  ) {
    let resolveReady!: () => void;
    this.ready = new Promise((resolve, reject) => {
      resolveReady = resolve;
      ws.once('error', reject);
      ws.once('close', (code) => reject(new Error(`closed with ${code} before ready`)));
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) return this.onAudio();
      const m = JSON.parse(data.toString()) as { type: string; state?: string; sessionId?: string; code?: string };
      if (m.type === 'hello') this.sent = sentAt.get(m.sessionId ?? '');
      else if (m.type === 'error') totals.errors.push(`error ${m.code}`);
      else if (m.type === 'state' && m.state === 'ready') {
        if (!this.replying) return resolveReady();
        this.replying = false;
        const d = this.frames - expected;
        if (d === 0) totals.repliesOk++;
        else {
          totals.repliesBad++;
          if (d < 0) totals.missingFrames -= d;
          else totals.extraFrames += d;
        }
        if (this.asking) this.ask();
      }
    });
    ws.on('close', (code) => {
      if (!this.closing) totals.errors.push(`session closed early (${code})`);
    });
    ws.on('error', () => {});
    ws.on('open', () => ws.send(JSON.stringify({ type: 'hello' })));
  }

  private onAudio(): void {
    this.frames++;
    const s = this.sent;
    const sentTime = s !== undefined && s.head < s.t.length ? s.t[s.head++] : undefined;
    if (!this.window.open) return;
    this.windowFrames++;
    this.totals.windowFrames++;
    if (sentTime !== undefined) this.totals.latencies.push(performance.now() - sentTime);
  }

  ask(): void {
    this.replying = true;
    this.frames = 0;
    this.ws.send(JSON.stringify({ type: 'text', text: 'Tell me about the weather.' }));
  }

  stopAsking(): void {
    this.asking = false;
  }

  close(): void {
    this.closing = true;
    this.ws.close(1000);
  }
}

interface Result {
  name: string;
  pacing: 'xiaozhi' | 'burst';
  usPerFrame: number;
  frames: number;
  seconds: number;
  childCpuPct: number;
  /** Kernel share of the child's CPU time: socket reads and writes (on loopback a write also runs the receiver's TCP path). */
  sysShare: number;
  /** libopus's share of the child's CPU samples (BENCH_PERF=1), else NaN. */
  opusShare: number;
  benchCpuPct: number;
  /** CPU used by everything else on the machine during the window, in cores: noise in the figures. */
  otherCores: number;
  p50: number;
  p99: number;
  totals: Totals;
}

async function measure(name: string, script: string, upstreamUrl: string, expected: number, pacing: Result['pacing']): Promise<Result> {
  const { child, port, tail } = await startChild(script, upstreamUrl);
  const totals: Totals = { windowFrames: 0, repliesOk: 0, repliesBad: 0, missingFrames: 0, extraFrames: 0, errors: [], latencies: [] };
  const window = { open: false };
  const clients: BenchClient[] = [];
  const alive = () => {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited during the run (${child.exitCode ?? child.signalCode}):\n${tail()}`);
  };
  try {
    // Connect in batches: 200 simultaneous handshakes would measure the accept queue, not the relay.
    for (let i = 0; i < SESSIONS; i += 50) {
      const batch = Array.from(
        { length: Math.min(50, SESSIONS - i) },
        () => new BenchClient(new WebSocket(`ws://127.0.0.1:${port}/v1/voice`, { perMessageDeflate: false }), expected, totals, window),
      );
      clients.push(...batch);
      await Promise.all(batch.map((c) => c.ready));
    }
    clients.forEach((c, i) => setTimeout(() => c.ask(), (i * STAGGER_MS) / SESSIONS));
    await sleep(WARMUP_S * 1000);

    alive();
    const stopPerf = PERF ? perfLibopusShare(child.pid!) : undefined;
    window.open = true;
    const t0 = performance.now();
    const c0 = procCpu(child.pid!);
    const bench0 = process.cpuUsage();
    const m0 = machineBusySeconds();
    await sleep(WINDOW_S * 1000);
    alive();
    const c1 = procCpu(child.pid!);
    const bench1 = process.cpuUsage(bench0);
    const m1 = machineBusySeconds();
    const seconds = (performance.now() - t0) / 1000;
    window.open = false;
    const opusShare = stopPerf ? await stopPerf() : NaN;

    // Let the replies in flight finish, so that every reply asked for is checked.
    clients.forEach((c) => c.stopAsking());
    for (const deadline = Date.now() + SETTLE_MS; Date.now() < deadline && clients.some((c) => c.replying); ) await sleep(100);
    const unfinished = clients.filter((c) => c.replying).length;
    if (unfinished > 0) totals.errors.push(`${unfinished} replies did not finish within ${SETTLE_MS / 1000} s after the window`);
    const idle = clients.filter((c) => c.windowFrames === 0).length;
    if (idle > 0) totals.errors.push(`${idle} sessions received no frame in the window`);

    const cpu = c1.user + c1.sys - (c0.user + c0.sys);
    const benchCpu = (bench1.user + bench1.system) / 1e6;
    const lat = totals.latencies.sort((a, b) => a - b);
    const pct = (p: number) => (lat.length > 0 ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]! : NaN);
    return {
      name,
      pacing,
      usPerFrame: (cpu * 1e6) / totals.windowFrames,
      frames: totals.windowFrames,
      seconds,
      childCpuPct: (cpu / seconds) * 100,
      sysShare: (c1.sys - c0.sys) / cpu,
      opusShare,
      benchCpuPct: (benchCpu / seconds) * 100,
      otherCores: (m1 - m0 - cpu - benchCpu) / seconds,
      p50: pct(0.5),
      p99: pct(0.99),
      totals,
    };
  } finally {
    clients.forEach((c) => c.close());
    await stopChild(child);
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  if (NICE) setPriority(Number(NICE)); // throws without the privilege: better than a silently different setup
  const nproc = sh('nproc');
  console.log(`voicegw bench: ${SESSIONS} sessions, pacing ${PACINGS.join(' then ')}, warm-up ${WARMUP_S} s, window ${WINDOW_S} s, nproc ${nproc}, node ${process.version}`);

  const decodeOne = bareDecodeUs(1, 5);
  // The per-session baseline is measured before, between and after the runs, and its median taken: on a
  // shared machine other load comes and goes, and one unlucky measurement should not set the ratios.
  const decodeEach = [bareDecodeUs(SESSIONS, 3)];
  console.log(`bare decode: ${decodeOne.toFixed(1)} µs/frame (1 decoder), ${decodeEach[0]!.toFixed(1)} µs/frame (${SESSIONS} decoders)`);

  const results: Result[] = [];
  let failed = false;
  let expected = 0;
  for (const pacing of PACINGS) {
    const sim = await startSimulator({ pacing });
    // Time-stamps each audio packet the simulator sends, for frame latency. This reaches into the
    // simulator's private socket: if that changes, latency is simply not reported.
    sim.on('session', (s: SimSession) => {
      const q = { t: [] as number[], head: 0 };
      sentAt.set(s.headers['client-id'] ?? '', q);
      const ws = (s as unknown as { ws?: WebSocket }).ws;
      if (typeof ws?.send !== 'function') return;
      const send = ws.send.bind(ws) as (data: unknown, ...rest: unknown[]) => void;
      (ws as unknown as { send: typeof send }).send = (data, ...rest) => {
        if (Buffer.isBuffer(data)) q.t.push(performance.now());
        send(data, ...rest);
      };
    });
    expected = sim.replyFrames();
    try {
      for (const [name, script] of [
        ['gateway', 'src/main.ts'],
        ['ws-relay', 'bench/ws-relay.ts'],
      ] as const) {
        if (ONLY !== undefined && ONLY !== name) continue;
        const r = await measure(`${name}, ${pacing}`, script, sim.url, expected, pacing);
        results.push(r);
        const t = r.totals;
        console.log(
          `${r.name}: ${r.usPerFrame.toFixed(1)} µs/frame; ${r.frames} frames in ${r.seconds.toFixed(1)} s; child CPU ${r.childCpuPct.toFixed(0)}% ` +
            `(${(r.sysShare * 100).toFixed(0)}% kernel), bench ${r.benchCpuPct.toFixed(0)}%, other load ${r.otherCores.toFixed(2)} cores; ` +
            `replies ok ${t.repliesOk}, wrong ${t.repliesBad} (missing ${t.missingFrames}, extra ${t.extraFrames} frames)`,
        );
        if (t.repliesBad > 0 || t.errors.length > 0 || r.frames === 0) {
          failed = true;
          console.error(`${r.name} FAILED: ${t.repliesBad} wrong replies; ${[...new Set(t.errors)].slice(0, 5).join('; ')}`);
        }
        const pace = r.frames / r.seconds / realTimeRate();
        if (pacing === 'xiaozhi' && pace < 0.9) {
          console.warn(`warning: ${r.name} delivered ${(pace * 100).toFixed(0)}% of the real-time rate: it (or the bench) fell behind, so its figure is not comparable`);
        }
        if (r.benchCpuPct > 90) console.warn(`warning: the bench process was near saturation (${r.benchCpuPct.toFixed(0)}%): move the simulator to a child`);
        decodeEach.push(bareDecodeUs(SESSIONS, 3));
      }
    } finally {
      await sim.close();
    }
  }

  const baseline = median(decodeEach);
  const spread = `${Math.min(...decodeEach).toFixed(1)}–${Math.max(...decodeEach).toFixed(1)}`;
  const rows: string[][] = [
    ['measure', 'µs/frame', 'ratio to baseline', 'target', 'libopus share (perf)'],
    ['bare decode, 1 decoder', decodeOne.toFixed(1), (decodeOne / baseline).toFixed(2), '', ''],
    [`bare decode, ${SESSIONS} decoders = baseline (median; range ${spread})`, baseline.toFixed(1), '1.00', '', ''],
  ];
  for (const r of results) {
    const target = r.name.startsWith('gateway') ? `≤ ${TARGET_GATEWAY}` : `≈ ${TARGET_RELAY}`;
    const perf = Number.isNaN(r.opusShare) ? '' : `${(r.opusShare * 100).toFixed(0)}% → ${(1 / r.opusShare).toFixed(2)}×`;
    rows.push([`${r.name} (whole process)`, r.usPerFrame.toFixed(1), (r.usPerFrame / baseline).toFixed(2), target, perf]);
  }
  const details: string[][] = [
    ['run', 'sessions', 'window s', 'frames', 'frames/s (% of real time)', 'replies ok/wrong', 'missing/extra frames', 'latency p50/p99 ms', 'child CPU', 'bench CPU', 'other load (cores)'],
  ];
  for (const r of results) {
    details.push([
      r.name,
      String(SESSIONS),
      r.seconds.toFixed(1),
      String(r.frames),
      r.pacing === 'xiaozhi' ? `${(r.frames / r.seconds).toFixed(0)} (${((r.frames / r.seconds / realTimeRate()) * 100).toFixed(0)}%)` : `${(r.frames / r.seconds).toFixed(0)} (as fast as it goes)`,
      `${r.totals.repliesOk}/${r.totals.repliesBad}`,
      `${r.totals.missingFrames}/${r.totals.extraFrames}`,
      `${r.p50.toFixed(1)} / ${r.p99.toFixed(1)}`,
      `${r.childCpuPct.toFixed(0)}% (${(r.sysShare * 100).toFixed(0)}% sys)`,
      `${r.benchCpuPct.toFixed(0)}%`,
      r.otherCores.toFixed(2),
    ]);
  }
  const flags = [process.env.BENCH_PACING ? `BENCH_PACING=${process.env.BENCH_PACING}` : '', CHILD_FLAGS.length > 0 ? `BENCH_CHILD_FLAGS="${CHILD_FLAGS.join(' ')}"` : '', process.env.BENCH_PERF !== undefined ? `BENCH_PERF=${process.env.BENCH_PERF}` : '', NICE ? `BENCH_NICE=${NICE}` : '']
    .filter(Boolean)
    .join(' ');
  console.log(`\n${table(rows)}\n\n${table(details)}`);

  writeFileSync(
    new URL('results.md', import.meta.url),
    `# Bench results\n\n${new Date().toISOString()} · nproc ${nproc} · node ${process.version} · \`${flags ? `${flags} ` : ''}npm run bench\`` +
      ` · ${((Date.now() - started) / 1000).toFixed(0)} s\n\n${table(rows)}\n\n${table(details)}\n\n` +
      `A frame is 60 ms of 24 kHz pcm16 (2880 bytes); each reply is ${expected} frames. See README.md for how to read this.\n`,
  );
  if (failed) process.exitCode = 1;
}



main().then(
  () => process.exit(),
  (error: unknown) => {
    console.error(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
