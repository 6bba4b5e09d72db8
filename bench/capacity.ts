// npm run bench:capacity: how many concurrent sessions voicegw serves on this machine within the SLO of
// issue 9, and, the same way in the same run, the plain ws + @discordjs/opus relay (bench/ws-relay.ts);
// side by side with CPU per delivered frame against the bare Opus decode cost measured in the same run,
// and memory per session, and CPU per frame of both at the same 200 sessions. Then a perf profile of
// voicegw at its capacity: what limits capacity now. Then the overload: CAPACITY_OFFER sessions offered
// at once to voicegw as deployed (its default MAX_SESSIONS and admission): how many it admits, how fast
// it refuses the rest (1013), and whether the admitted ones still meet the SLO.
// Writes bench/results/capacity-CODEC[-LABEL]-YYYY-MM-DD.{md,json}. See bench/README.md.
//
// Knobs: CAPACITY_MIN=100 (first probe; the search doubles from it), CAPACITY_MAX=800, CAPACITY_STEP=25
// (bisection stops when good and bad are this close), CAPACITY_REPLIES=2 (turns per session),
// CAPACITY_RAMP_S=5, CAPACITY_CODEC=pcm16|opus (the downlink the clients ask for; opus is passed through,
// no decode, by both targets), CAPACITY_ONLY=voicegw|ws-relay, CAPACITY_OFFER=1000 (the overload
// section's offer; 0: no overload section), CAPACITY_ADMISSION=0|1 (1: the search keeps voicegw's
// admission by load; default lifted, like MAX_SESSIONS, so that the search finds what it can serve),
// CAPACITY_LABEL (a word in the file names, e.g. "before"), CAPACITY_PROFILE=0|1 (default: on where perf
// is installed), CAPACITY_PROFILE_S=6, CAPACITY_NICE=-10 (root only: this process and every child at that
// niceness, so that other work on a shared machine does not stall them; it slows that work meanwhile).
import { execSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { findCapacity, meetsSlo, SLO, type Probe } from '../src/cli/loadtest/capacity.ts';
import { runLoad, type LoadReport } from '../src/cli/loadtest/run.ts';
import { startGateway, startSimulator, type GatewayTarget } from '../src/cli/loadtest/targets.ts';
import { loadSpeech } from '../src/sim/speech.ts';
import { bareDecodeUs, median, table } from './baseline.ts';
import { profileMarkdown, summarisePerf, type PerfSummary } from './perf-summary.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const env = (name: string, fallback: number, min = Number.MIN_VALUE): number => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isFinite(v) || v < min) throw new Error(`${name} must be ${min === Number.MIN_VALUE ? 'a positive number' : `a number ≥ ${min}`}`);
  return v;
};
const MIN = env('CAPACITY_MIN', 100);
const MAX = env('CAPACITY_MAX', 800);
const STEP = env('CAPACITY_STEP', 25);
const REPLIES = env('CAPACITY_REPLIES', 2);
const RAMP_S = env('CAPACITY_RAMP_S', 5);
function oneOf<T extends string>(name: string, values: readonly T[]): T {
  const v = process.env[name] ?? values[0]!;
  if (!(values as readonly string[]).includes(v)) throw new Error(`${name} must be one of ${values.join(', ')}`);
  return v as T;
}
const ONLY = process.env.CAPACITY_ONLY;
const CODEC = oneOf('CAPACITY_CODEC', ['pcm16', 'opus'] as const);
const OFFER = env('CAPACITY_OFFER', 1000, 0);
const ADMISSION = process.env.CAPACITY_ADMISSION === '1';
const LABEL = process.env.CAPACITY_LABEL;
if (LABEL !== undefined && !/^[\w.]+$/.test(LABEL)) throw new Error('CAPACITY_LABEL must be letters, digits, _ or .');
/** CPU per frame of both targets at this many sessions, whatever their capacities: the like-for-like comparison (issue 10). */
const CPU_AT = 200;
const PERF_INSTALLED = sh('command -v perf') !== '';
const PROFILE = process.env.CAPACITY_PROFILE === undefined ? PERF_INSTALLED : process.env.CAPACITY_PROFILE === '1';
const PROFILE_S = env('CAPACITY_PROFILE_S', 6);
const NICE = process.env.CAPACITY_NICE;
/** Keep the profile (perf.data and the JS symbol map) there, for `perf report -i` (default: summarised, then deleted). */
const PERF_DATA = process.env.CAPACITY_PERF_DATA;
/** Which code was measured: the commit, and whether the targets' code (src/ but the load tool, the relay) differed from it. */
const REVISION = `${sh('git rev-parse --short HEAD') || '?'}${sh("git status --porcelain -- src ':!src/cli/loadtest' bench/ws-relay.ts") === '' ? '' : ' + uncommitted changes'}`;
/** The per-session baseline: the gateway holds one decoder per session, so the bare cost is measured with many. */
const DECODERS = 200;
/** Other work on the machine above this many cores makes a run's latencies untrustworthy. */
const NOISY_CORES = 0.25;
/** The driver's event-loop delay is sampled this often; the figure is what exceeds it. */
const LOOP_RESOLUTION_MS = 5;
const CLK_TCK = Number(sh('getconf CLK_TCK')) || 100;
const NPROC = Number(sh('nproc')) || cpus().length;

