// A real Prometheus (Debian's, started here on a loopback port) scrapes real gateways under a short load
// with the committed scrape config and rule files; then every panel query of the committed dashboard must
// return data and every alert rule must evaluate healthy.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { SessionOptions } from '../../src/sim/simulator.ts';
import { loadSpeech } from '../../src/sim/speech.ts';
import { fakeUpstream, SERVER_HELLO, sendJson, sendSpeechReply } from '../support/fake-upstream.ts';
import { closedPort, isError, isState, metricValue, poll, Resources, type TestClient, type TestGateway } from '../support/gateway.ts';
import { RawClient } from '../support/raw-client.ts';
import { committedDashboard, committedPrometheusConfig, panelQueries, ruleFiles, rulesIn, toPromQL, variableQueries } from './queries.ts';

const PROMETHEUS = '/usr/bin/prometheus';
const SETUP_TIMEOUT_MS = 45_000;

const res = new Resources();
const raws: RawClient[] = [];
const tmp = mkdtempSync(join(tmpdir(), 'voicegw-prometheus-'));
let prometheus: ChildProcess | undefined;
let prometheusLog = '';
let api = '';
let gateways: TestGateway[] = [];
/** The scrape jobs of the committed config. */
let jobs: string[] = [];

interface ApiAnswer<T> {
  status: 'success' | 'error';
  data: T;
  error?: string;
}
type Series = { metric: Record<string, string>; value?: [number, string]; values?: [number, string][] }[];

async function get<T>(path: string, params: Record<string, string> = {}): Promise<ApiAnswer<T>> {
  const response = await fetch(`${api}${path}?${new URLSearchParams(params)}`);
  return (await response.json()) as ApiAnswer<T>;
}

const query = (promql: string) => get<{ result: Series }>('/api/v1/query', { query: promql });
/** As a Grafana time series panel asks: a range, here the last minute at a 1 s step. */
function queryRange(promql: string) {
  const end = Date.now() / 1000;
  return get<{ result: Series }>('/api/v1/query_range', { query: promql, start: String(end - 60), end: String(end), step: '1' });
}

/** Asks Prometheus until `test` holds, at most `timeoutMs`; fails naming what it waited for. */
async function until<T>(what: string, read: () => Promise<T>, test: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const value = await poll(read, test, timeoutMs, 200);
  if (!test(value)) throw new Error(`gave up waiting for ${what}: last answer ${JSON.stringify(value).slice(0, 500)}\nPrometheus log:\n${prometheusLog.slice(-2000)}`);
  return value;
}

/** The committed config, pointed at the test gateways, with 1 s scrapes and rule evaluations, and absolute rule paths. */
function testConfig(targets: string[]): { yaml: string; jobs: string[] } {
  const config = committedPrometheusConfig();
  const scrapes = config.scrape_configs ?? [];
  if (scrapes.length === 0) throw new Error('dashboards/prometheus/prometheus.yml has no scrape_configs');
  const fast = { scrape_interval: '1s', scrape_timeout: '1s' };
  const yaml = stringify({
    global: { ...config.global, ...fast, evaluation_interval: '1s' },
    rule_files: ruleFiles(),
    scrape_configs: scrapes.map((job) => ({
      // Service discovery and its relabelling find production targets; here the targets are known.
      ...Object.fromEntries(Object.entries(job).filter(([key]) => !key.endsWith('_sd_configs') && key !== 'relabel_configs')),
      ...fast,
      static_configs: [{ targets }],
    })),
  });
  return { yaml, jobs: scrapes.map((job) => job.job_name) };
}

