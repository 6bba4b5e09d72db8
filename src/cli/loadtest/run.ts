// runLoad: N sessions against one gateway, as PROTOCOL.md describes it and nothing more, and the report.
//
// The API that bench/capacity.ts builds on (/tmp/loadtest-contract.md), with these refinements:
// - LoadOptions gains `seed` (the run plan is reproducible), `upstream` (what the report says the
//   gateway's upstream is) and `upstreamSendTimes: () => Promise<SendTimes>`: pass a SimulatorTarget's
//   `takeSendTimes` (targets.ts) when the gateway's upstream is the tool's own simulator. Sessions then
//   tag themselves upstream with an `mcp` notification, and the report gains gateway-added latency and
//   exact lost-frame counts.
// - LoadReport (report.ts) percentiles are `number | null` (null: nothing was measured) with a `count`;
//   `sessions` adds `slow` and `failures` (why, counted); `frames` adds `accountedBy`; `underruns` per
//   buffer adds `stalledMs`; `gateway` adds `source` and `startRssBytes`; added are `tool` (the load
//   tool's own CPU and event-loop delay), `machine` (its cores, how busy) and `run` (what was run).
//   Timeline entries carry `underruns` per buffer size (a record, not one number), `repliesEnded`, and
//   the CPU of the gateway, the tool and the machine, and the gateway's RSS, per second.
// - LoadOptions.gatewayPid: CPU and RSS from /proc; without it, from the gateway's /metrics if it has them.
// - warmUp(options): a short run whose report is dropped, for a gateway that has just started; the
//   CLI warms up every gateway it starts before it measures.
// - capacity.ts: findCapacity takes an optional third argument, called after each probe, and each of
//   its `reports` also holds that probe's whole LoadReport as `report`.
// - A session the gateway turns away before it opens (`error overloaded`, close 1013) is refused, not
//   failed: `sessions.refused` and `refusalMs` (upgrade request → close). Everything else in the report,
//   and so meetsSlo, is about the sessions admitted.
import { randomUUID } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { readUtterance, UPLINK_FRAME_MS } from '../utterance.ts';
import { machineSample, metricsProbe, procProbe, type CpuSample, type ProcessProbe, type ProcessSample } from './process-stats.ts';
import { plan } from './plan.ts';
import { buildReport, type LoadReport, type RunInfo, type SendTimes } from './report.ts';
import { LoadSession, type Hello, type Live } from './session.ts';

export type { LoadReport, SendTimes } from './report.ts';

/** A run as RunInfo states it, with how to make each turn and how to watch the gateway. */
export interface LoadOptions extends Omit<RunInfo, 'input' | 'upstream' | 'startedAt'> {
  /** Each turn by typed text ... */
  text: string | undefined;
  /** ... or by streaming this WAV as microphone audio, in real time. */
  wav: string | undefined;
  uplinkCodec: 'opus' | 'pcm16';
  token: string | undefined;
  /** Hard bound on the whole run: sessions not done by then fail. */
  timeoutS: number;
  /** What the gateway's upstream is, for the report (e.g. "the tool's simulator, xiaozhi pacing"). */
  upstream?: string;
  upstreamSendTimes?: () => Promise<SendTimes>;
  /** For CPU and RSS from /proc; without it, the gateway's /metrics is tried. */
  gatewayPid?: number;
  onProgress?: (p: Progress) => void;
}

export interface Progress {
  elapsedS: number;
  sessionsStarted: number;
  sessionsOpen: number;
  repliesDone: number;
  repliesTotal: number;
  failed: number;
  refused: number;
  /** Per buffer size (ms), underruns so far. */
  underruns: Record<string, number>;
}

/** The gateway could not be reached at all: the run did not happen. */
export class GatewayUnreachable extends Error {}

const HELLO_TIMEOUT_MS = 15_000;
/** A reply that has not ended this long after its input is given up on. */
const TURN_TIMEOUT_MS = 60_000;
const PREFLIGHT_MS = 5000;
const LOOP_SAMPLE_MS = 10;
const WARMUP_SESSIONS = 20;

