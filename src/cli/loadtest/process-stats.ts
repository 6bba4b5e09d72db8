// CPU time and memory while the load runs: the gateway's from /proc when it is a process on this
// machine, else from the Prometheus process metrics its /metrics may expose; and the whole machine's
// busy time, which shows other work competing for the same cores.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface CpuSample {
  /** performance.now() when taken. */
  t: number;
  /** user + system CPU seconds so far (of a process since it began, or of the machine since boot). */
  cpuSeconds: number;
}

export interface ProcessSample extends CpuSample {
  rssBytes: number;
}

export interface ProcessProbe {
  source: 'proc' | 'metrics';
  /** undefined when the process or its metrics can no longer be read. */
  sample(): Promise<ProcessSample | undefined>;
}

let ticks: number | undefined;

/** /proc counts CPU time in clock ticks. */
function clockTicks(): number {
  if (ticks !== undefined) return ticks;
  try {
    ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    ticks = 100;
  }
  return ticks;
}

/** The machine's busy CPU time, all cores (/proc/stat: everything but idle and iowait); undefined off Linux. */
export function machineSample(): CpuSample | undefined {
  try {
    const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return { t: performance.now(), cpuSeconds: (v.reduce((a, b) => a + b, 0) - v[3]! - (v[4] ?? 0)) / clockTicks() };
  } catch {
    return undefined;
  }
}

/** utime + stime (fields 14 and 15 of /proc/PID/stat, all threads) and VmRSS of /proc/PID/status. */
export function procProbe(pid: number): ProcessProbe {
  return {
    source: 'proc',
    sample: async () => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        // The command name may hold spaces and parentheses: fields are counted after its closing one.
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        // A zombie (exited, not yet reaped) still has a stat but no VmRSS: it is gone all the same.
        const rss = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        if (rss === null) return undefined;
        return { t: performance.now(), cpuSeconds: (Number(fields[11]) + Number(fields[12])) / clockTicks(), rssBytes: Number(rss[1]) * 1024 };
      } catch {
        return undefined;
      }
    },
  };
}

/** The metrics endpoint beside a gateway's WebSocket URL (PROTOCOL.md: GET /metrics on the same host and port). */
function metricsUrl(wsUrl: string): string {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  url.pathname = '/metrics';
  url.search = '';
  return url.href;
}

/** Prometheus's standard process metrics under any prefix, e.g. voicegw_process_cpu_seconds_total. */
function metric(text: string, name: string): number | undefined {
  const line = new RegExp(`^(?:\\w+_)?${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text);
  return line === null ? undefined : Number(line[1]);
}

/** A probe of the gateway's /metrics, or undefined when it does not expose both process metrics. */
export async function metricsProbe(wsUrl: string, headers: Record<string, string>): Promise<ProcessProbe | undefined> {
  const url = metricsUrl(wsUrl);
  const sample = async (): Promise<ProcessSample | undefined> => {
    try {
      const res = await fetch(url, { headers, signal: AbortSignal.timeout(1000) });
      if (!res.ok) return undefined;
      const text = await res.text();
      const cpuSeconds = metric(text, 'process_cpu_seconds_total');
      const rssBytes = metric(text, 'process_resident_memory_bytes');
      return cpuSeconds === undefined || rssBytes === undefined ? undefined : { t: performance.now(), cpuSeconds, rssBytes };
    } catch {
      return undefined;
    }
  };
  return (await sample()) === undefined ? undefined : { source: 'metrics', sample };
}
