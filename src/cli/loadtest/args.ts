// Command-line arguments: node:util parseArgs, then every value checked, so that a bad one is a usage
// message naming it (exit 2) rather than a confusing run.
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { OPUS_RATES as RATES } from '../../protocol/audio.ts';
import type { LoadOptions } from './run.ts';

export const USAGE = `usage: npm run loadtest -- [options]

Drives many concurrent voice sessions against a gateway that speaks the voicegw client protocol and
reports what their listeners would hear. Without --url it starts its own xiaozhi simulator and a voicegw
gateway (child processes on 127.0.0.1) and loads those. See docs/loadtest.md.

  --url URL              the gateway, ws://HOST:PORT/v1/voice (default: start one here)
  --token TOKEN          client token, when the gateway requires one
  --sessions N           concurrent sessions (default 50)
  --replies K            turns per session (default 2)
  --ramp S               sessions start spread over S seconds (default 5)
  --text TEXT            each turn is this typed text (the default turn)
  --wav FILE             each turn streams this mono 16-bit WAV as microphone audio, in real time
  --uplink CODEC         how --wav is sent: pcm16 or opus (default pcm16)
  --codec CODEC          downlink codec: pcm16 or opus (default pcm16)
  --rate HZ              downlink rate: 8000, 12000, 16000, 24000, 48000 (default 24000)
  --transport T          downlink transport: binary or json (default binary)
  --pacing MODE          none or realtime (default none)
  --prebuffer MS         realtime pacing's prebuffer, 0 to 5000 (default 0)
  --buffer MS[,MS...]    listener jitter buffers to model (default 120)
  --barge-in SHARE       share of replies interrupted after a random part, 0 to 1 (default 0)
  --slow SHARE           share of sessions whose socket stops reading, 0 to 1 (default 0)
  --json FILE            JSON report (default loadtest-report.json)
  --html FILE            HTML report (default loadtest-report.html)
  --quiet                no progress bar (it is also off when stderr is not a terminal)
  --upstream-pacing P    the tool's simulator speaks like xiaozhi (default) or in bursts; not with --url
  --gateway-pid PID      with --url: the gateway's process here, for its CPU and memory from /proc
  --timeout S            hard bound on the run (default: ramp + 60 s per reply + 30 s)
  --seed N               the run plan (slow sessions, barge-ins) is reproducible from it (default 1)
  --find-capacity        search for the most concurrent sessions that meet the SLO, from --sessions up
  --max-sessions N       --find-capacity searches no further than this (default 1000)
  --help                 this text

Exit status: 0 the run went through with no failed session and no lost frame; 1 the run could not be
made (gateway unreachable, a child failed to start); 2 bad arguments; 3 sessions failed or frames were lost.
Sessions the gateway refuses before they open (error overloaded, close 1013) are counted as refused, not
failed, with the time each took to be told; every other figure is about the sessions admitted.`;

export class UsageError extends Error {}

export interface Cli {
  help: boolean;
  /** Everything runLoad takes but the url, which is known once the targets are up. */
  load: Omit<LoadOptions, 'url'>;
  url: string | undefined;
  upstreamPacing: 'xiaozhi' | 'burst';
  json: string;
  html: string;
  quiet: boolean;
  findCapacity: boolean;
  maxSessions: number;
}

function int(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, not "${value}"`);
  return n;
}

function number(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number from ${min} to ${max}, not "${value}"`);
  return n;
}

function oneOf<T extends string>(name: string, value: string, values: readonly T[]): T {
  if (!(values as readonly string[]).includes(value)) throw new UsageError(`--${name} must be one of ${values.join(', ')}, not "${value}"`);
  return value as T;
}

