import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { OtaFault, ProvisioningMode, Simulator } from '../../src/sim/simulator.ts';
import { openDeviceStore } from '../../src/identity/store.ts';
import { gatewayForTest, isError, metricSum, metricValue, poll, Resources, type TestClient, type TestGateway } from '../support/gateway.ts';

// The gateway as a faithful xiaozhi device per user, against the simulator playing each kind of server
// (XIAOZHI-OTA.md): OTA discovery, activation bound through the server's console, a device identity
// that outlives the gateway, tokens refreshed when refused, and every OTA fault a clear error.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const res = new Resources();
afterEach(() => res.dispose());

const USERS = 'alice:alice-token,bob:bob-token,carol:carol-token';
const as = (user: string) => ({ headers: { Authorization: `Bearer ${user}-token` } });

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'voicegw-provisioning-'));
  res.add(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function gateway(sim: Simulator, env: Record<string, string>): Promise<TestGateway> {
  const gw = await gatewayForTest({ UPSTREAM_OTA_URL: sim.otaUrl, CLIENT_TOKENS: USERS, ACTIVATION_POLL_MS: '20', ...env });
  res.add(() => gw.stop());
  return gw;
}

/** The Device-Id the simulator saw on the WebSocket of its latest session. */
const lastDeviceId = (sim: Simulator) => sim.sessions.at(-1)!.headers['device-id'];

/** Sends hello; when the server asks for activation, binds the code shown to the client through the simulator's console. */
async function activateAndOpen(client: TestClient, sim: Simulator): Promise<string> {
  client.send({ type: 'hello' });
  const activation = await client.next((m) => m.type === 'activation');
  const bound = await fetch(`${sim.consoleUrl}bind/${activation.code as string}`, { method: 'POST' });
  expect(bound.status).toBe(200);
  await client.next((m) => m.type === 'hello');
  return activation.code as string;
}

async function talks(client: TestClient): Promise<void> {
  const reply = await client.textReply('hello');
  expect(reply.filter((m) => m === 'audio').length).toBeGreaterThan(0);
}

describe.each<ProvisioningMode>(['manager', 'cloud'])('a %s server, which binds devices to accounts', (mode) => {
  it("activates a new user's device once: the client sees the code, and after binding the reply plays", async () => {
    const sim = await res.simulator({ provisioning: { mode } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    const alice = await res.client(gw.url, as('alice'));

    const code = await activateAndOpen(alice, sim);
    await alice.next((m) => m.type === 'state' && m.state === 'ready');
    await talks(alice);

    expect(code).toMatch(/^\d{6}$/);
    expect(alice.received.json.findIndex((m) => m.type === 'activation')).toBeLessThan(alice.received.json.findIndex((m) => m.type === 'hello'));
    const metrics = await gw.scrape();
    expect(metricValue(metrics, 'voicegw_activations_total', '{outcome="activated"}')).toBe(1);
    expect(metricValue(metrics, 'voicegw_activations_pending')).toBe(0);
  });

  it('keeps the Device-Id across a gateway restart, so the next session needs no activation', async () => {
    const sim = await res.simulator({ provisioning: { mode } });
    const dir = dataDir();
    const first = await gateway(sim, { DATA_DIR: dir });
    await activateAndOpen(await res.client(first.url, as('alice')), sim);
    const deviceId = lastDeviceId(sim);
    await first.stop();

    const second = await gateway(sim, { DATA_DIR: dir });
    const alice = await res.client(second.url, as('alice'));
    await alice.hello();
    await talks(alice);

    expect(alice.received.json.some((m) => m.type === 'activation')).toBe(false);
    expect(lastDeviceId(sim)).toBe(deviceId);
  });
});

describe('device identity', () => {
  it('gives two users two devices, each with its own activation', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'manager' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    const codes = [await activateAndOpen(await res.client(gw.url, as('alice')), sim)];
    const alice = lastDeviceId(sim);
    codes.push(await activateAndOpen(await res.client(gw.url, as('bob')), sim));

    expect(lastDeviceId(sim)).not.toBe(alice);
    expect(codes[0]).not.toBe(codes[1]);
  });

  it("lets two sessions of one user talk at once, as the same device", async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    const phone = await res.client(gw.url, as('alice'));
    const tablet = await res.client(gw.url, as('alice'));
    await Promise.all([phone.hello(), tablet.hello()]);
    await Promise.all([talks(phone), talks(tablet)]);

    const ids = sim.sessions.map((s) => s.headers['device-id']);
    expect(ids).toHaveLength(2);
    expect(ids[0]).toBe(ids[1]);
  });

  it('keeps a client without a user a device of its own, provisioned through OTA all the same', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const gw = await gatewayForTest({ UPSTREAM_OTA_URL: sim.otaUrl });
    res.add(() => gw.stop());
    for (let i = 0; i < 2; i++) await (await res.client(gw.url)).hello();

    expect(new Set(sim.sessions.map((s) => s.headers['device-id'])).size).toBe(2);
    expect(sim.otaRequests.filter((r) => r.path.endsWith('/ota/'))).toHaveLength(2);
  });
});

