import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { StoreError, type DeviceStore } from '../../src/identity/devices.ts';
import { openDeviceStore } from '../../src/identity/store.ts';
import { freePort, startPostgres, type TestPostgres } from '../support/postgres.ts';

let postgres: TestPostgres;
const dirs: string[] = [];

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'voicegw-store-'));
  dirs.push(dir);
  return dir;
}

beforeAll(async () => {
  postgres = await startPostgres();
});

afterAll(async () => {
  await postgres?.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

interface Backend {
  name: string;
  /** A new, empty database: a function that opens a store on it, as often as asked. */
  fresh(): Promise<() => Promise<DeviceStore>>;
  /** A store in use whose database then goes away. */
  lost(): Promise<DeviceStore>;
}

const backends: Backend[] = [
  {
    name: 'SQLite',
    async fresh() {
      const dataDir = tempDir();
      return () => openDeviceStore({ dataDir, databaseUrl: undefined });
    },
    async lost() {
      const store = await openDeviceStore({ dataDir: tempDir(), databaseUrl: undefined });
      await store.deviceFor('alice');
      await store.close();
      return store;
    },
  },
  {
    name: 'PostgreSQL',
    async fresh() {
      const databaseUrl = await postgres.database();
      return () => openDeviceStore({ dataDir: 'unused', databaseUrl });
    },
    async lost() {
      // A server of its own, since this one is stopped under the store.
      const own = await startPostgres();
      try {
        const store = await openDeviceStore({ dataDir: 'unused', databaseUrl: own.url });
        // An idle pooled connection, which the shutdown then breaks.
        await store.deviceFor('alice');
        return store;
      } finally {
        await own.stop();
      }
    },
  },
];

describe.each(backends)('the device store on $name', (backend) => {
  let open: () => Promise<DeviceStore>;
  let opened: DeviceStore[];

  beforeEach(async () => {
    const opener = await backend.fresh();
    opened = [];
    open = async () => {
      const store = await opener();
      opened.push(store);
      return store;
    };
  });

  afterEach(async () => {
    await Promise.all(opened.map((s) => s.close()));
  });

  it('makes a device on the first call and returns the same one on later calls', async () => {
    const store = await open();
    const before = Date.now();
    const device = await store.deviceFor('alice');

    expect(device).toMatchObject({ user: 'alice', activatedAt: undefined, endpoint: undefined });
    expect(device.deviceId).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    expect(device.createdAt).toBeGreaterThanOrEqual(before);
    expect(await store.deviceFor('alice')).toEqual(device);
    expect(await store.get('alice')).toEqual(device);
  });

  it('gives two users different devices', async () => {
    const store = await open();
    const alice = await store.deviceFor('alice');
    const bob = await store.deviceFor('bob');

    expect(bob.deviceId).not.toBe(alice.deviceId);
    expect(bob.clientId).not.toBe(alice.clientId);
    expect(bob.hmacKey).not.toBe(alice.hmacKey);
  });

  it('answers undefined for a user without a device', async () => {
    const store = await open();
    expect(await store.get('nobody')).toBeUndefined();
  });

  it('saves an endpoint and reads it back, with a token and without one', async () => {
    const store = await open();
    const { deviceId } = await store.deviceFor('alice');

    const endpoint = { url: 'wss://voice.example/xiaozhi/v1/', token: 'token-1', fetchedAt: 1_750_000_000_123 };
    await store.saveEndpoint('alice', deviceId, endpoint);
    expect((await store.get('alice'))!.endpoint).toEqual(endpoint);

    await store.saveEndpoint('alice', deviceId, { ...endpoint, token: undefined });
    expect((await store.get('alice'))!.endpoint).toEqual({ ...endpoint, token: undefined });
  });

  it('marks a device activated', async () => {
    const store = await open();
    const { deviceId } = await store.deviceFor('alice');

    await store.markActivated('alice', deviceId, 1_750_000_000_456);

    expect((await store.get('alice'))!.activatedAt).toBe(1_750_000_000_456);
  });

  it('forgets a user, whose next device is a new identity that late writes for the old one leave alone', async () => {
    const store = await open();
    const old = await store.deviceFor('alice');

    expect(await store.forget('alice')).toBe(true);
    expect(await store.get('alice')).toBeUndefined();
    expect(await store.forget('alice')).toBe(false);

    const renewed = await store.deviceFor('alice');
    expect(renewed.deviceId).not.toBe(old.deviceId);
    expect(renewed.clientId).not.toBe(old.clientId);
    await store.saveEndpoint('alice', old.deviceId, { url: 'wss://voice.example/', token: 't', fetchedAt: 1 });
    await store.markActivated('alice', old.deviceId, 1);
    expect(await store.get('alice')).toEqual(renewed);
  });

  it('lists every device by user', async () => {
    const store = await open();
    const made = [await store.deviceFor('carol'), await store.deviceFor('Bob'), await store.deviceFor('alice')];

    expect(await store.list()).toEqual([made[1], made[2], made[0]]);
  });

  it('keeps the identity, endpoint and activation across a restart', async () => {
    const first = await open();
    const { deviceId } = await first.deviceFor('alice');
    await first.saveEndpoint('alice', deviceId, { url: 'wss://voice.example/', token: 'token-1', fetchedAt: 1_750_000_000_000 });
    await first.markActivated('alice', deviceId, 1_750_000_000_001);
    const kept = await first.get('alice');
    await first.close();

    const second = await open();

    expect(await second.get('alice')).toEqual(kept);
    expect(await second.deviceFor('alice')).toEqual(kept);
  });

  it('hands one device to many concurrent first calls from two instances opened at once', async () => {
    const [a, b] = await Promise.all([open(), open()]);

    const devices = await Promise.all(Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? a : b).deviceFor('alice')));

    for (const device of devices) expect(device).toEqual(devices[0]);
    expect(await a.list()).toEqual([devices[0]]);
  });

  it('rejects with a StoreError, and does not crash, once its database has gone away', async () => {
    const store = await backend.lost();
    opened.push(store);

    for (const call of [() => store.deviceFor('alice'), () => store.get('bob'), () => store.list(), () => store.forget('alice')]) {
      const error = await call().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StoreError);
      expect((error as StoreError).message).toMatch(/^cannot (read|write) the device store /);
    }
  });
});

