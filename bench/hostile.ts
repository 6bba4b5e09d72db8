// Hostile: five attacks on a gateway child process, each against a fresh one, and what they cost it.
// Not run in CI. Usage: node --import tsx bench/hostile.ts [gatewayRoot=this repo]
// gatewayRoot is the checkout whose src/main.ts runs (a worktree of an older commit, say), so the same
// attacks give before/after figures. All traffic stays on 127.0.0.1; each attack is bounded in time.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import WebSocket, { WebSocketServer } from 'ws';
import { loadSpeech } from '../src/sim/speech.ts';
import { RawClient } from '../test/support/raw-client.ts';

const ROOT = process.argv[2] ?? fileURLToPath(new URL('..', import.meta.url));
const ATTACK_MS = 30_000;
const SERVER_HELLO = { type: 'hello', version: 1, transport: 'websocket', session_id: 'hostile', audio_params: { format: 'opus', sample_rate: 24000, channels: 1, frame_duration: 60 } };

type Json = Record<string, any>;
/** Where the running attack is, for the message when it overruns. */
let step = '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** Polls `test` until it holds or `ms` pass; says which. */
async function until(test: () => boolean, ms: number, everyMs = 20): Promise<boolean> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) return false;
    await sleep(everyMs);
  }
  return true;
}

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });

function table(headers: string[], rows: (string | number)[][]): void {
  const line = (cells: (string | number)[]) => `| ${cells.map((c) => String(c).replace(/\|/g, '\\|').replace(/\n/g, ' ')).join(' | ')} |`;
  process.stdout.write([line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n') + '\n\n');
}

// ---- the gateway child ----

interface Gateway {
  pid: number;
  port: number;
  url: string;
  exited: () => boolean;
  /** The child's VmRSS, in bytes. */
  rss: () => number;
  metrics: () => Promise<string>;
}

/** Runs `attack` against a fresh gateway; kills the child however it ends, within ATTACK_MS. */
async function withGateway(env: Record<string, string>, attack: (gw: Gateway, deadline: number) => Promise<void>): Promise<void> {
  const port = await freePort();
  const { UPSTREAM_URL: _, ...withoutUpstream } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    // Without UPSTREAM_URL the gateway runs its embedded simulator.
    env: { ...withoutUpstream, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (d: Buffer) => (output = (output + d.toString('utf8')).slice(-2000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let dead = false;
  void exited.then(() => (dead = true));
  const gw: Gateway = {
    pid: child.pid!,
    port,
    url: `ws://127.0.0.1:${port}/v1/voice`,
    exited: () => dead,
    rss: () => {
      try {
        return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
      } catch {
        return 0; // gone
      }
    },
    metrics: async () => (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) })).text(),
  };
  const deadline = Date.now() + ATTACK_MS;
  let timer: NodeJS.Timeout | undefined;
  try {
    const healthy = () => fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false);
    for (let ok = false; !ok; ok = await healthy()) {
      if (dead || Date.now() > deadline) throw new Error(`the gateway did not start: ${output}`);
      await sleep(100);
    }
    const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`not over within ${ATTACK_MS} ms (at: ${step})`)), ATTACK_MS + 15_000)));
    await Promise.race([attack(gw, deadline), timeout]);
  } finally {
    clearTimeout(timer);
    if (!dead) child.kill('SIGKILL');
    await exited;
    if (output.trim() !== '' && process.env.HOSTILE_LOGS === '1') process.stderr.write(output + '\n');
  }
}

/** The child's RSS every 100 ms: the first sample, the peak, the latest. */
function sampleRss(gw: Gateway) {
  const s = { first: gw.rss(), peak: 0, last: 0 };
  const read = () => {
    if (gw.exited()) return;
    s.last = gw.rss();
    s.peak = Math.max(s.peak, s.last);
  };
  read();
  const timer = setInterval(read, 100);
  return Object.assign(s, { stop: () => (read(), clearInterval(timer)) });
}

