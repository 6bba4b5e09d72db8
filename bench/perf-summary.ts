// Where a process spends its CPU, from a `perf record -g` of it (with --perf-basic-prof, so that JS frames
// have names): each sample is charged to the function it was in (self time), and functions are grouped
// into categories that say what to change (libopus, socket syscalls, JSON, RxJS, GC …). Used by
// bench/capacity.ts for "what limits capacity now"; run alone it summarises a kept profile:
//   node --import tsx bench/perf-summary.ts <perf.data> <pid>   (the JS symbols: /tmp/perf-<pid>.map)
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface PerfSummary {
  samples: number;
  /**
   * The threads that ran the gateway's event loops, by what they ran (see `isEventLoop`): the main thread
   * with WORKERS=1, the worker threads with WORKERS>=2 (whose main thread only supervises).
   */
  eventLoops: { tid: number; main: boolean; share: number }[];
  /** Share of the samples taken on the event-loop threads together; the rest are helper threads and, with workers, the supervising main thread. */
  eventLoopShare: number;
  /** Share of the samples taken on the main thread when it is not an event loop (the supervisor), else 0. */
  supervisorShare: number;
  /** Share of samples per category, largest first; `eventLoops`: the same among the event-loop threads' samples together. */
  categories: { name: string; share: number; eventLoops: number }[];
  /** Share of samples per function (self time), largest first. */
  functions: { name: string; category: string; share: number }[];
}

interface Frame {
  sym: string;
  dso: string;
}

/** Samples of `perf script`, each its thread id and its call chain, leaf first. */
function readSamples(file: string): { tid: number; chain: Frame[] }[] {
  const text = execFileSync('perf', ['script', '-i', file, '-F', 'tid,ip,sym,dso'], {
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const samples: { tid: number; chain: Frame[] }[] = [];
  let chain: Frame[] | undefined;
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      chain = undefined;
      continue;
    }
    if (!line.startsWith('\t')) {
      samples.push({ tid: Number.parseInt(line, 10), chain: (chain = []) });
      continue;
    }
    // "\t    7f11861214ca JS:*name /path/file.js:31:24 (/tmp/perf-28112.map)"
    const m = /^\s*[0-9a-f]+\s+(.*?)\s+\(([^()]*)\)\s*$/.exec(line);
    if (m && chain) chain.push({ sym: m[1]!, dso: m[2]! });
  }
  return samples;
}

/**
 * A sample of an event loop: JS of the client path on its stack, i.e. voicegw's session code (src/ but for
 * src/workers/, which is the supervisor's and a worker's start-up) or the libraries that serve it. perf names
 * every thread "node" (Node 20 names neither its worker threads nor V8's), so threads are told apart by what
 * they run: V8's helper threads (GC, compiler) and libuv's threadpool run no JS; the supervising main thread
 * runs libuv, a little uWS (its loop is tied to the main thread's) and the supervisor's JS; tsx's module-loader
 * thread is a Node worker too, but runs no gateway code.
 */
const CLIENT_PATH = /\/src\/(?!workers\/)\w+\/|node_modules\/(rxjs|ws|uWebSockets\.js)\//;
function isEventLoopSample(chain: Frame[]): boolean {
  return chain.some((f) => f.dso.includes('perf-') && CLIENT_PATH.test(f.sym));
}

const GC = /Heap::|Scavenge|MarkCompact|ConcurrentMarking|Sweeper|MinorMS|GCTracer|MarkingVisitor|EvacuateVisitor/;

/** What a sample's CPU was spent on, by its leaf frame (and, for the kernel and GC, by its callers). */
function categorise(chain: Frame[]): string {
  const leaf = chain[0];
  if (leaf === undefined) return 'unknown';
  // GC first: the collector runs inside V8's C++ and in helper threads, under any leaf.
  if (chain.some((f) => GC.test(f.sym))) return 'GC (V8)';
  const { sym, dso } = leaf;
  if (dso.includes('opus.node')) return /^(Napi::|OpusEncoder::|napi_)/.test(sym) ? 'opus.node glue (N-API)' : 'libopus (decode)';
  if (dso.includes('kernel')) {
    // A system call is named by the libc wrapper that entered it (the kernel's own entry points are often
    // inlined). On loopback a send also runs the receiver's TCP path in a softirq: that is charged to send.
    const caller = chain.find((f) => !f.dso.includes('kernel'))?.sym ?? '';
    if (chain.some((f) => f.sym.startsWith('entry_SYSCALL'))) {
      if (/send|write/.test(caller)) return 'kernel: send (sendto/writev)';
      if (/recv|read/.test(caller)) return 'kernel: receive (read/recvfrom)';
      if (/epoll/.test(caller)) return 'kernel: epoll_wait';
      if (/futex|lll_lock|pthread_cond|sem_post/.test(caller)) return 'kernel: futex (waking another thread)';
      return `kernel: other syscalls (${caller.replace(/^__(GI___)?/, '') || '?'})`;
    }
    if (chain.some((f) => /page_fault/.test(f.sym))) return 'kernel: page faults';
    return 'kernel: interrupts (timer, softirq)';
  }
  if (/uws|uWebSockets/i.test(dso)) return 'uWS (native)';
  if (dso.includes('libc.so') || dso.includes('libstdc++')) return 'libc (memcpy, malloc …)';
  if (dso.includes('perf-') || sym.startsWith('JS:') || sym.startsWith('Builtin:') || sym.startsWith('BytecodeHandler:')) return jsCategory(sym);
  // The node binary: V8 (its builtins are embedded here), libuv, Node's C++.
  if (/Json/.test(sym)) return 'JSON (parse/stringify)';
  if (/^uv_|^uv__/.test(sym)) return 'libuv';
  if (/^node::|napi|v8impl/.test(sym)) return 'Node C++ (streams, Buffer, N-API)';
  // V8's builtins and runtime (property lookups, write barriers, calls) work for the JS that called them:
  // charge them to it, so that "RxJS" means what RxJS costs, not only the instructions in its own code.
  const js = chain.find((f) => f.sym.startsWith('JS:'));
  return js ? jsCategory(js.sym) : 'V8 runtime, no JS caller (compiler, entry)';
}