describe('opening the device store', () => {
  it('fails with a StoreError naming the file when DATA_DIR cannot be written', async () => {
    // A regular file where a directory should be: unwritable even for root, which ignores modes.
    const blocker = join(tempDir(), 'not-a-directory');
    writeFileSync(blocker, '');
    const dataDir = join(blocker, 'data');

    await expect(openDeviceStore({ dataDir, databaseUrl: undefined })).rejects.toThrow(
      new StoreError(`cannot open the device store at ${join(dataDir, 'devices.sqlite')}: ENOTDIR: not a directory, mkdir '${dataDir}'`, 'write'),
    );
  });

  it('fails with a StoreError when devices.sqlite is not a SQLite database', async () => {
    const dataDir = tempDir();
    writeFileSync(join(dataDir, 'devices.sqlite'), 'not a database, but long enough to have a header '.repeat(4));

    await expect(openDeviceStore({ dataDir, databaseUrl: undefined })).rejects.toThrow(/^cannot open the device store at .*devices\.sqlite: file is not a database$/);
  });

  it('fails with a StoreError naming the server, but not the password, when PostgreSQL is unreachable', async () => {
    const port = await freePort();
    const error = await openDeviceStore({ dataDir: 'unused', databaseUrl: `postgres://alice:s3cret@127.0.0.1:${port}/voicegw` }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).message).toBe(`cannot reach PostgreSQL at postgres://alice@127.0.0.1:${port}/voicegw: connect ECONNREFUSED 127.0.0.1:${port}`);
  });

  it('fails with a StoreError when the PostgreSQL database does not exist', async () => {
    const url = postgres.url.replace(/\/[^/]+$/, '/missing');

    await expect(openDeviceStore({ dataDir: 'unused', databaseUrl: url })).rejects.toThrow(/^cannot reach PostgreSQL at postgres:\/\/voicegw@127\.0\.0\.1:\d+\/missing: database "missing" does not exist$/);
  });
});