/** Sum of a metric's samples (all label sets), or undefined when the gateway has no such metric. */
function metric(text: string, name: string): number | undefined {
  const lines = text.split('\n').filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return lines.length === 0 ? undefined : lines.reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** `reason=value, …` of a labelled counter. */
function byLabel(text: string, name: string): string {
  const parts = text.split('\n').flatMap((l) => (l.startsWith(`${name}{`) ? [`${/="([^"]*)"/.exec(l)?.[1]}=${l.slice(l.lastIndexOf(' ') + 1)}`] : []));
  return parts.join(', ') || 'none';
}

const na = (v: number | undefined) => (v === undefined ? 'n/a' : String(v));

// ---- clients and upstreams ----

/** A `ws` client that reads everything: JSON kept, binary frames counted. */
async function wsClient(url: string, hello: Json = {}) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  const c = { ws, json: [] as Json[], frames: 0, close: undefined as { code: number; reason: string } | undefined };
  ws.on('message', (data: Buffer, isBinary) => (isBinary ? c.frames++ : c.json.push(JSON.parse(data.toString('utf8')) as Json)));
  ws.on('close', (code, reason) => (c.close = { code, reason: reason.toString('utf8') }));
  ws.on('error', () => {});
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  ws.send(JSON.stringify({ type: 'hello', ...hello }));
  return c;
}

const isReady = (m: Json) => m.type === 'state' && m.state === 'ready';
const said = (json: Json[]) => json.filter((m) => m.type === 'error' || m.type === 'state').map((m) => (m.type === 'error' ? `error ${m.code}: ${m.message}` : `state ${m.state}`));

