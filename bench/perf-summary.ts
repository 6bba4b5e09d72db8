// Where a process spends its CPU, from a `perf record -g` of it (with --perf-basic-prof, so that JS frames
// have names): each sample is charged to the function it was in (self time), and functions are grouped
// into categories that say what to change (libopus, socket syscalls, JSON, RxJS, GC …). Used by
// bench/capacity.ts for "what limits capacity now".
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface PerfSummary {
  samples: number;
  /** Share of the samples taken on the main thread (the event loop); the rest are V8's and libuv's helper threads. */
  mainThreadShare: number;
  /** Share of samples per category, largest first; `mainThread`: the same among the main thread's samples. */
  categories: { name: string; share: number; mainThread: number }[];
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
  const categories = new Map<string, { n: number; main: number }>();
  const functions = new Map<string, { category: string; n: number }>();
  let main = 0;
  for (const { tid, chain } of samples) {
    const category = categorise(chain);
    const c = categories.get(category) ?? { n: 0, main: 0 };
    c.n++;
    if (tid === pid) {
      c.main++;
      main++;
    }
    categories.set(category, c);
    // The offset in "file.ts:1:403" tells tsx's anonymous functions apart; the dso shortened to its name.
    const leaf = chain[0];
    const name = leaf ? `${leaf.sym.replace(/^JS:[*~^]?/, '').replaceAll('file://', '').replaceAll(ROOT, '')} [${leaf.dso.split('/').pop()}]` : 'unknown';
    const f = functions.get(name) ?? { category, n: 0 };
    f.n++;
    functions.set(name, f);
  }
  const n = samples.length;
  return {
    samples: n,
    mainThreadShare: main / n,
    categories: [...categories].map(([name, c]) => ({ name, share: c.n / n, mainThread: c.main / Math.max(1, main) })).sort((a, b) => b.share - a.share),
    functions: [...functions]
      .map(([name, f]) => ({ name, category: f.category, share: f.n / n }))
      .sort((a, b) => b.share - a.share)
      .slice(0, 25),
  };
}