export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const headers: Record<string, string> = o.token === undefined ? {} : { Authorization: `Bearer ${o.token}` };
  await preflight(o.url, headers);
  const utterance = o.wav === undefined ? undefined : readUtterance(o.wav, o.uplinkCodec);
  const hello: Hello = {
    type: 'hello',
    version: 1,
    downlink: { codec: o.codec, sampleRate: o.rate, transport: o.transport },
    ...(utterance && { uplink: { codec: utterance.codec, sampleRate: utterance.sampleRate, frameMs: UPLINK_FRAME_MS } }),
    pacing: { mode: o.pacing, prebufferMs: o.prebufferMs },
  };
  const runId = randomUUID().slice(0, 8);
  const p = plan(o);
  const live: Live = { open: 0, repliesDone: 0, failed: 0, refused: 0, underruns: o.buffersMs.map(() => 0) };
  const sessions = p.slow.map(
    (slow, i) =>
      new LoadSession(
        {
          url: o.url,
          headers,
          hello,
          input: utterance === undefined ? { text: o.text ?? '' } : { utterance },
          slow,
          bargeInAfterMs: p.bargeInAfterMs[i]!,
          tag: o.upstreamSendTimes === undefined ? undefined : `${runId}-${i}`,
          buffersMs: o.buffersMs,
          helloTimeoutMs: HELLO_TIMEOUT_MS,
          turnTimeoutMs: TURN_TIMEOUT_MS + (utterance?.frames.length ?? 0) * UPLINK_FRAME_MS,
        },
        live,
      ),
  );

  const probe: ProcessProbe | undefined = o.gatewayPid !== undefined ? procProbe(o.gatewayPid) : await metricsProbe(o.url, headers);
  const gatewaySamples: ProcessSample[] = [];
  const toolSamples: CpuSample[] = [];
  const machineSamples: CpuSample[] = [];
  const sample = async () => {
    const cpu = process.cpuUsage();
    toolSamples.push({ t: performance.now(), cpuSeconds: (cpu.user + cpu.system) / 1e6 });
    const machine = machineSample();
    if (machine !== undefined) machineSamples.push(machine);
    const s = await probe?.sample();
    if (s !== undefined) gatewaySamples.push(s);
  };

  // The tool's own event loop: when it stalls, frames look late that were not, and this says so.
  const loop = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
  loop.enable();
  const startedAt = performance.now();
  let started = 0;
  const progress = () =>
    o.onProgress?.({
      elapsedS: (performance.now() - startedAt) / 1000,
      sessionsStarted: started,
      sessionsOpen: live.open,
      repliesDone: live.repliesDone,
      repliesTotal: p.slow.filter((slow) => !slow).length * o.replies,
      failed: live.failed,
      refused: live.refused,
      underruns: Object.fromEntries(o.buffersMs.map((ms, i) => [String(ms), live.underruns[i]!])),
    });
  await sample();
  const ramp = sessions.map((s, i) =>
    setTimeout(() => {
      started++;
      s.start();
    }, p.startAtMs[i]),
  );
  const ticker = setInterval(() => {
    void sample();
    progress();
  }, 1000);
  progress();

  const normal = sessions.filter((s) => !s.record.slow);
  const timeout = new AbortController();
  const timedOut = await Promise.race([
    Promise.all(normal.map((s) => s.done)).then(() => false),
    sleep(o.timeoutS * 1000, true, { signal: timeout.signal }),
  ]);
  timeout.abort();
  ramp.forEach(clearTimeout);
  // Slow sessions last as long as the others, then end; on a timeout every session still running fails.
  await Promise.all(sessions.map((s) => s.stop(timedOut ? `the run timed out after ${o.timeoutS} s` : 'the run ended')));
  clearInterval(ticker);
  loop.disable();
  const endedAt = performance.now();
  await sample();
  progress();

  return buildReport({
    run: {
      url: o.url,
      sessions: o.sessions,
      replies: o.replies,
      rampS: o.rampS,
      input: o.wav === undefined ? `text: ${o.text ?? ''}` : `wav: ${o.wav} (${o.uplinkCodec} uplink)`,
      codec: o.codec,
      rate: o.rate,
      transport: o.transport,
      pacing: o.pacing,
      prebufferMs: o.prebufferMs,
      buffersMs: o.buffersMs,
      bargeIn: o.bargeIn,
      slow: o.slow,
      seed: o.seed,
      upstream: o.upstream,
      startedAt: new Date(performance.timeOrigin + startedAt).toISOString(),
    },
    startedAt,
    endedAt,
    sessions: sessions.map((s) => s.record),
    sendTimes: await o.upstreamSendTimes?.(),
    // /metrics answers may come back out of order.
    gateway: probe === undefined ? undefined : { source: probe.source, samples: gatewaySamples.sort((a, b) => a.t - b.t) },
    // The histogram holds whole sampling periods, each at least LOOP_SAMPLE_MS: the delay is what exceeds it.
    machine: { cores: availableParallelism(), samples: machineSamples },
    tool: { samples: toolSamples, loopDelayP99Ms: Math.max(0, loop.percentile(99) / 1e6 - LOOP_SAMPLE_MS), loopDelayMaxMs: Math.max(0, loop.max / 1e6 - LOOP_SAMPLE_MS) },
  });
}

/**
 * A freshly started gateway runs its first sessions through V8's interpreter and measures several times
 * slower than a warm one, where a production gateway has been up for hours. This serves it
 * WARMUP_SESSIONS short replies, each interrupted within 3 s, and forgets them.
 */
export async function warmUp(o: LoadOptions): Promise<void> {
  await runLoad({ ...o, sessions: WARMUP_SESSIONS, replies: 1, rampS: 0.5, bargeIn: 1, slow: 0, upstreamSendTimes: undefined, onProgress: undefined });
}

/** One WebSocket opened and closed, so that a gateway that is not there is one clear error, not N failures. */
function preflight(url: string, headers: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false, handshakeTimeout: PREFLIGHT_MS });
    ws.on('open', () => {
      ws.close(1000);
      resolve();
    });
    ws.on('unexpected-response', (req, res) => {
      reject(new GatewayUnreachable(`the gateway at ${url} refused the WebSocket upgrade: HTTP ${res.statusCode}`));
      req.destroy();
    });
    ws.on('error', (error) => reject(new GatewayUnreachable(`cannot reach the gateway at ${url}: ${error.message}`)));
  });
}