async function startPrometheus(targets: string[]): Promise<void> {
  const configFile = join(tmp, 'prometheus.yml');
  const config = testConfig(targets);
  jobs = config.jobs;
  writeFileSync(configFile, config.yaml);
  const port = await closedPort();
  api = `http://127.0.0.1:${port}`;
  const child = spawn(
    PROMETHEUS,
    [`--config.file=${configFile}`, `--storage.tsdb.path=${join(tmp, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  prometheus = child;
  child.stdout.on('data', (chunk: Buffer) => (prometheusLog += chunk));
  child.stderr.on('data', (chunk: Buffer) => (prometheusLog += chunk));
  const exited = new Promise<never>((_, reject) => {
    child.once('exit', (code) => reject(new Error(`prometheus exited (${code}) before it was ready:\n${prometheusLog}`)));
  });
  const ready = until('prometheus to be ready', () => fetch(`${api}/-/ready`).then((r) => r.status, () => 0), (status) => status === 200);
  await Promise.race([ready, exited]);
}

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
/** 48 kHz JSON frames (about 7.7 kB each) fill a paused client's socket buffers within a few replies. */
const HEAVY_HELLO = { type: 'hello', downlink: { sampleRate: 48000, transport: 'json' } };

const scrape = (gw: TestGateway) => gw.scrape();

/** A step of the load, failing with its name rather than as a hook timeout. */
async function within<T>(what: string, promise: Promise<T>, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`load: ${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * Gateway A, on the simulator: replies, playout reports, a bad message, an abort, an upstream lost and
 * recovered, a corrupt packet, a malformed upstream message, and a client that stops reading until it
 * is closed with 4003 (SLOW_CLIENT_POLICY=close).
 */
async function simulatorGateway() {
  // How each session's upstream behaves, by the order the sessions first connect; reconnects are healthy.
  // The abort's reply comes paced like xiaozhi-esp32-server, so that it is still in flight when aborted.
  const behaviours: SessionOptions[] = [
    {},
    { pacing: 'xiaozhi' },
    { fault: { kind: 'close', afterFrames: 10 } },
    { fault: { kind: 'garbage-binary', afterFrames: 10 } },
    { fault: { kind: 'malformed-json', afterFrames: 10 } },
    {},
  ];
  const sim = await res.simulator({
    sessionOptions: (s) => (sim.connectionsOf(s.headers['device-id'] ?? '') > 0 ? {} : (behaviours.shift() ?? {})),
  });
  const gw = await res.gateway({
    UPSTREAM_URL: sim.url,
    SOCKET_HIGH_WATER_BYTES: '16384',
    QUEUE_LIMIT_MS: '600',
    SLOW_CLIENT_POLICY: 'close',
    UPSTREAM_RECONNECT_BASE_MS: '20',
  });
  return { gw, load: () => loadSimulatorGateway(gw) };
}

async function loadSimulatorGateway(gw: TestGateway): Promise<void> {
  // Sessions say hello one by one, so that each meets its upstream behaviour.
  const talker = await res.client(gw.url);
  await talker.hello();
  const aborter = await res.client(gw.url);
  await aborter.hello({ pacing: { mode: 'realtime', prebufferMs: 240 } });
  const lost = await res.client(gw.url);
  await lost.hello();
  const garbled = await res.client(gw.url);
  await garbled.hello();
  const malformed = await res.client(gw.url);
  await malformed.hello();
  const slow = await RawClient.connect(gw.port);
  raws.push(slow);
  slow.send(HEAVY_HELLO);
  await slow.until((r) => r.json.some(isState('ready')));

  const talk = async () => {
    for (let i = 1; i <= 2; i++) {
      await talker.textReply(`Reply ${i}`);
      talker.send({ type: 'playout', bufferedMs: 180 * i, underruns: i, playedMs: 4000 * i });
    }
    const after = talker.received.json.length;
    talker.send('{not json');
    await talker.next(isError('bad_message'), after);
  };
  const abort = async () => {
    aborter.send({ type: 'text', text: 'Tell me a story' });
    await aborter.until((r) => r.binary.length > 0);
    const after = aborter.received.json.length;
    aborter.send({ type: 'abort' });
    await aborter.next(isState('ready'), after);
  };
  const loseUpstream = async () => {
    lost.send({ type: 'text', text: 'Talk to me' });
    const error = await lost.next(isError('upstream_lost'));
    await lost.next(isState('ready'), lost.received.json.indexOf(error));
    await lost.textReply('Are you back?');
  };
  const stopReading = async () => {
    slow.pause();
    const closed = (t: string) => metricValue(t, 'voicegw_sessions_total', 'outcome="too_slow"') === 1;
    for (let i = 1; ; i++) {
      const before = metricValue(await scrape(gw), 'voicegw_upstream_frames_total');
      slow.send({ type: 'text', text: `slow ${i}` });
      const text = await poll(() => scrape(gw), (t) => closed(t) || metricValue(t, 'voicegw_upstream_frames_total') >= before + REPLY_FRAMES, 10_000);
      if (closed(text)) break;
      if (i >= 12) throw new Error('the paused client was not closed as too slow within 12 replies');
    }
    slow.resume();
    await slow.ended;
  };
  await Promise.all([
    within('two replies, playout reports and a bad message', talk()),
    within('an abort mid-reply', abort()),
    within('an upstream lost mid-reply and recovered', loseUpstream()),
    within('a reply with a corrupt packet', garbled.textReply('Garbage ahead')),
    within('a reply with a malformed upstream message', malformed.textReply('Nonsense ahead')),
    within('a client that stops reading, closed with 4003', stopReading()),
  ]);
  await endSessions(gw, talker, aborter, lost, garbled, malformed);
}

/** Gateway B, on a hand-made upstream that follows each reply with an `iot` message the gateway does not act on. */
async function fakeUpstreamGateway() {
  const url = await fakeUpstream(res, (ws, m) => {
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'listen' && m.state === 'detect') sendSpeechReply(ws, speech, m.text, { after: { type: 'iot', commands: [] } });
  });
  const gw = await res.gateway({ UPSTREAM_URL: url });
  const load = async () => {
    const client = await res.client(gw.url);
    await client.hello();
    await within('a reply followed by an iot message', client.textReply('Switch on the light'));
    await poll(() => scrape(gw), (t) => metricValue(t, 'voicegw_upstream_unknown_messages_total', 'type="iot"') === 1, 5000);
    await endSessions(gw, client);
  };
  return { gw, load };
}

/** Closes the clients and waits until the gateway has counted every session's end. */
async function endSessions(gw: TestGateway, ...clients: TestClient[]): Promise<void> {
  for (const c of clients) c.close();
  await Promise.all(clients.map((c) => c.closed));
  const text = await poll(() => scrape(gw), (t) => metricValue(t, 'voicegw_sessions_active') === 0, 5000);
  if (metricValue(text, 'voicegw_sessions_active') !== 0) throw new Error('sessions still active after their clients closed');
}

const instanceOf = (gw: TestGateway) => `127.0.0.1:${gw.port}`;
const timings: Record<string, number> = {};

beforeAll(async () => {
  if (!existsSync(PROMETHEUS)) {
    throw new Error(`${PROMETHEUS} not found: these tests need Debian's prometheus package (apt-get install --no-install-recommends prometheus; .ci/run installs it)`);
  }
  const t0 = performance.now();
  const a = await simulatorGateway();
  const b = await fakeUpstreamGateway();
  gateways = [a.gw, b.gw];
  await startPrometheus(gateways.map(instanceOf));
  timings.prometheusReady = performance.now() - t0;
  // Scraped before the load, so that the growth of counters that exist from the start lands between
  // samples. Prometheus applies new targets on a 5 s tick: this is most of the test's time.
  const up = `up{job=~"${jobs.join('|')}"}`;
  await until(`every gateway to be scraped (${up})`, () => query(`${up} == 1`), (answer) => answer.data?.result.length === gateways.length, 15_000);
  timings.firstScrape = performance.now() - t0;
  await Promise.all([a.load(), b.load()]);
  const loadEnd = Date.now() / 1000;
  timings.load = performance.now() - t0;
  // Two scrapes wholly after the load: every series it made has two samples to take a rate over.
  await until(
    'two scrapes after the load',
    () => query(`min(timestamp(${up}))`),
    (answer) => Number(answer.data?.result[0]?.value?.[1] ?? 0) > loadEnd + 1,
  );
  timings.samples = performance.now() - t0;
}, SETUP_TIMEOUT_MS);

afterAll(async () => {
  if (timings.samples !== undefined) console.info(`prometheus test setup, ms from its start: ${Object.entries(timings).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')}`);
  if (prometheus !== undefined && prometheus.exitCode === null) {
    const exited = new Promise((resolve) => prometheus!.once('exit', resolve));
    prometheus.kill('SIGTERM');
    const force = setTimeout(() => prometheus?.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(force);
  }
  for (const raw of raws.splice(0)) raw.destroy();
  await res.dispose();
  rmSync(tmp, { recursive: true, force: true });
});

const dashboard = committedDashboard();
const rules = rulesIn();

describe('the dashboard and the alerts on a real Prometheus', () => {
  it('scrapes every test gateway as a healthy target of the committed scrape job', async () => {
    const { data } = await get<{ activeTargets: { health: string; labels: Record<string, string>; lastError: string }[] }>('/api/v1/targets');

    expect(data.activeTargets.map((t) => ({ job: t.labels.job, instance: t.labels.instance, health: t.health, lastError: t.lastError }))).toEqual(
      expect.arrayContaining(gateways.map((gw) => ({ job: jobs[0], instance: instanceOf(gw), health: 'up', lastError: '' }))),
    );
  });

  it('lists every gateway in the dashboard’s query variables', async () => {
    for (const v of variableQueries(dashboard)) {
      const [, metric, label] = /^label_values\((\w+),\s*(\w+)\)$/.exec(v.query) ?? [];
      expect(metric, `variable ${v.name}: only label_values(metric, label) is understood here`).toBeDefined();
      const answer = await get<string[]>(`/api/v1/label/${label}/values`, { 'match[]': metric! });
      expect(answer.data, `variable ${v.name}`).toEqual(gateways.map(instanceOf).sort());
    }
  });

  it('parses and runs every panel query of the dashboard, Grafana variables substituted', async () => {
    const errors: string[] = [];
    for (const q of panelQueries(dashboard)) {
      const answer = await (q.instant ? query : queryRange)(toPromQL(q.expr));
      if (answer.status !== 'success') errors.push(`${q.panel} ${q.refId}: ${answer.error}`);
    }
    expect(errors).toEqual([]);
  });

  it('gets data from every panel query of the dashboard', async () => {
    const empty: string[] = [];
    for (const q of panelQueries(dashboard)) {
      const answer = await (q.instant ? query : queryRange)(toPromQL(q.expr));
      if (answer.status === 'success' && answer.data.result.length === 0) empty.push(`${q.panel} ${q.refId}: ${q.expr}`);
    }
    expect(empty, 'panel queries without data').toEqual([]);
  });

  it('parses and runs every alert expression of the committed rule files', async () => {
    expect(rules.length).toBeGreaterThan(0);
    const errors: string[] = [];
    for (const rule of rules) {
      const answer = await query(rule.expr);
      if (answer.status !== 'success') errors.push(`${rule.name}: ${answer.error}`);
    }
    expect(errors).toEqual([]);
  });

  it('loads every rule of the committed rule files and evaluates each one healthy', async () => {
    type Loaded = { name: string; health: string; lastError?: string };
    const loaded = await until(
      'every rule to be evaluated',
      () => get<{ groups: { rules: Loaded[] }[] }>('/api/v1/rules').then((a) => a.data.groups.flatMap((g) => g.rules)),
      (rs) => rs.length >= rules.length && rs.every((r) => r.health !== 'unknown'),
    );

    expect(loaded.map((r) => r.name).sort()).toEqual(rules.map((r) => r.name).sort());
    expect(loaded.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError ?? ''}`)).toEqual([]);
  });
});