/** A hand-made xiaozhi server on loopback; `onMessage` decides everything. */
async function upstreamServer(onMessage: (ws: WebSocket, m: Json) => void) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await new Promise((resolve) => wss.once('listening', resolve));
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => !isBinary && onMessage(ws, JSON.parse(String(data)) as Json));
  });
  const port = (wss.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}/xiaozhi/v1/`,
    port,
    close: () => new Promise<void>((resolve) => (wss.clients.forEach((c) => c.terminate()), wss.close(() => resolve()))),
  };
}

const socketOf = (c: RawClient) => (c as unknown as { socket: Socket }).socket;

/** A raw client past hello and the gateway's state ready. */
async function rawClient(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  c.send({ type: 'hello' });
  if (!(await until(() => c.received.json.some(isReady), 5000))) throw new Error(`no state ready within 5 s: ${JSON.stringify(c.received.json)}`);
  return c;
}

/** Resumes a paused raw client and reads until the gateway closes, nothing more comes for 1 s, or 20 s pass. */
async function closeOf(c: RawClient): Promise<string> {
  c.resume();
  let bytes = -1;
  for (let quiet = 0, t = 0; quiet < 5 && t < 100 && !c.destroyed; t++) {
    quiet = c.received.bytes === bytes ? quiet + 1 : 0;
    bytes = c.received.bytes;
    await sleep(200);
  }
  const close = c.received.close;
  if (close !== undefined) return `${close.code} ${close.reason}`;
  return c.destroyed ? '1006 (TCP end, no close frame)' : 'still open';
}

// ---- the attacks ----

/** 1. Five clients that stop reading, each sending 1,000 pings with 60 KB ids. */
async function deafPingers(): Promise<void> {
  await withGateway({}, async (gw, deadline) => {
    step = 'clients connecting';
    const clients = await Promise.all(Array.from({ length: 5 }, () => rawClient(gw.port)));
    for (const c of clients) c.pause();
    const rss = sampleRss(gw);
    const ping = JSON.stringify({ type: 'ping', id: 'x'.repeat(60_000) });
    const sent = clients.map(() => 0);
    let heldPeak: number | undefined;
    for (let round = 0; round < 1000 && Date.now() < deadline; round += 50) {
      step = `pings ${round}`;
      clients.forEach((c, i) => {
        for (let k = 0; k < 50 && !c.destroyed; k++, sent[i]!++) c.send(ping);
      });
      // The gateway reads what we send; wait for it to have, so that this process holds little.
      await until(() => clients.every((c) => c.destroyed || socketOf(c).writableLength < 2 ** 20), deadline - Date.now());
      const held = metric(await gw.metrics(), 'voicegw_session_buffer_bytes');
      if (held !== undefined) heldPeak = Math.max(heldPeak ?? 0, held);
    }
    await until(() => clients.every((c) => c.destroyed || socketOf(c).writableLength === 0), Math.max(0, deadline - Date.now()));
    step = 'settling';
    await sleep(2000);
    rss.stop();
    const text = await gw.metrics();
    step = 'reading the closes';
    const closes = await Promise.all(clients.map(closeOf));
    const closed = closes.filter((c) => c !== 'still open');
    table(
      ['pings sent', 'RSS before', 'RSS peak', 'RSS final (2 s after)', 'closed', 'close codes', 'pongs / errors read at the end', 'voicegw_session_buffer_bytes peak / final'],
      [
        [
          sent.join(' / '),
          mib(rss.first),
          mib(rss.peak),
          mib(rss.last),
          `${closed.length} of 5`,
          [...new Set(closes)].map((c) => `${c} ×${closes.filter((x) => x === c).length}`).join('; '),
          clients.map((c) => `${c.received.json.filter((m) => m.type === 'pong').length}/${c.received.json.filter((m) => m.type === 'error').length}`).join(' '),
          `${na(heldPeak)} / ${na(metric(text, 'voicegw_session_buffer_bytes'))}`,
        ],
      ],
    );
    for (const c of clients) c.destroy();
  });
}

/** 2. An upstream that stops reading while the client sends up to 4,000 mcp messages of 60 KB. */
async function deafUpstream(): Promise<void> {
  let connections = 0;
  const upstream = await upstreamServer((ws, m) => {
    if (m.type !== 'hello') return;
    ws.send(JSON.stringify(SERVER_HELLO));
    if (++connections === 1) (ws as unknown as { _socket: Socket })._socket.pause();
  });
  try {
    await withGateway({ UPSTREAM_URL: upstream.url }, async (gw, deadline) => {
      const c = await wsClient(gw.url);
      await until(() => c.json.some(isReady), 5000);
      const rss = sampleRss(gw);
      const mcp = JSON.stringify({ type: 'mcp', payload: { blob: 'x'.repeat(60_000) } });
      let sent = 0;
      let synced = true;
      while (sent < 4000 && synced && Date.now() < deadline && !c.json.some((m) => m.type === 'error')) {
        for (let i = 0; i < 10; i++, sent++) c.ws.send(mcp);
        const id = `sync-${sent}`;
        c.ws.send(JSON.stringify({ type: 'ping', id }));
        synced = await until(() => c.json.some((m) => m.type === 'pong' && m.id === id), Math.min(10_000, deadline - Date.now()));
      }
      await sleep(1000); // the states that follow an error
      const peak = rss.peak;
      c.ws.close(1000);
      await until(() => c.close !== undefined, 5000);
      await sleep(2000);
      rss.stop();
      table(
        ['mcp sent', 'RSS before', 'RSS peak', 'RSS 2 s after the client left', 'the client saw', 'upstream connections'],
        [[`${sent}${synced ? '' : ' (a pong did not come within 10 s)'}`, mib(rss.first), mib(peak), mib(rss.last), said(c.json).join('; ') || 'nothing', connections]],
      );
    });
  } finally {
    await upstream.close();
  }
}

/** 3. A realtime-paced client, and an upstream that bursts 5,000 Opus packets after tts start. */
async function burstToPacedClient(): Promise<void> {
  const packet = loadSpeech().sentences[0]!.packets[0]!;
  const upstream = await upstreamServer((ws, m) => {
    if (m.type === 'hello') ws.send(JSON.stringify(SERVER_HELLO));
    if (m.type !== 'listen' || m.state !== 'detect') return;
    ws.send(JSON.stringify({ type: 'tts', state: 'start' }));
    for (let i = 0; i < 5000; i++) ws.send(packet);
  });
  try {
    await withGateway({ UPSTREAM_URL: upstream.url }, async (gw, deadline) => {
      const c = await wsClient(gw.url, { pacing: { mode: 'realtime', prebufferMs: 0 } });
      await until(() => c.json.some(isReady), 5000);
      const rss = sampleRss(gw);
      const started = Date.now();
      c.ws.send(JSON.stringify({ type: 'text', text: 'Say everything at once.' }));
      let text = '';
      for (; Date.now() < deadline; await sleep(100)) {
        text = await gw.metrics();
        if ((metric(text, 'voicegw_upstream_frames_total') ?? 0) >= 5000) break;
      }
      const arrivedMs = Date.now() - started;
      rss.stop();
      table(
        ['RSS before', 'RSS peak', 'RSS growth (peak)', 'voicegw_upstream_frames_total', 'all 5,000 in', 'voicegw_frames_dropped_total', 'frames pushed', 'session_buffer_bytes', 'client: frames / too_slow errors'],
        [
          [
            mib(rss.first),
            mib(rss.peak),
            mib(rss.peak - rss.first),
            na(metric(text, 'voicegw_upstream_frames_total')),
            `${arrivedMs} ms`,
            byLabel(text, 'voicegw_frames_dropped_total'),
            na(metric(text, 'voicegw_frames_pushed_total')),
            na(metric(text, 'voicegw_session_buffer_bytes')),
            `${c.frames} / ${c.json.filter((m) => m.type === 'error' && m.code === 'too_slow').length}`,
          ],
        ],
      );
      c.ws.terminate();
    });
  } finally {
    await upstream.close();
  }
}

/** 4. Oversized client frames, whole and fragmented. */
async function oversizedFrames(): Promise<void> {
  const cases = [
    ['262,145 bytes', 262_145, 1],
    ['1 MiB', 1_048_576, 1],
    ['300 kB as 3 fragments', 300_000, 3],
    ['3 MiB', 3 * 1_048_576, 1],
  ] as const;
  await withGateway({}, async (gw) => {
    const rows: string[][] = [];
    for (const [name, bytes, parts] of cases) {
      try {
        step = name;
        const c = await rawClient(gw.port);
        c.sendFragmented(Buffer.alloc(bytes, 7), parts);
        await until(() => c.destroyed, 10_000);
        const close = c.received.close;
        rows.push([name, close ? String(close.code) : c.destroyed ? '1006 (TCP end, no close frame)' : 'still open after 10 s', close?.reason || '-']);
        c.destroy();
      } catch (error) {
        rows.push([name, `failed: ${(error as Error).message}`, '-']);
      }
    }
    table(['frame', 'close code', 'reason'], rows);
    process.stdout.write(`gateway still up after the four: ${!gw.exited()}\n\n`);
  });
}

/** 5. What a client is told when the upstream fails, and whether it names the upstream's internals. */
async function upstreamWording(): Promise<void> {
  const internals = (port: number, words: string[]) => [/\b\d{1,3}(\.\d{1,3}){3}\b/, /localhost/i, /:\d{2,5}\b/, /wss?:\/\//, /\bE[A-Z]{4,}\b/, /unexpected server response/i, new RegExp(`\\b${port}\\b`), ...words.map((w) => new RegExp(w, 'i'))];
  const http401 = createHttpServer((_req, res) => res.writeHead(401, { 'Content-Type': 'text/plain' }).end('token sk-live-0123 is revoked'));
  await new Promise<void>((resolve) => http401.listen(0, '127.0.0.1', resolve));
  const notHello = await upstreamServer((ws, m) => m.type === 'hello' && ws.send(JSON.stringify({ type: 'welcome', secret: 'internal-build-7f3a on 10.1.2.3' })));
  let open: WebSocket | undefined;
  const closing = await upstreamServer((ws, m) => {
    if (m.type !== 'hello') return;
    open = ws;
    ws.send(JSON.stringify(SERVER_HELLO));
  });
  const refused = await freePort();
  const cases: [string, string, number, string[], Record<string, string>][] = [
    ['refuses the connection (closed port)', `ws://127.0.0.1:${refused}/xiaozhi/v1/`, refused, [], {}],
    ['answers the upgrade with HTTP 401', `ws://127.0.0.1:${(http401.address() as { port: number }).port}/xiaozhi/v1/`, (http401.address() as { port: number }).port, ['401', 'sk-live-0123', 'revoked'], {}],
    ['answers hello with a non-hello JSON', notHello.url, notHello.port, ['welcome', 'internal-build-7f3a'], {}],
    ['closes an open session: 4000 "shard db-7 at 10.9.8.7 overloaded" (reconnect attempts 0)', closing.url, closing.port, ['db-7', 'shard', 'overloaded'], { UPSTREAM_RECONNECT_ATTEMPTS: '0' }],
  ];
  const rows: string[][] = [];
  try {
    for (const [name, url, port, words, env] of cases) {
      await withGateway({ UPSTREAM_URL: url, ...env }, async (gw, deadline) => {
        const c = await wsClient(gw.url);
        if (name.startsWith('closes')) {
          await until(() => c.json.some(isReady), 5000);
          open?.close(4000, 'shard db-7 at 10.9.8.7 overloaded');
        }
        await until(() => c.close !== undefined, deadline - Date.now());
        const told = [...c.json.filter((m) => m.type === 'error').map((m) => `error ${m.code}: ${m.message}`), c.close ? `close ${c.close.code} "${c.close.reason}"` : 'no close'];
        const leaks = internals(port, words).filter((re) => told.some((t) => re.test(t.replace(/^error \w+: /, ''))));
        rows.push([name, told.join('; '), leaks.length === 0 ? 'no' : `yes: ${leaks.map(String).join(' ')}`]);
        c.ws.terminate();
      }).catch((error: unknown) => rows.push([name, `failed: ${(error as Error).message}`, '-']));
    }
  } finally {
    http401.close();
    await Promise.all([notHello.close(), closing.close()]);
  }
  table(['upstream', 'the client was told', 'address, port or upstream words?'], rows);
}