function sh(command: string): string {
  try {
    return execSync(command, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

type TargetName = 'voicegw' | 'ws-relay';
interface Target {
  name: TargetName;
  start: (o: { upstreamUrl: string; env?: Record<string, string> }) => Promise<GatewayTarget>;
}
/** Admission by load lifted to the config's bounds: voicegw then refuses nothing below MAX_SESSIONS. */
const NO_ADMISSION = { ADMISSION_MAX_LAG_MS: '10000', ADMISSION_MAX_LATENESS_MS: '10000' };
const TARGETS: Target[] = [
  // MAX_SESSIONS above the search's ceiling, and admission by load lifted, so that admission control is
  // not what the search finds: the overload section measures it. WORKERS is left at its default.
  { name: 'voicegw', start: (o) => startGateway({ ...o, env: { MAX_SESSIONS: String(MAX + 100), ...(ADMISSION ? {} : NO_ADMISSION), ...o.env } }) },
  // Started exactly as voicegw is; it exits at once on SIGTERM (and writes a --cpu-prof profile then).
  { name: 'ws-relay', start: (o) => startGateway({ ...o, entry: 'bench/ws-relay.ts', stopSignal: 'SIGTERM' }) },
];
/** How voicegw ran, for the report; everything else is at its defaults. */
const VOICEGW_ENV =
  `WORKERS ${process.env.WORKERS ?? `default (${availableParallelism()})`}; in the search MAX_SESSIONS ${MAX + 100}` +
  `${ADMISSION ? ' and admission by load at its defaults' : ', admission by load lifted (ADMISSION_MAX_LAG_MS and ADMISSION_MAX_LATENESS_MS 10000)'}`;
/** voicegw as deployed: nothing but its upstream and port set, for the overload section. */
const AS_DEPLOYED: Target = { name: 'voicegw', start: (o) => startGateway(o) };

const speech = loadSpeech();
const replyFrames = speech.sentences.reduce((n, s) => n + s.packets.length, 0);


// CPU of every process that shares the cores during a probe: the target, the simulator, this process (the
// load driver: every client socket), and the rest of the machine.

/** utime + stime of a process, all threads, in seconds (NaN once it is gone). */
function procCpuSeconds(pid: number): number {
  return statCpuSeconds(`/proc/${pid}/stat`);
}

/** utime + stime from a /proc stat file, of a process or of one of its threads. */
function statCpuSeconds(path: string): number {
  try {
    const stat = readFileSync(path, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/**
 * Each thread's utime + stime, by thread id. With WORKERS, voicegw serves clients from several event
 * loops (one uWS App per worker thread): the one that saturates is the busiest thread, not the main one.
 */
function threadCpuSeconds(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    const cpu = statCpuSeconds(`/proc/${pid}/task/${tid}/stat`);
    if (Number.isFinite(cpu)) out.set(Number(tid), cpu);
  }
  return out;
}

/** The target's Prometheus metrics (voicegw's /metrics), name{labels} → value; undefined where there are none (ws-relay). */
async function scrape(port: number): Promise<Map<string, number> | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    if (!res.ok || !text.includes('# TYPE')) return undefined;
    const out = new Map<string, number>();
    for (const m of text.matchAll(/^(\w+(?:\{[^}]*\})?) (\S+)$/gm)) out.set(m[1]!, Number(m[2]));
    return out;
  } catch {
    return undefined;
  }
}

/** CPU seconds of every process on the machine, by pid, with the start of its command line. */
function allProcesses(): Map<number, { cpu: number; name: string }> {
  const out = new Map<number, { cpu: number; name: string }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const cpu = procCpuSeconds(pid);
    if (!Number.isFinite(cpu)) continue;
    let name = '';
    try {
      name = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
    } catch {
      // gone meanwhile
    }
    out.set(pid, { cpu, name: (name || `[pid ${pid}]`).slice(0, 70) });
  }
  return out;
}

/** The biggest CPU users between two snapshots, but for `mine`: what else ran during a probe. */
function topOthers(before: Map<number, { cpu: number; name: string }>, seconds: number, mine: number[]): string[] {
  return [...allProcesses()]
    .filter(([pid]) => !mine.includes(pid))
    .map(([pid, p]) => ({ name: p.name, cores: (p.cpu - (before.get(pid)?.cpu ?? 0)) / seconds }))
    .filter((p) => p.cores >= 0.05)
    .sort((a, b) => b.cores - a.cores)
    .slice(0, 3)
    .map((p) => `${p.name} (${p.cores.toFixed(2)})`);
}

/** CPU the rest of the machine uses while this process sleeps, in cores: above ~0.25 the figures are noisy. */
async function otherLoadCores(): Promise<number> {
  const m0 = machineBusySeconds();
  const t0 = performance.now();
  await sleep(2000);
  return (machineBusySeconds() - m0) / ((performance.now() - t0) / 1000);
}

/** Busy CPU seconds of the whole machine, from /proc/stat. */
function machineBusySeconds(): number {
  const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (v.reduce((a, b) => a + b, 0) - v[3]! - (v[4] ?? 0)) / CLK_TCK;
}

interface CpuSample {
  t: number;
  target: number;
  /** The target's threads, by id; its main thread's id is its pid. */
  threads: Map<number, number>;
  simulator: number;
  driver: number;
  machine: number;
}
type Counter = Exclude<keyof CpuSample, 't' | 'threads'>;

/** Samples every 250 ms, so that any window of the run can be cut out afterwards by interpolation. */
function sampleCpu(targetPid: number, simPid: number): () => CpuSample[] {
  const samples: CpuSample[] = [];
  const take = () => {
    const self = process.cpuUsage();
    samples.push({
      t: performance.now(),
      target: procCpuSeconds(targetPid),
      threads: threadCpuSeconds(targetPid),
      simulator: procCpuSeconds(simPid),
      driver: (self.user + self.system) / 1e6,
      machine: machineBusySeconds(),
    });
  };
  take();
  const timer = setInterval(take, 250);
  return () => {
    clearInterval(timer);
    take();
    return samples;
  };
}

/** Each counter's value at time t, linearly between the samples around it. */
function at(samples: CpuSample[], t: number): CpuSample {
  const i = Math.max(1, Math.min(samples.length - 1, samples.findIndex((s) => s.t >= t)));
  const a = samples[i - 1]!;
  const b = samples[i]!;
  const f = b.t > a.t ? Math.max(0, Math.min(1, (t - a.t) / (b.t - a.t))) : 1;
  const mix = (k: Counter) => a[k] + (b[k] - a[k]) * f;
  // A thread born between the two samples had used nothing before; one that ended keeps its last figure.
  const threads = new Map([...new Set([...a.threads.keys(), ...b.threads.keys()])].map((tid) => {
    const before = a.threads.get(tid) ?? 0;
    return [tid, before + ((b.threads.get(tid) ?? before) - before) * f];
  }));
  return { t, target: mix('target'), threads, simulator: mix('simulator'), driver: mix('driver'), machine: mix('machine') };
}

interface Measured {
  sessions: number;
  ok: boolean;
  why: string[];
  report: LoadReport;
  /** The steady part of the run (every session open), over which CPU is divided by frames; else the whole run. */
  window: { fromS: number; toS: number; frames: number; steady: boolean };
  usPerFrame: number;
  /**
   * CPU in cores over the window (1 = one core busy); `idle` is what was left of the machine's cores.
   * `targetLoop` is the target's main thread, `targetBusiest` its busiest thread (with WORKERS, a worker's
   * event loop), `targetThreads` how many of its threads used more than a tenth of a core.
   */
  cores: { target: number; targetLoop: number; targetBusiest: number; targetThreads: number; simulator: number; driver: number; other: number; idle: number };
  rssIdleBytes: number;
  rssLoadBytes: number;
  /** CPU the rest of the machine used over the whole run (cores): other work that may have caused a failure. */
  otherRunCores: number;
  /** The processes outside the bench that used the most CPU during the run: who made the noise. */
  otherTop: string[];
  /** A failure under other load is probed once more; this is the second run. */
  repeated?: boolean;
  /**
   * Where the latency tail comes from: the longest event-loop stalls (ms) of the driver (its clock stamps
   * every arrival) and of the target (from its /metrics, 10 ms resolution; voicegw only), and the target's
   * major GCs in the run.
   */
  stalls: { driverP99Ms: number; driverMaxMs: number; targetMaxMs: number; majorGcs: number; majorGcMs: number };
}

/**
 * One load run of `sessions` against a fresh target and a fresh simulator, each its own child process, so
 * that nothing from an earlier probe (heap, JIT state, sockets in TIME_WAIT aside) weighs on this one.
 * `during` runs alongside the load (the profiler), given the target's pid.
 */
async function probe(target: Target, sessions: number, extraEnv: Record<string, string> = {}, during?: (pid: number) => Promise<void>): Promise<Measured> {
  const sim = await startSimulator({ pacing: 'xiaozhi' });
  let gw: GatewayTarget | undefined;
  try {
    gw = await target.start({ upstreamUrl: sim.url, env: extraEnv });
    const stopSampling = sampleCpu(gw.pid, sim.pid);
    const processes = allProcesses();
    const t0 = performance.now();
    const metrics0 = await scrape(gw.port); // also resets prom-client's event-loop delay histogram
    const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    loop.enable();
    const side = during?.(gw.pid);
    const report = await runLoad({
      url: gw.url,
      sessions,
      replies: REPLIES,
      rampS: RAMP_S,
      text: 'hello',
      wav: undefined,
      uplinkCodec: 'opus',
      codec: CODEC,
      rate: 24000,
      transport: 'binary',
      pacing: 'none', // the relay forwards as frames come; the gateway is asked to do the same
      prebufferMs: 0,
      buffersMs: [120],
      bargeIn: 0,
      slow: 0,
      token: undefined,
      // Bounds a probe that falls far behind: a reply takes about 6.5 s when every hop keeps up.
      timeoutS: RAMP_S + REPLIES * 15 + 10,
      seed: 1,
      upstream: "the load tool's simulator (child process), xiaozhi pacing",
      upstreamSendTimes: sim.takeSendTimes,
      gatewayPid: gw.pid,
    });
    await side;
    loop.disable();
    // The tool counts lost frames against the simulator's sends of each tagged session, but the relay does
    // not pass the tag upstream (it drops `mcp`). Every reply is the whole fixture, so count instead, for
    // the sessions admitted: one refused was never owed a frame.
    const missing = (sessions - report.sessions.refused) * REPLIES * replyFrames - report.frames.received;
    if (missing > report.frames.lost) report.frames.lost = missing;
    const metrics1 = await scrape(gw.port);
    const samples = stopSampling();
    const otherTop = topOthers(processes, (performance.now() - t0) / 1000, [process.pid, gw.pid, sim.pid]);
    // prom-client adds the kind="major" series at the first major GC: absent from a scrape means none yet.
    const major = (m: Map<string, number> | undefined, k: string) => (m === undefined ? NaN : (m.get(`voicegw_nodejs_gc_duration_seconds_${k}{kind="major"}`) ?? 0));
    const stalls = {
      driverP99Ms: loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS,
      driverMaxMs: loop.max / 1e6 - LOOP_RESOLUTION_MS,
      targetMaxMs: ((metrics1?.get('voicegw_nodejs_eventloop_lag_max_seconds') ?? NaN) - 0.01) * 1000,
      majorGcs: major(metrics1, 'count') - major(metrics0, 'count'),
      majorGcMs: (major(metrics1, 'sum') - major(metrics0, 'sum')) * 1000,
    };
    return { ...measure(report, samples, gw.pid), ...meetsSlo(report, target === AS_DEPLOYED ? { refusals: 'allowed' } : {}), sessions, report, stalls, otherTop };
  } finally {
    await gw?.stop();
    await sim.stop();
  }
}

function measure(report: LoadReport, samples: CpuSample[], pid: number): Pick<Measured, 'window' | 'usPerFrame' | 'cores' | 'rssIdleBytes' | 'rssLoadBytes' | 'otherRunCores'> {
  // The report's clock is this process's performance.now(); its start is stated to the millisecond.
  const startedAt = Date.parse(report.run.startedAt) - performance.timeOrigin;
  const n = report.run.sessions - report.sessions.refused;
  // Seconds in which every session was open from start to end: no handshakes, no session winding down.
  const full = report.timeline.filter((e, i) => i > 0 && e.sessionsOpen === n && report.timeline[i - 1]!.sessionsOpen === n);
  const steady = full.length >= 3;
  const fromS = steady ? full[0]!.t : 0;
  const toS = steady ? full.at(-1)!.t + 1 : report.run.durationS;
  const frames = report.timeline.filter((e) => e.t >= fromS && e.t < toS).reduce((sum, e) => sum + e.frames, 0);
  const a = at(samples, startedAt + fromS * 1000);
  const b = at(samples, startedAt + toS * 1000);
  const seconds = (b.t - a.t) / 1000;
  const use = (k: Counter) => (b[k] - a[k]) / seconds;
  const threads = [...b.threads].map(([tid, cpu]) => ({ tid, cores: (cpu - (a.threads.get(tid) ?? 0)) / seconds }));
  const cores = {
    target: use('target'),
    targetLoop: threads.find((th) => th.tid === pid)?.cores ?? NaN,
    targetBusiest: Math.max(0, ...threads.map((th) => th.cores)),
    targetThreads: threads.filter((th) => th.cores > 0.1).length,
    simulator: use('simulator'),
    driver: use('driver'),
    other: 0,
    idle: NPROC - use('machine'),
  };
  cores.other = use('machine') - cores.target - cores.simulator - cores.driver;
  const [first, last] = [samples[0]!, samples.at(-1)!];
  const other = last.machine - first.machine - (last.target - first.target) - (last.simulator - first.simulator) - (last.driver - first.driver);
  return {
    window: { fromS, toS, frames, steady },
    usPerFrame: ((b.target - a.target) * 1e6) / frames,
    cores,
    rssIdleBytes: report.gateway?.startRssBytes ?? NaN,
    rssLoadBytes: report.gateway?.peakRssBytes ?? NaN,
    otherRunCores: other / ((last.t - first.t) / 1000),
  };
}

/** perf at the knee: `--perf-basic-prof` names the JS frames; perf records every thread of the process. */
async function profileAt(sessions: number): Promise<{ measured: Measured; perf: PerfSummary } | undefined> {
  const file = PERF_DATA ?? join(tmpdir(), `voicegw-capacity-${process.pid}.perf`);
  let pid = 0;
  try {
    const measured = await probe(TARGETS[0]!, sessions, { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --perf-basic-prof`.trim() }, async (p) => {
      pid = p;
      // Once the ramp is over and every session is in its replies: the steady state the capacity is about.
      await sleep((RAMP_S + 1) * 1000);
      // Not execFileSync: this process is the load driver, and its event loop must keep running meanwhile.
      // -B -N: no build-id pass at the end, which would take CPU from the run still going on.
      const perf = spawn('perf', ['record', '-q', '-B', '-N', '-F', '499', '-g', '-p', String(p), '-o', file, '--', 'sleep', String(PROFILE_S)], { stdio: 'ignore' });
      const [code] = (await once(perf, 'exit')) as [number | null];
      if (code !== 0) throw new Error(`perf record exited with ${code}`);
    });
    return { measured, perf: summarisePerf(file, pid) };
  } catch (error) {
    console.warn(`profile failed: ${error instanceof Error ? error.message : String(error)}`);
    return undefined;
  } finally {
    if (PERF_DATA === undefined) {
      rmSync(file, { force: true });
      rmSync(`/tmp/perf-${pid}.map`, { force: true });
    } else console.log(`profile kept: perf report -i ${file} --no-children (JS symbols: /tmp/perf-${pid}.map)`);
    // Node 20 writes V8 logs beside the process when --perf-basic-prof is on.
    for (const f of readdirSync(ROOT)) if (f.startsWith('isolate-') && f.endsWith(`-${pid}-v8.log`)) rmSync(join(ROOT, f), { force: true });
  }
}

interface TargetResult {
  name: TargetName;
  capacity: number;
  probes: Measured[];
  /** The probe at capacity, whose figures the table shows. */
  knee: Measured | undefined;
  /** The probe at CPU_AT sessions: the search's own (it doubles through 200 from 100), or one made for it. */
  atCpu: Measured | undefined;
  /** Memory per added session from every passing probe (least squares): fixed costs cancel out. */
  marginalKbPerSession: number;
}

async function main(): Promise<void> {
  const started = Date.now();
  const node = process.version;
  // Children inherit it. Throws without the privilege: better than a silently different setup.
  if (NICE !== undefined) setPriority(Number(NICE));
  console.log(
    `bench:capacity: SLO per run: no lost frame, no failed session, p99 interval ≤ ${SLO.intervalP99Ms} ms, p99 TTFA ≤ ${SLO.ttfaP99Ms} ms, ` +
      `no underrun at 120 ms; search ${MIN}…${MAX} step ${STEP}; ${REPLIES} text turns per session, ramp ${RAMP_S} s, ${CODEC} downlink; ` +
      `overload: ${OFFER === 0 ? 'off' : `${OFFER} offered`}; nproc ${NPROC}, node ${node}`,
  );
  const quiet = await otherLoadCores();
  console.log(`other load before the run: ${quiet.toFixed(2)} cores${quiet > NOISY_CORES ? ' (WARNING: the figures will be noisy; run on a quiet machine)' : ''}`);
  // The baseline is measured before, between and after the targets, and its median taken: other load on
  // the machine comes and goes. The opus downlink decodes nothing, so it has no baseline.
  const decode: number[] = [];
  const measureDecode = () => {
    if (CODEC !== 'pcm16') return;
    decode.push(bareDecodeUs(DECODERS, 2));
    console.log(`bare decode: ${decode.at(-1)!.toFixed(1)} µs/frame (${DECODERS} decoders)`);
  };
  measureDecode();

  const results: TargetResult[] = [];
  for (const target of TARGETS) {
    if (ONLY !== undefined && ONLY !== target.name) continue;
    const probes: Measured[] = [];
    const found = await findCapacity(
      async (n) => {
        let m = await probe(target, n);
        // A 20 ms stall of any of the three processes breaks the interval SLO, and other work on the
        // machine causes such stalls: a failure under other load is not trusted until it happens again.
        if (!m.ok && m.otherRunCores > NOISY_CORES) {
          console.log(`${target.name} ${n} sessions failed while other work used ${m.otherRunCores.toFixed(2)} cores (${m.otherTop.join(', ')}): once more`);
          m = { ...await probe(target, n), repeated: true };
        }
        probes.push(m);
        return m.report;
      },
      { low: MIN, high: MAX, step: STEP },
      (p: Probe) => console.log(`${target.name} ${line(probes.find((m) => m.report === p.report)!)}`),
    );
    let atCpu = probes.filter((m) => m.sessions === CPU_AT).at(-1);
    if (atCpu === undefined) {
      atCpu = await probe(target, CPU_AT);
      console.log(`${target.name} (CPU at ${CPU_AT}) ${line(atCpu)}`);
    }
    const passing = probes.filter((m) => m.ok && Number.isFinite(m.rssLoadBytes));
    results.push({
      name: target.name,
      capacity: found.sessions,
      probes,
      knee: probes.find((m) => m.ok && m.sessions === found.sessions),
      atCpu,
      marginalKbPerSession: slope(passing) / 1024,
    });
    measureDecode();
  }

  const gateway = results.find((r) => r.name === 'voicegw');
  const profile = PROFILE && gateway !== undefined && gateway.capacity > 0 ? await profileAt(gateway.capacity) : undefined;
  if (profile) console.log(`profile run: voicegw ${line(profile.measured)}`);

  // Every session at once, as a reconnect storm or a balancer's failover sends them.
  const overload = OFFER > 0 && (ONLY === undefined || ONLY === 'voicegw') ? await probe(AS_DEPLOYED, OFFER) : undefined;
  if (overload) console.log(`overload: voicegw ${line(overload)}`);

  const baseline = decode.length > 0 ? median(decode) : NaN;
  const seconds = (Date.now() - started) / 1000;
  const md = markdown(results, baseline, decode, profile, overload, seconds, quiet);
  console.log(`\n${md}`);
  const date = new Date().toISOString().slice(0, 10);
  const name = ['capacity', CODEC, LABEL, date].filter((part) => part !== undefined).join('-');
  const dir = new URL('results/', import.meta.url);
  mkdirSync(dir, { recursive: true });
  writeFileSync(new URL(`${name}.md`, dir), md);
  writeFileSync(
    new URL(`${name}.json`, dir),
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        revision: REVISION,
        machine: { nproc: NPROC, cpu: cpus()[0]?.model, node },
        knobs: { min: MIN, max: MAX, step: STEP, replies: REPLIES, rampS: RAMP_S, codec: CODEC, offer: OFFER, admissionInSearch: ADMISSION, label: LABEL },
        voicegwEnv: VOICEGW_ENV,
        otherLoadBeforeCores: quiet,
        slo: SLO,
        bareDecodeUs: CODEC === 'pcm16' ? { median: baseline, runs: decode, decoders: DECODERS } : undefined,
        targets: results.map((r) => ({
          ...r,
          // The timeline and histogram of every probe would make the file large; the knee keeps its report.
          probes: r.probes.map(({ report, ...m }) => ({ ...m, report: m.sessions === r.capacity ? report : undefined })),
          knee: undefined,
          atCpu: r.atCpu && { ...r.atCpu, report: undefined },
        })),
        profile: profile && { sessions: gateway?.capacity, seconds: PROFILE_S, ok: profile.measured.ok, why: profile.measured.why, cores: profile.measured.cores, ...profile.perf },
        overload: overload && { offered: OFFER, ...overload },
        durationS: seconds,
      },
      null,
      2,
    )}\n`,
  );
  console.log(`\nwritten: bench/results/${name}.md and .json (${seconds.toFixed(0)} s)`);
}

function line(m: Measured): string {
  const r = m.report;
  const cores = `cores: target ${m.cores.target.toFixed(2)} (busiest thread ${m.cores.targetBusiest.toFixed(2)}), sim ${m.cores.simulator.toFixed(2)}, driver ${m.cores.driver.toFixed(2)}, idle ${m.cores.idle.toFixed(2)}, other (whole run) ${m.otherRunCores.toFixed(2)}`;
  return (
    `${m.sessions} sessions: ${m.ok ? 'ok' : `FAIL (${m.why.join('; ')})`}; p99 interval ${r.intervalMs.p99} ms, p99 TTFA ${r.ttfaMs.p99} ms, ` +
    `${r.sessions.refused > 0 ? `refused ${r.sessions.refused} (p99 ${r.refusalMs.p99} ms), ` : ''}lost ${r.frames.lost}, underruns@120 ${r.underruns['120']?.underruns}; ${m.usPerFrame.toFixed(0)} µs/frame; ${cores}; ` +
    `stalls: driver p99 ${fmt(m.stalls.driverP99Ms)} max ${fmt(m.stalls.driverMaxMs)} ms, target max ${fmt(m.stalls.targetMaxMs)} ms, ${fmt(m.stalls.majorGcs)} major GCs (${fmt(m.stalls.majorGcMs)} ms)` +
    (m.otherRunCores > NOISY_CORES ? `; other: ${m.otherTop.join(', ')}` : '')
  );
}

const fmt = (v: number | null | undefined, digits = 0) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
const mb = (bytes: number) => fmt(bytes / 2 ** 20, 0);

function markdown(
  results: TargetResult[],
  baseline: number,
  decode: number[],
  profile: Awaited<ReturnType<typeof profileAt>>,
  overload: Measured | undefined,
  seconds: number,
  quiet: number,
): string {
  const col = (f: (r: TargetResult, k: Measured) => string) => results.map((r) => (r.knee ? f(r, r.knee) : '–'));
  const relay = results.find((r) => r.name === 'ws-relay')?.atCpu;
  const pcm = CODEC === 'pcm16';
  const rows: string[][] = [
    ['', ...results.map((r) => r.name)],
    ['capacity (sessions within the SLO)', ...results.map((r) => (r.capacity >= MAX ? `≥ ${r.capacity} (the ceiling: raise CAPACITY_MAX)` : String(r.capacity)))],
    ['first size that failed, and why', ...results.map((r) => failedAbove(r))],
    ['CPU per delivered frame at capacity (µs)', ...col((_, k) => fmt(k.usPerFrame, 1))],
    // The like-for-like figure: both targets at the same load, whatever their capacities.
    [`CPU per delivered frame at ${CPU_AT} sessions (µs)`, ...results.map((r) => (r.atCpu ? `${fmt(r.atCpu.usPerFrame, 1)}${r.atCpu.ok ? '' : ' (that probe missed the SLO)'}` : '–'))],
    [`… ÷ ws-relay's at ${CPU_AT} sessions`, ...results.map((r) => (r.atCpu && relay ? fmt(r.atCpu.usPerFrame / relay.usPerFrame, 2) : '–'))],
    ...(pcm
      ? [
          [`bare Opus decode per frame, ${DECODERS} decoders (µs)`, ...results.map(() => fmt(baseline, 1))],
          ['ratio at capacity (CPU per frame ÷ bare decode)', ...col((_, k) => fmt(k.usPerFrame / baseline, 2))],
        ]
      : []),
    ['memory per session (KiB): (RSS at load − idle) ÷ sessions', ...col((_, k) => fmt((k.rssLoadBytes - k.rssIdleBytes) / k.sessions / 1024))],
    ['RSS idle → at load (MiB)', ...col((_, k) => `${mb(k.rssIdleBytes)} → ${mb(k.rssLoadBytes)}`)],
    ['memory per added session (KiB, slope over passing probes)', ...results.map((r) => fmt(r.marginalKbPerSession))],
    ['p99 arrival interval (ms)', ...col((_, k) => fmt(k.report.intervalMs.p99, 1))],
    ['p99 time to first audio (ms)', ...col((_, k) => fmt(k.report.ttfaMs.p99, 1))],
    ['p99 gateway-added latency (ms)', ...col((_, k) => fmt(k.report.gatewayLatencyMs?.p99, 1))],
    ['frames/s delivered (steady window)', ...col((_, k) => fmt(k.window.frames / (k.window.toS - k.window.fromS)))],
    ['CPU (cores): target (main thread; busiest thread; threads above 0.1)', ...col((_, k) => `${fmt(k.cores.target, 2)} (${fmt(k.cores.targetLoop, 2)}; ${fmt(k.cores.targetBusiest, 2)}; ${k.cores.targetThreads})`)],
    ['CPU (cores): simulator child', ...col((_, k) => fmt(k.cores.simulator, 2))],
    ['CPU (cores): load driver (clients)', ...col((_, k) => fmt(k.cores.driver, 2))],
    ['CPU (cores): rest of the machine / idle', ...col((_, k) => `${fmt(k.cores.other, 2)} / ${fmt(k.cores.idle, 2)}`)],
    ['event-loop stalls, driver p99 / max (ms)', ...col((_, k) => `${fmt(k.stalls.driverP99Ms, 1)} / ${fmt(k.stalls.driverMaxMs, 1)}`)],
    ['event-loop stall max, target (ms, 10 ms resolution)', ...col((_, k) => fmt(k.stalls.targetMaxMs))],
    ['major GCs in the target during the run (total pause ms)', ...col((_, k) => `${fmt(k.stalls.majorGcs)} (${fmt(k.stalls.majorGcMs)})`)],
    ['window measured (s of the run)', ...col((_, k) => `${fmt(k.window.fromS)}–${fmt(k.window.toS)}${k.window.steady ? '' : ' (whole run)'}`)],
  ];
  const verdicts = results.map((r) => `- ${r.name}: ${verdict(r)}`).join('\n');
  const mark = (m: Measured) => `${m.sessions} ${m.ok ? 'ok' : '✗'}${m.repeated ? ' (2nd run)' : ''}${m.otherRunCores > NOISY_CORES ? ` (other load ${fmt(m.otherRunCores, 2)})` : ''}`;
  const probes = results
    .map((r) => `- ${r.name}: ${r.probes.map(mark).join(', ')}${r.atCpu && !r.probes.includes(r.atCpu) ? `; and for CPU at ${CPU_AT}: ${mark(r.atCpu)}` : ''}`)
    .join('\n');
  const spread = `${fmt(Math.min(...decode), 1)}–${fmt(Math.max(...decode), 1)}`;
  const knobs = [NICE === undefined ? '' : `CAPACITY_NICE=${NICE}`, pcm ? '' : `CAPACITY_CODEC=${CODEC}`, LABEL === undefined ? '' : `CAPACITY_LABEL=${LABEL}`].filter((k) => k !== '');
  let out =
    `# Capacity on ${new Date().toISOString().slice(0, 10)}, ${CODEC} downlink\n\n` +
    `\`${knobs.map((k) => `${k} `).join('')}npm run bench:capacity\` · ${REVISION} · nproc ${NPROC} (${cpus()[0]?.model ?? '?'}) · node ${process.version} · ${fmt(seconds)} s · ` +
    `${REPLIES} text turns per session, ramp ${RAMP_S} s, downlink **${CODEC}** 24 kHz binary${pcm ? '' : ' (passed through: no decode in either target)'}, pacing none, xiaozhi upstream pacing; ` +
    `voicegw: ${VOICEGW_ENV}; ` +
    `simulator, target and load driver are three processes on the same ${NPROC} cores; other load before the run: ${fmt(quiet, 2)} cores.\n\n` +
    `SLO of every run: no lost frame, no failed session, p99 arrival interval ≤ ${SLO.intervalP99Ms} ms, p99 time to first audio ≤ ${SLO.ttfaP99Ms} ms, ` +
    `no underrun at a 120 ms buffer; in the search a refused session is a failure. Figures below are from the probe at capacity (a fresh target child), but for the rows at ${CPU_AT} sessions.\n\n` +
    `${table(rows)}\n\nAt capacity, what was saturated:\n${verdicts}\n\n` +
    (pcm ? `Bare decode: median of ${decode.length} runs (range ${spread} µs), before, between and after the targets.\n\n` : '') +
    `Probes (in order; the search doubles from ${MIN}, then bisects to ${STEP}):\n${probes}\n`;
  if (profile) out += `\n${profileSection(profile)}`;
  if (overload) out += `\n${overloadMarkdown(overload)}`;
  return out;
}

/** Which resource ran out at the knee, from the CPU figures: the machine's cores, or one thread of the target. */
function verdict(r: TargetResult): string {
  const k = r.knee;
  if (k === undefined) return 'no size met the SLO.';
  const c = k.cores;
  if (c.idle < 0.3) return `the machine: ${fmt(NPROC - c.idle, 2)} of ${NPROC} cores busy (target ${fmt(c.target, 2)}, simulator ${fmt(c.simulator, 2)}, driver ${fmt(c.driver, 2)}, other ${fmt(c.other, 2)}).`;
  const above = r.probes.filter((m) => !m.ok && m.sessions > r.capacity).sort((a, b) => a.sessions - b.sessions)[0];
  // One event loop does all the JS and socket I/O of the sessions it holds: the main thread, or with
  // WORKERS each worker's. The busiest one is the one that saturates.
  return (
    `not the machine (${fmt(c.idle, 2)} cores idle) but one thread of the target: its busiest (an event loop, which does all the JS and socket I/O of its sessions) was busy ${fmt(c.targetBusiest * 100)}% of the time ` +
    `(${c.targetThreads} thread${c.targetThreads === 1 ? '' : 's'} above a tenth of a core; the whole process ${fmt(c.target, 2)} cores)${above ? `, and ${fmt(above.cores.targetBusiest * 100)}% at ${above.sessions} sessions, which failed` : ''}. ` +
    `Frames come in bursts (5 at each sentence start; sessions' 60 ms ticks coincide at random), so they wait behind each other well before 100%.`
  );
}

/** The overload section: what voicegw as deployed does with more sessions than it admits. */
function overloadMarkdown(m: Measured): string {
  const r = m.report;
  const admitted = r.run.sessions - r.sessions.refused;
  const others = Object.entries(r.sessions.failures).map(([why, n]) => `${why} ×${n}`).join(', ');
  const t = r.refusalMs;
  const rows = [
    ['', 'voicegw'],
    ['offered (ramp)', `${r.run.sessions} (${RAMP_S} s)`],
    ['admitted', String(admitted)],
    ['refused (error overloaded, close 1013)', String(r.sessions.refused)],
    ['time to refusal, upgrade request → close: p50 / p99 / max (ms)', t.count === 0 ? '–' : `${fmt(t.p50, 1)} / ${fmt(t.p99, 1)} / ${fmt(t.max, 1)}`],
    ['every refusal within 1 s', t.count === 0 ? '– (none refused)' : t.max !== null && t.max <= 1000 ? 'yes' : 'no'],
    ['admitted sessions that failed', r.sessions.failed === 0 ? '0' : `${r.sessions.failed}: ${others}`],
    ['admitted sessions met the SLO', m.ok ? 'yes' : `no: ${m.why.join('; ')}`],
    ['p99 arrival interval / p99 TTFA (ms)', `${fmt(r.intervalMs.p99, 1)} / ${fmt(r.ttfaMs.p99, 1)}`],
    ['frames lost / underruns at 120 ms', `${r.frames.lost} / ${r.underruns['120']?.underruns ?? '–'}`],
    ['close codes / error codes', `${JSON.stringify(r.sessions.byClose)} / ${JSON.stringify(r.sessions.byError)}`],
    ['CPU (cores): voicegw (busiest thread) / idle', `${fmt(m.cores.target, 2)} (${fmt(m.cores.targetBusiest, 2)}) / ${fmt(m.cores.idle, 2)}`],
    ['RSS idle → peak (MiB)', `${mb(m.rssIdleBytes)} → ${mb(m.rssLoadBytes)}`],
    ['other load during the run (cores)', `${fmt(m.otherRunCores, 2)}${m.otherRunCores > NOISY_CORES ? `: ${m.otherTop.join(', ')}` : ''}`],
  ];
  return (
    `## Overload: ${r.run.sessions} sessions offered to voicegw as deployed\n\n` +
    `One run of ${r.run.sessions} sessions against a fresh voicegw with nothing set but its upstream and port: its default MAX_SESSIONS, WORKERS and admission by load. ` +
    `The admitted sessions must meet the SLO above; the rest must be refused (error \`overloaded\`, close 1013) within a second of their upgrade request.\n\n` +
    `${table(rows)}\n`
  );
}

function failedAbove(r: TargetResult): string {
  const failed = r.probes.filter((m) => !m.ok && m.sessions > r.capacity).sort((a, b) => a.sessions - b.sessions)[0];
  return failed ? `${failed.sessions}: ${failed.why.join('; ')}` : '– (none failed)';
}

function profileSection(p: NonNullable<Awaited<ReturnType<typeof profileAt>>>): string {
  const m = p.measured;
  return profileMarkdown(p.perf, { sessions: m.sessions, seconds: PROFILE_S, ok: m.ok, why: m.why, usPerFrame: m.usPerFrame, cores: m.cores });
}

/** Least-squares slope of RSS at load over sessions. */
function slope(ms: Measured[]): number {
  if (ms.length < 2) return NaN;
  const xs = ms.map((m) => m.sessions);
  const ys = ms.map((m) => m.rssLoadBytes);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  const sxx = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  return sxx === 0 ? NaN : xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0) / sxx;
}



for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));
main().then(
  () => process.exit(),
  (error: unknown) => {
    console.error(`bench:capacity failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
