import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { closedPort, expectedReplyShape, httpGet, metricValue, shapeOf, testEnv, TestClient } from '../support/gateway.ts';
import { EXIT_MS, START_MS, within } from '../support/gateway-process.ts';

// The production run: `npm run build` (tsc -p tsconfig.build.json into dist/ of this checkout), then
// `node dist/main.js` as its own process, without tsx, with two compiled worker threads. What only the
// compiled code can get wrong: the files it reads relative to itself (dist/<dir>/../../package.json,
// web/ and the simulator's test/fixtures/speech.json), the worker entry (worker.js), the exit on SIGTERM.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PACKAGE = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string; scripts: Record<string, string> };
const speech = loadSpeech();

/** Runs `npm run <script>` in the checkout; rejects with its output unless it exits 0. */
function npmRun(script: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['run', '--silent', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.once('error', reject);
    child.once('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`npm run ${script} ended with ${code ?? signal}:\n${output}`))));
  });
}

let gateway: ChildProcess | undefined;
afterAll(() => {
  if (gateway !== undefined && gateway.exitCode === null && gateway.signalCode === null) gateway.kill('SIGKILL');
});

describe('the compiled build (npm run build, then node dist/main.js)', () => {
  beforeAll(async () => {
    await npmRun('build', 60_000);
  }, 70_000);

  it('is what npm run start:prod runs', () => {
    expect(PACKAGE.scripts['build']).toBe('tsc -p tsconfig.build.json');
    expect(PACKAGE.scripts['start:prod']).toBe('node dist/main.js');
  });

  it('serves a whole conversation from two compiled worker threads, then drains on SIGTERM and exits 0', async () => {
    const port = await closedPort();
    // The compiled code alone: no tsx loader from this test's environment.
    const { NODE_OPTIONS: _, ...parentEnv } = process.env;
    const child = spawn(process.execPath, ['dist/main.js'], {
      cwd: ROOT,
      // No UPSTREAM_URL: the embedded simulator, which reads its speech from test/fixtures. The browser
      // client on, which reads web/.
      env: { ...parentEnv, ...testEnv({ PORT: String(port), WORKERS: '2', WEB_ENABLED: 'true', LOG_LEVEL: 'info' }) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    gateway = child;
    let output = '';
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const listening = new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        output += d.toString('utf8');
        if (output.includes('"voicegw listening"')) resolve();
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      void exited.then(({ code }) => reject(new Error(`node dist/main.js exited (${code}) before listening:\n${output}`)));
    });
    await within(START_MS, 'node dist/main.js to listen', listening);
    const started = JSON.parse(output.split('\n').find((l) => l.includes('"voicegw listening"'))!) as Record<string, unknown>;
    expect(started).toMatchObject({ port, workers: 2, upstream: 'embedded simulator' });

    expect(await httpGet(port, '/healthz')).toMatchObject({ status: 200 });
    expect(await httpGet(port, '/readyz')).toMatchObject({ status: 200 });
    const page = await httpGet(port, '/');
    expect(page.status).toBe(200);
    expect(page.body).toContain('<html');
    const metrics = await httpGet(port, '/metrics');
    expect(metricValue(metrics.body, 'voicegw_build_info', `version="${PACKAGE.version}"`)).toBe(1);

    const client = await TestClient.connect(`ws://127.0.0.1:${port}/v1/voice`);
    await client.hello();
    const reply = await within(20_000, 'the whole reply', client.textReply('Hello there'));
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(speech.sentences.reduce((n, s) => n + s.packets.length, 0));

    child.kill('SIGTERM');
    const closed = await within(EXIT_MS, 'the session to be closed', client.closed);
    expect(closed.code).toBe(1001);
    expect(await within(EXIT_MS, 'node dist/main.js to exit', exited)).toEqual({ code: 0, signal: null });
    expect(output).toContain('"msg":"draining"');
    expect(client.errors).toEqual([]);
  }, 45_000);
});