function jsCategory(sym: string): string {
  if (/Json/.test(sym)) return 'JSON (parse/stringify)';
  if (sym.includes('node_modules/rxjs/')) return 'RxJS';
  if (sym.includes('node_modules/ws/')) return 'ws (JS)';
  if (sym.includes('node_modules/pino') || sym.includes('node_modules/prom-client')) return 'pino, prom-client';
  const own = /\/src\/(\w+)\//.exec(sym) ?? /\/bench\/()/.exec(sym);
  if (own) return own[1] ? `voicegw JS: ${own[1]}/` : 'relay JS';
  if (sym.includes('node:')) return 'Node core JS (events, streams, net)';
  if (sym.startsWith('Builtin:') || sym.startsWith('BytecodeHandler:')) return 'V8 builtins';
  return 'JS (other)';
}

/** `pid`: the profiled process, whose main thread has the same id. */
export function summarisePerf(file: string, pid: number): PerfSummary {
  const samples = readSamples(file);
  // Which threads are event loops: those with a sample of the client path. A thread that ran none in the
  // whole profile (a helper, the supervisor, the loader) is not one, however busy.
  const loops = new Set<number>();
  const perThread = new Map<number, number>();
  for (const { tid, chain } of samples) {
    perThread.set(tid, (perThread.get(tid) ?? 0) + 1);
    if (!loops.has(tid) && isEventLoopSample(chain)) loops.add(tid);
  }
  // No JS symbols (the map is gone): the busiest thread, rather than none.
  if (loops.size === 0 && perThread.size > 0) loops.add([...perThread].sort((a, b) => b[1] - a[1])[0]![0]);
  const categories = new Map<string, { n: number; loop: number }>();
  const functions = new Map<string, { category: string; n: number }>();
  let loop = 0;
  for (const { tid, chain } of samples) {
    const category = categorise(chain);
    const c = categories.get(category) ?? { n: 0, loop: 0 };
    c.n++;
    if (loops.has(tid)) {
      c.loop++;
      loop++;
    }
    categories.set(category, c);
    // The offset in "file.ts:1:403" tells tsx's anonymous functions apart; the dso shortened to its name.
    const leaf = chain[0];
    const name = leaf ? `${leaf.sym.replace(/^JS:[*~^]?/, '').replaceAll('file://', '').replaceAll(ROOT, '')} [${leaf.dso.split('/').pop()}]` : 'unknown';
    const f = functions.get(name) ?? { category, n: 0 };
    f.n++;
    functions.set(name, f);
  }
  const n = Math.max(1, samples.length);
  return {
    samples: samples.length,
    eventLoops: [...loops].map((tid) => ({ tid, main: tid === pid, share: (perThread.get(tid) ?? 0) / n })).sort((a, b) => b.share - a.share),
    eventLoopShare: loop / n,
    supervisorShare: loops.has(pid) ? 0 : (perThread.get(pid) ?? 0) / n,
    categories: [...categories].map(([name, c]) => ({ name, share: c.n / n, eventLoops: c.loop / Math.max(1, loop) })).sort((a, b) => b.share - a.share),
    functions: [...functions]
      .map(([name, f]) => ({ name, category: f.category, share: f.n / n }))
      .sort((a, b) => b.share - a.share)
      .slice(0, 25),
  };
}

/** The profiled run's own figures, for the line under the heading. */
export interface ProfiledRun {
  sessions: number;
  seconds: number;
  ok: boolean;
  why: string[];
  usPerFrame: number;
  cores: { target: number; simulator: number; driver: number; idle: number };
}

const fmt = (v: number, digits = 0) => (Number.isFinite(v) ? v.toFixed(digits) : '–');
const pct = (x: number, digits = 1) => `${(x * 100).toFixed(digits)}%`;

function table(rows: string[][]): string {
  const [head, ...body] = rows;
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  return [line(head!), line(head!.map(() => '---')), ...body.map(line)].join('\n');
}

