import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../../src/identity/devices.ts';
import { openDeviceStore } from '../../src/identity/store.ts';
import { freePort } from '../support/postgres.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dataDir = mkdtempSync(join(tmpdir(), 'voicegw-cli-'));
const TOKEN = 'token-that-must-not-show';
let alice: Device;
let bob: Device;

/** `npm run devices -- ...args` as its own process, on this file's DATA_DIR unless `env` says otherwise. */
function devices(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/devices.ts', ...args],
      { cwd: ROOT, env: { ...process.env, DATA_DIR: dataDir, DATABASE_URL: '', ...env } },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  const store = await openDeviceStore({ dataDir, databaseUrl: undefined });
  alice = await store.deviceFor('alice');
  bob = await store.deviceFor('bob');
  await store.saveEndpoint('alice', alice.deviceId, { url: 'wss://voice.example/xiaozhi/v1/', token: TOKEN, fetchedAt: Date.now() - 5 * 60_000 });
  await store.markActivated('alice', alice.deviceId, Date.parse('2026-01-02T03:04:05Z'));
  await store.close();
});

afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

describe('npm run devices', () => {
  it('lists every device as a table, without HMAC keys or tokens', async () => {
    const { code, stdout } = await devices(['list']);

    expect(code).toBe(0);
    const [header, ...rows] = stdout.trimEnd().split('\n');
    expect(header).toMatch(/^USER +DEVICE ID +CLIENT ID +CREATED +ACTIVATED +TOKEN$/);
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(new RegExp(`^alice +${alice.deviceId} +${alice.clientId} +\\S+Z +2026-01-02T03:04:05Z +5 min old$`));
    expect(rows[1]).toMatch(new RegExp(`^bob +${bob.deviceId} +${bob.clientId} +\\S+Z +- +-$`));
    for (const secret of [TOKEN, alice.hmacKey, bob.hmacKey]) expect(stdout).not.toContain(secret);
  });

  it("shows one user's device with its token's age, but not the token or the HMAC key", async () => {
    const { code, stdout } = await devices(['show', 'alice']);

    expect(code).toBe(0);
    for (const line of [`device id      ${alice.deviceId}`, `client id      ${alice.clientId}`, `serial number  ${alice.serialNumber}`, 'activated      2026-01-02T03:04:05Z', 'endpoint       wss://voice.example/xiaozhi/v1/', 'token          5 min old']) {
      expect(stdout).toContain(`${line}\n`);
    }
    expect(stdout).not.toContain(TOKEN);
    expect(stdout).not.toContain(alice.hmacKey);
  });

  it('forgets a user, whose device is then gone from the store', async () => {
    const { code, stdout } = await devices(['forget', 'bob']);

    expect(code).toBe(0);
    expect(stdout).toBe('forgot bob\n');
    const store = await openDeviceStore({ dataDir, databaseUrl: undefined });
    expect(await store.get('bob')).toBeUndefined();
    expect(await store.get('alice')).toEqual(expect.objectContaining({ deviceId: alice.deviceId }));
    await store.close();
  });

  it.each([['show'], ['forget']])('exits 1 when asked to %s a user without a device', async (command) => {
    const { code, stdout, stderr } = await devices([command, 'nobody']);

    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toBe('nobody has no device\n');
  });

  it.each([[[]], [['show']], [['list', 'alice']], [['rename', 'alice']], [['list', '--all']]])('prints the usage and exits 2 for the arguments %j', async (args) => {
    const { code, stdout, stderr } = await devices(args);

    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('usage: npm run devices -- list | show USER | forget USER\n');
  });

  it('exits 1 with the StoreError when DATA_DIR cannot be written', async () => {
    const blocker = join(dataDir, 'a-file');
    writeFileSync(blocker, '');

    const { code, stderr } = await devices(['list'], { DATA_DIR: join(blocker, 'data') });

    expect(code).toBe(1);
    expect(stderr).toBe(`cannot open the device store at ${join(blocker, 'data', 'devices.sqlite')}: ENOTDIR: not a directory, mkdir '${join(blocker, 'data')}'\n`);
  });

  it('exits 1 with the StoreError, without the password, when PostgreSQL is unreachable', async () => {
    const port = await freePort();

    const { code, stderr } = await devices(['list'], { DATABASE_URL: `postgres://ops:s3cret@127.0.0.1:${port}/voicegw` });

    expect(code).toBe(1);
    expect(stderr).toBe(`cannot reach PostgreSQL at postgres://ops@127.0.0.1:${port}/voicegw: connect ECONNREFUSED 127.0.0.1:${port}\n`);
  });
});
