// The load tool's own xiaozhi simulator, as a child process forked by targets.ts with an IPC channel:
// upstream and gateway each get a process, as in production, and the tool's process keeps its CPU for
// the clients it measures. It time-stamps every audio frame it sends, so the tool can tell how long the
// gateway held each one. Stamps are CLOCK_MONOTONIC (process.hrtime), one clock for every process on
// the machine: the parent maps them onto its performance.now() with no synchronisation to estimate.
//
// Protocol on the IPC channel: child → {type:'ready', url}; parent → {type:'take', id};
// child → {type:'sends', id, sends: [tag, per reply the send times of its frames][]}, and forgets them.
import { startSimulator, type SimSession } from '../../sim/simulator.ts';

const pacing = process.env.LOADTEST_SIM_PACING === 'burst' ? 'burst' : 'xiaozhi';
const sim = await startSimulator({ host: '127.0.0.1', port: 0, pacing });
const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

/** Per upstream session, per reply (each begins with its `stt`), when each audio frame was sent. */
const sends = new Map<SimSession, number[][]>();

sim.on('session', (session) => {
  const replies: number[][] = [];
  sends.set(session, replies);
  // The simulator has no send hook, so this wraps its socket's send (as bench/gateway.bench.ts does).
  // If that private field changes, the tool reports no gateway latency, and nothing else changes.
  const ws = (session as unknown as { ws?: { send: (data: unknown, ...rest: unknown[]) => void } }).ws;
  if (typeof ws?.send !== 'function') return;
  const send = ws.send.bind(ws);
  ws.send = (data, ...rest) => {
    if (typeof data === 'string' && data.startsWith('{"type":"stt"')) replies.push([]);
    else if (Buffer.isBuffer(data)) replies.at(-1)?.push(monotonicMs());
    send(data, ...rest);
  };
});

/** The tag a load session sent in its `mcp` notification (session.ts), which the simulator records. */
function tagOf(session: SimSession): string | undefined {
  for (const m of session.received.json) {
    const payload = m.payload as { method?: unknown; params?: { tag?: unknown } } | undefined;
    if (m.type === 'mcp' && payload?.method === 'notifications/loadtest' && typeof payload.params?.tag === 'string') return payload.params.tag;
  }
  return undefined;
}

process.on('message', (m: { type?: string; id?: number }) => {
  if (m.type !== 'take') return;
  const out: [string, number[][]][] = [];
  for (const [session, replies] of sends) {
    const tag = tagOf(session);
    if (tag !== undefined) out.push([tag, replies]);
  }
  sends.clear();
  process.send!({ type: 'sends', id: m.id, sends: out });
});

// The parent going away, however it goes, ends the simulator.
process.on('disconnect', () => void sim.close().finally(() => process.exit(0)));
process.send!({ type: 'ready', url: sim.url });