describe('tokens', () => {
  it('connects with the token from the OTA answer, and the same Client-Id and Device-Id it signs', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module', authKey: 'sim-key' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    await (await res.client(gw.url, as('alice'))).hello();

    const ota = sim.otaRequests.at(-1)!;
    const ws = sim.sessions.at(-1)!.headers;
    expect(ws['device-id']).toBe(ota.headers['device-id']);
    expect(ws['client-id']).toBe(ota.headers['client-id']);
    expect(ws.authorization).toMatch(/^Bearer [\w-]+\.\d+$/);
  });

  it('asks the OTA server again when the cached token is refused at the handshake, and the session proceeds', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module', authKey: 'sim-key' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    await (await res.client(gw.url, as('alice'))).hello();
    const asked = sim.otaRequests.length;
    sim.rotateAuthKey();

    const alice = await res.client(gw.url, as('alice'));
    await alice.hello();
    await talks(alice);

    expect(sim.otaRequests.length).toBe(asked + 1);
  });

  it('uses a cached token while it is young, and fetches a new one once it is older than UPSTREAM_OTA_MAX_AGE_MS', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const dir = dataDir();
    const gw = await gateway(sim, { DATA_DIR: dir });
    for (let i = 0; i < 2; i++) await (await res.client(gw.url, as('alice'))).hello();
    expect(sim.otaRequests).toHaveLength(1);

    // An hour and a second ago, as the store would have it after that long.
    const store = await openDeviceStore({ dataDir: dir, databaseUrl: undefined });
    const device = (await store.get('alice'))!;
    await store.saveEndpoint('alice', device.deviceId, { ...device.endpoint!, fetchedAt: Date.now() - 3_601_000 });
    await store.close();
    await (await res.client(gw.url, as('alice'))).hello();
    expect(sim.otaRequests).toHaveLength(2);
  });
});

describe('failures', () => {
  it.each<[OtaFault, string]>([
    ['http_error', 'http_error'],
    ['malformed', 'malformed'],
    ['timeout', 'unreachable'],
    ['mqtt_only', 'no_websocket'],
    ['error_body', 'malformed'],
    ['refuse_token', 'ok'],
  ])('answers the OTA fault %s with upstream_unavailable and 4002 (the OTA request counted as %s), and serves the next session once it is gone', async (fault, outcome) => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module', authKey: 'sim-key' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir(), UPSTREAM_OTA_TIMEOUT_MS: '300' });
    sim.setOtaFault(fault);
    const alice = await res.client(gw.url, as('alice'));
    alice.send({ type: 'hello' });

    const error = await alice.next(isError('upstream_unavailable'));
    expect((await alice.closed).code).toBe(4002);
    expect(error.message).toMatch(/^the voice service /);
    expect(metricValue(await gw.scrape(), 'voicegw_ota_requests_total', `{outcome="${outcome}"}`)).toBe(1);

    sim.setOtaFault(undefined);
    const again = await res.client(gw.url, as('alice'));
    await again.hello();
    await talks(again);
  });

  it('ends the session with activation_timeout and 4002 when nobody binds the device in time', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'manager' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir(), ACTIVATION_TIMEOUT_MS: '300' });
    const alice = await res.client(gw.url, as('alice'));
    alice.send({ type: 'hello' });

    await alice.next((m) => m.type === 'activation');
    await alice.next(isError('activation_timeout'));
    expect((await alice.closed).code).toBe(4002);
    const metrics = await poll(() => gw.scrape(), (m) => metricValue(m, 'voicegw_activations_pending') === 0);
    expect(metricValue(metrics, 'voicegw_activations_total', '{outcome="timeout"}')).toBe(1);
  });

  it('stops polling /activate when the client leaves during activation', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'manager' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    const alice = await res.client(gw.url, as('alice'));
    alice.send({ type: 'hello' });
    await alice.next((m) => m.type === 'activation');
    alice.close();

    // The gauge falls only when the polling loop has ended; a request cut short by it is nobody's failure.
    const metrics = await poll(() => gw.scrape(), (m) => metricValue(m, 'voicegw_activations_pending') === 0);
    expect(metricSum(metrics, 'voicegw_activations_total')).toBe(0);
    expect(metricValue(metrics, 'voicegw_ota_requests_total', '{outcome="unreachable"}')).toBe(0);
  });

  it('waits out an OTA server failing during activation, and the session opens once the device is bound', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'manager' } });
    const gw = await gateway(sim, { DATA_DIR: dataDir() });
    const alice = await res.client(gw.url, as('alice'));
    alice.send({ type: 'hello' });
    const { code } = await alice.next((m) => m.type === 'activation');
    sim.setOtaFault('http_error');
    await poll(() => gw.scrape(), (m) => metricValue(m, 'voicegw_ota_requests_total', '{outcome="activate_error"}') >= 1, 5000);
    sim.setOtaFault(undefined);
    expect(sim.bind(code as string)).toBeDefined();

    await alice.next((m) => m.type === 'hello');
    await talks(alice);
  });
});

describe('the embedded simulator as a full-module server', () => {
  it('shows the activation code in `npm run client`, and after binding it at the console the reply plays', async () => {
    const gw = await gatewayForTest({ SIM_PROVISIONING: 'manager', CLIENT_TOKENS: USERS, ACTIVATION_POLL_MS: '20', DATA_DIR: dataDir() });
    res.add(() => gw.stop());
    const out = join(dataDir(), 'reply.wav');
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/client.ts', '--url', gw.url, '--token', 'alice-token', '--text', 'hello', '--out', out], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    res.add(() => void child.kill('SIGKILL'));
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    const exited = once(child, 'close') as Promise<[number | null]>;

    const code = (await poll(async () => /^activation code (\d{6}): (.*)$/m.exec(stdout), (m) => m !== null, 20_000))!;
    expect(code[2]).toContain(`${gw.simulator!.consoleUrl}bind/${code[1]}`);
    expect((await fetch(`${gw.simulator!.consoleUrl}bind/${code[1]}`, { method: 'POST' })).status).toBe(200);

    expect((await exited)[0]).toBe(0);
    expect(Number(/^frames\s+(\d+)$/m.exec(stdout)?.[1])).toBe(gw.simulator!.replyFrames());
  });
});
