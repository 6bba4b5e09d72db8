// The load tool end to end: its simulator and a real gateway as child processes, 20 sessions through
// them, and both reports; then the CLI's answers to bad arguments and to a gateway that is not there.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHtml } from '../../src/cli/loadtest/html.ts';
import { GatewayUnreachable, runLoad, type LoadOptions } from '../../src/cli/loadtest/run.ts';
import { startGateway, startSimulator, type GatewayTarget, type SimulatorTarget } from '../../src/cli/loadtest/targets.ts';
import { closedPort } from '../support/gateway.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const base: Omit<LoadOptions, 'url'> = {
  sessions: 20,
  replies: 1,
  rampS: 1,
  text: 'Tell me about the weather today.',
  wav: undefined,
  uplinkCodec: 'pcm16',
  codec: 'pcm16',
  rate: 24000,
  transport: 'binary',
  pacing: 'none',
  prebufferMs: 0,
  buffersMs: [60, 120],
  bargeIn: 0.05,
  slow: 0,
  token: undefined,
  timeoutS: 25,
  seed: 1,
};

/** The CLI as a user runs it; answers its exit status and what it printed. */
function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/loadtest/main.ts', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 15_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('npm run loadtest against a real gateway', () => {
  let sim: SimulatorTarget;
  let gateway: GatewayTarget;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'voicegw-loadtest-'));
    sim = await startSimulator({ pacing: 'xiaozhi' });
    gateway = await startGateway({ upstreamUrl: sim.url });
  }, 30_000);

  afterAll(async () => {
    await gateway?.stop();
    await sim?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs 20 sessions of one reply, one of them interrupted, with no frame lost and no session failed', async () => {
    const report = await runLoad({ ...base, url: gateway.url, gatewayPid: gateway.pid, upstreamSendTimes: sim.takeSendTimes });

    expect(report.sessions).toMatchObject({ ok: 20, failed: 0, byClose: { '1000': 20 } });
    expect(report.replies).toEqual({ complete: 19, cut: 0, aborted: 1 });
    expect(report.frames).toMatchObject({ lost: 0, duplicated: 0, accountedBy: ['simulator'] });
    expect(report.frames.received).toBe(report.frames.expected);
    expect(report.frames.received).toBeGreaterThan(19 * 100);
    expect(report.ttfaMs.count).toBe(20);
    expect(report.gatewayLatencyMs!.count).toBe(report.frames.received);
    expect(report.gateway).toMatchObject({ source: 'proc' });
    expect(report.gateway!.peakRssBytes).toBeGreaterThan(10e6);
    expect(Object.keys(report.underruns)).toEqual(['60', '120']);
    expect(report.timeline.length).toBeGreaterThan(5);
    // The interrupted session may end before the last one starts.
    expect(Math.max(...report.timeline.map((e) => e.sessionsOpen))).toBeGreaterThanOrEqual(19);

    // The reports as the CLI writes them.
    const jsonFile = join(dir, 'report.json');
    writeFileSync(jsonFile, JSON.stringify(report));
    expect(JSON.parse(readFileSync(jsonFile, 'utf8'))).toMatchObject({ sessions: { ok: 20 }, frames: { lost: 0 } });
    const html = buildHtml(report);
    expect(html).toContain(readFileSync(join(ROOT, 'node_modules/uplot/dist/uPlot.iife.min.js'), 'utf8').slice(0, 2000));
    expect(html).toContain(`"received":${report.frames.received}`);
  }, 30_000);
});

describe('npm run loadtest, its errors', () => {
  it('rejects a gateway that cannot be reached with a clear error before any session starts', async () => {
    const url = `ws://127.0.0.1:${await closedPort()}/v1/voice`;
    await expect(runLoad({ ...base, url })).rejects.toThrow(GatewayUnreachable);
    await expect(runLoad({ ...base, url })).rejects.toThrow(/cannot reach the gateway at ws:\/\/127\.0\.0\.1:\d+\/v1\/voice: connect ECONNREFUSED/);
  });

  it('answers a bad argument with the usage on stderr and exit status 2', () => {
    const r = cli(['--sessions', 'many']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^loadtest: --sessions must be a whole number/);
    expect(r.stderr).toContain('usage: npm run loadtest');
    expect(r.stdout).toBe('');
  });

  it('answers an unreachable --url with one line on stderr and exit status 1', async () => {
    const r = cli(['--url', `ws://127.0.0.1:${await closedPort()}/v1/voice`, '--quiet']);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^loadtest: cannot reach the gateway at /);
  });
});