const OPTIONS = {
  url: { type: 'string' },
  token: { type: 'string' },
  sessions: { type: 'string', default: '50' },
  replies: { type: 'string', default: '2' },
  ramp: { type: 'string', default: '5' },
  text: { type: 'string' },
  wav: { type: 'string' },
  uplink: { type: 'string', default: 'pcm16' },
  codec: { type: 'string', default: 'pcm16' },
  rate: { type: 'string', default: '24000' },
  transport: { type: 'string', default: 'binary' },
  pacing: { type: 'string', default: 'none' },
  prebuffer: { type: 'string', default: '0' },
  buffer: { type: 'string', default: '120' },
  'barge-in': { type: 'string', default: '0' },
  slow: { type: 'string', default: '0' },
  json: { type: 'string', default: 'loadtest-report.json' },
  html: { type: 'string', default: 'loadtest-report.html' },
  quiet: { type: 'boolean', default: false },
  'upstream-pacing': { type: 'string' },
  'gateway-pid': { type: 'string' },
  timeout: { type: 'string' },
  seed: { type: 'string', default: '1' },
  'find-capacity': { type: 'boolean', default: false },
  'max-sessions': { type: 'string', default: '1000' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: false, options: OPTIONS }).values;
  } catch (error) {
    // parseArgs names the option in its message ("Unknown option '--sesions'").
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

export function parseCli(argv: string[]): Cli {
  const v = parse(argv);
  if (v.text !== undefined && v.wav !== undefined) throw new UsageError('give --text or --wav, not both');
  if (v.wav !== undefined && !existsSync(v.wav)) throw new UsageError(`--wav ${v.wav}: no such file`);
  if (v.text !== undefined && (v.text.length < 1 || v.text.length > 4096)) throw new UsageError('--text must be 1 to 4096 characters');
  if (v.url !== undefined && !/^wss?:\/\/[^/]/.test(v.url)) throw new UsageError(`--url must be a ws:// or wss:// URL, not "${v.url}"`);
  if (v.url !== undefined && v['upstream-pacing'] !== undefined) throw new UsageError('--upstream-pacing shapes the tool\'s own simulator: it cannot apply with --url');
  if (v.url === undefined && v['gateway-pid'] !== undefined) throw new UsageError('--gateway-pid is for --url: without it the tool knows its own gateway\'s process');
  const buffersMs = [...new Set(v.buffer.split(',').map((b) => int('buffer', b, 0, 10_000)))].sort((a, b) => a - b);
  const findCapacity = v['find-capacity'];
  // The capacity SLO is judged at a 120 ms buffer.
  if (findCapacity && !buffersMs.includes(120)) buffersMs.push(120);
  const sessions = int('sessions', v.sessions, 1, 100_000);
  const replies = int('replies', v.replies, 1, 1000);
  const rampS = number('ramp', v.ramp, 0, 3600);
  const maxSessions = int('max-sessions', v['max-sessions'], 1, 100_000);
  if (findCapacity && maxSessions < sessions) throw new UsageError('--max-sessions must be at least --sessions, where the search starts');
  return {
    help: v.help,
    url: v.url,
    upstreamPacing: oneOf('upstream-pacing', v['upstream-pacing'] ?? 'xiaozhi', ['xiaozhi', 'burst'] as const),
    json: v.json,
    html: v.html,
    quiet: v.quiet,
    findCapacity,
    maxSessions,
    load: {
      sessions,
      replies,
      rampS,
      text: v.wav === undefined ? (v.text ?? 'Tell me about the weather today.') : undefined,
      wav: v.wav,
      uplinkCodec: oneOf('uplink', v.uplink, ['pcm16', 'opus'] as const),
      codec: oneOf('codec', v.codec, ['pcm16', 'opus'] as const),
      rate: Number(oneOf('rate', v.rate, RATES.map(String))),
      transport: oneOf('transport', v.transport, ['binary', 'json'] as const),
      pacing: oneOf('pacing', v.pacing, ['none', 'realtime'] as const),
      prebufferMs: int('prebuffer', v.prebuffer, 0, 5000),
      buffersMs,
      bargeIn: number('barge-in', v['barge-in'], 0, 1),
      // At least one session must read, or nothing is measured.
      slow: number('slow', v.slow, 0, 0.99),
      token: v.token,
      timeoutS: v.timeout === undefined ? Math.ceil(rampS + 60 * replies + 30) : int('timeout', v.timeout, 1, 86_400),
      seed: int('seed', v.seed, 0, 2 ** 32 - 1),
      ...(v['gateway-pid'] !== undefined && { gatewayPid: int('gateway-pid', v['gateway-pid'], 1, 2 ** 22) }),
    },
  };
}