async function main(): Promise<void> {
  const commit = await new Promise<string>((resolve) => {
    const git = spawn('git', ['-C', ROOT, 'log', '-1', '--format=%h %s'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    git.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    git.on('close', () => resolve(out.trim().slice(0, 100)));
  });
  process.stdout.write(`hostile: gateway at ${ROOT} (${commit}), ${new Date().toISOString()}\n\n`);
  const attacks: [string, () => Promise<void>][] = [
    ['1. Five clients that stop reading, 1,000 pings with 60 KB ids each', deafPingers],
    ['2. An upstream that stops reading, up to 4,000 mcp messages of 60 KB', deafUpstream],
    ['3. 5,000 Opus packets at once to a realtime-paced client (prebufferMs 0)', burstToPacedClient],
    ['4. Oversized client frames', oversizedFrames],
    ['5. Client-facing texts of upstream failures', upstreamWording],
  ];
  const only = process.env.HOSTILE_ONLY?.split(',').map(Number);
  for (const [i, [title, attack]] of attacks.entries()) {
    if (only !== undefined && !only.includes(i + 1)) continue;
    process.stdout.write(`### ${title}\n\n`);
    await attack().catch((error: unknown) => process.stdout.write(`attack failed: ${error instanceof Error ? error.message : String(error)}\n\n`));
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`hostile: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
