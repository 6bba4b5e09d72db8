import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openDeviceStore } from '../../src/identity/store.ts';
import type { Simulator } from '../../src/sim/simulator.ts';
import { gatewayForTest, httpGet, isError, metricValue, Resources, type TestClient, type TestGateway } from '../support/gateway.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

// Several gateway instances share their users' devices through PostgreSQL (DATABASE_URL): any
// instance serves any user as the same device, two instances meeting a new user at once make one
// device, and a database that goes away fails only the sessions that need it.

const res = new Resources();
afterEach(() => res.dispose());

let postgres: TestPostgres;
beforeAll(async () => {
  postgres = await startPostgres();
}, 30_000);
afterAll(() => postgres?.stop());

const USERS = 'alice:alice-token,bob:bob-token,dave:dave-token';
const as = (user: string) => ({ headers: { Authorization: `Bearer ${user}-token` } });

async function gateway(sim: Simulator, databaseUrl: string): Promise<TestGateway> {
  const gw = await gatewayForTest({ UPSTREAM_OTA_URL: sim.otaUrl, CLIENT_TOKENS: USERS, ACTIVATION_POLL_MS: '20', DATABASE_URL: databaseUrl });
  res.add(() => gw.stop());
  return gw;
}

async function activateAndOpen(client: TestClient, sim: Simulator): Promise<void> {
  client.send({ type: 'hello' });
  const activation = await client.next((m) => m.type === 'activation');
  expect(sim.bind(activation.code as string)).toBeDefined();
  await client.next((m) => m.type === 'hello');
}

describe('devices in PostgreSQL', () => {
  it('activates a user once on one instance, and another instance serves them as the same device without activation', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'manager' } });
    const db = await postgres.database();
    const first = await gateway(sim, db);
    await activateAndOpen(await res.client(first.url, as('alice')), sim);
    const deviceId = sim.sessions.at(-1)!.headers['device-id'];
    await first.stop();

    const second = await gateway(sim, db);
    const alice = await res.client(second.url, as('alice'));
    await alice.hello();
    const reply = await alice.textReply('hello again');

    expect(reply.filter((m) => m === 'audio')).toHaveLength(sim.replyFrames());
    expect(alice.received.json.some((m) => m.type === 'activation')).toBe(false);
    expect(sim.sessions.at(-1)!.headers['device-id']).toBe(deviceId);
  });

  it('gives two users two devices', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const gw = await gateway(sim, await postgres.database());
    await (await res.client(gw.url, as('alice'))).hello();
    await (await res.client(gw.url, as('bob'))).hello();

    expect(new Set(sim.sessions.map((s) => s.headers['device-id'])).size).toBe(2);
  });

  it('makes one device when two instances meet a new user at the same moment', async () => {
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const db = await postgres.database();
    const [a, b] = await Promise.all([gateway(sim, db), gateway(sim, db)]);
    const clients = await Promise.all([a, b, a, b].map((gw) => res.client(gw.url, as('dave'))));
    await Promise.all(clients.map((c) => c.hello()));

    const ids = new Set(sim.sessions.map((s) => `${s.headers['device-id']} ${s.headers['client-id']}`));
    expect(ids.size).toBe(1);
    const store = await openDeviceStore({ dataDir: '', databaseUrl: db });
    res.add(() => store.close());
    expect((await store.list()).map((d) => d.user)).toEqual(['dave']);
  });

  it('fails only the sessions that need the database when it goes away, and the gateway lives on', async () => {
    const own = await startPostgres();
    res.add(() => own.stop());
    const sim = await res.simulator({ provisioning: { mode: 'single-module' } });
    const gw = await gateway(sim, own.url);
    const alice = await res.client(gw.url, as('alice'));
    await alice.hello();
    await own.stop();

    const bob = await res.client(gw.url, as('bob'));
    bob.send({ type: 'hello' });
    await bob.next(isError('upstream_unavailable'));
    expect((await bob.closed).code).toBe(4002);

    await alice.textReply('still here?');
    expect((await httpGet(gw.port, '/healthz')).status).toBe(200);
    expect(metricValue(await gw.scrape(), 'voicegw_store_errors_total', '{operation="read"}')).toBeGreaterThan(0);
  });

  it('refuses to start when DATABASE_URL cannot be reached, with a message naming it', async () => {
    const closed = (await postgres.database()).replace(/:\d+\//, ':1/');
    await expect(gatewayForTest({ CLIENT_TOKENS: USERS, DATABASE_URL: closed })).rejects.toThrow(/cannot reach PostgreSQL at postgres:\/\/voicegw@127\.0\.0\.1:1\//);
  });
});