/** "What limits capacity now": the section bench/capacity.ts writes into results/capacity-*.md. */
export function profileMarkdown(perf: PerfSummary, m: ProfiledRun): string {
  const cats = perf.categories.filter((c) => c.share >= 0.005 || c.eventLoops >= 0.005).map((c) => [c.name, pct(c.share), pct(c.eventLoops)]);
  const fns = perf.functions.slice(0, 15).map((f) => [f.name.replaceAll('|', '\\|'), f.category, pct(f.share)]);
  const k = perf.eventLoops.length;
  return (
    `## What limits capacity now: voicegw profiled at ${m.sessions} sessions\n\n` +
    `perf record -g at 499 Hz on every thread of the gateway child (node --perf-basic-prof) for ${m.seconds} s after the ramp; ` +
    `${perf.samples} samples. That run: ${m.ok ? 'met the SLO' : `missed the SLO under the profiler (${m.why.join('; ')})`}; ` +
    `${fmt(m.usPerFrame, 1)} µs/frame; cores: gateway ${fmt(m.cores.target, 2)}, simulator ${fmt(m.cores.simulator, 2)}, driver ${fmt(m.cores.driver, 2)}, idle ${fmt(m.cores.idle, 2)}.\n\n` +
    `${headline(perf)}\n\n` +
    `${loopsSentence(perf)} ` +
    `Self time by category (V8 builtins and runtime are charged to the JS that called them):\n\n` +
    `${table([['category', 'all threads', k === 1 ? 'the event loop' : `the ${k} event loops`], ...cats])}\n\n` +
    `Top functions (self time, all threads):\n\n${table([['function', 'category', 'share'], ...fns])}\n`
  );
}

/** Which threads were the event loops, and how the samples split between them and the rest. */
function loopsSentence(perf: PerfSummary): string {
  const k = perf.eventLoops.length;
  const rest = Math.max(0, 1 - perf.eventLoopShare - perf.supervisorShare);
  const main = perf.eventLoops.some((t) => t.main);
  const which = main
    ? k === 1
      ? 'The event loop was the main thread (no worker threads: all JS, all socket I/O)'
      : `The event loops were ${k} threads, the main thread among them`
    : `The event loops were ${k} worker thread${k === 1 ? '' : 's'} (each with its own uWS App and its own sessions: all their JS, all their socket I/O)`;
  const each = k > 1 ? ` (${perf.eventLoops.map((t) => pct(t.share)).join(', ')})` : '';
  const supervisor = main ? '' : `the main thread, which only supervises, ${pct(perf.supervisorShare)}; `;
  return (
    `${which}; ${k === 1 ? 'it' : 'they'} took ${pct(perf.eventLoopShare)} of the samples${each}; ${supervisor}` +
    `the rest, ${pct(rest)}, are helper threads (V8's GC and compiler, libuv's threadpool, tsx's module loader).`
  );
}

/** The event loops' time in four parts: the decode every PCM relay pays, the kernel, JavaScript, the rest. */
function headline(perf: PerfSummary): string {
  const part = (test: (name: string) => boolean) => perf.categories.filter((c) => test(c.name)).reduce((sum, c) => sum + c.eventLoops, 0);
  const opus = part((n) => n.startsWith('libopus'));
  const kernel = part((n) => n.startsWith('kernel'));
  const sockets = part((n) => n.startsWith('kernel: send') || n.startsWith('kernel: receive'));
  const gc = part((n) => n.startsWith('GC'));
  const js = part((n) => /JS|RxJS|JSON|pino|V8 runtime/.test(n));
  const k = perf.eventLoops.length;
  return (
    `In short, of the ${k === 1 ? "event loop's time" : `${k} event loops' time together`}: libopus decoding ${pct(opus, 0)}, the kernel ${pct(kernel, 0)} (socket sends and receives ${pct(sockets, 0)}), ` +
    `JavaScript ${pct(js, 0)} (RxJS, ws, Node's streams, voicegw's own code, JSON, V8 called from them), GC ${pct(gc, 0)}, ` +
    `other native code ${pct(Math.max(0, 1 - opus - kernel - js - gc), 0)} (libc, Node's C++, libuv, uWS).`
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, pid] = process.argv.slice(2);
  if (file === undefined || pid === undefined) {
    console.error('usage: node --import tsx bench/perf-summary.ts <perf.data> <pid of the profiled process>');
    process.exit(2);
  }
  const perf = summarisePerf(file, Number(pid));
  const k = perf.eventLoops.length;
  console.log(
    `${perf.samples} samples; event loops: ${perf.eventLoops.map((t) => `tid ${t.tid}${t.main ? ' (main)' : ''} ${pct(t.share)}`).join(', ')}\n\n` +
      `${headline(perf)}\n\n${loopsSentence(perf)}\n\n` +
      `${table([['category', 'all threads', k === 1 ? 'the event loop' : `the ${k} event loops`], ...perf.categories.map((c) => [c.name, pct(c.share), pct(c.eventLoops)])])}\n\n` +
      table([['function', 'category', 'share'], ...perf.functions.slice(0, 15).map((f) => [f.name.replaceAll('|', '\\|'), f.category, pct(f.share)])]),
  );
}
