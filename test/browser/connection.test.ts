import { createServer, connect, type Socket } from 'node:net';
import { expect, it } from 'vitest';
import { chromiumForFile, type ClientPage } from '../support/browser.ts';
import { Resources } from '../support/gateway.ts';

// How the browser client connects: its token, activation, and what it says and does when the gateway
// closes on it.

const { resources, openPage } = chromiumForFile();

/** A TCP proxy in front of the gateway, whose connections can be cut as a network drops them (1006). */
async function tcpProxy(port: number): Promise<{ port: number; cut(): void }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const gateway = connect(port, '127.0.0.1');
    for (const s of [client, gateway]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(gateway).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  resources.add(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port: (server.address() as { port: number }).port,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
  };
}

async function open(port: number, query = '', waitForReady = true): Promise<ClientPage> {
  const client = await openPage(port, query, waitForReady);
  return client;
}

it('a page turned away at capacity (1013) says so, and connects by itself once there is room', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true', MAX_SESSIONS: '1' });
  const other = await resources.client(gw.url);
  await other.hello();
  const { page, problems } = await open(gw.port, '', false);
  await page.waitForFunction(() => window.voicegw.state === 'waiting');
  const f = await page.evaluate(() => window.voicegw.errors);
  expect(f.map((e) => [e.kind, e.code])).toEqual([
    ['error', 'overloaded'],
    ['close', 1013],
  ]);
  expect(f[1]!.message).toMatch(/^The gateway is at capacity\. Trying again in \d+ s\.$/);
  expect(await page.locator('#notices .error').first().textContent()).toBe(f[1]!.message);
  other.close();
  await other.closed;
  await page.waitForFunction(() => window.voicegw.state === 'ready', undefined, { timeout: 10_000 });
  expect(problems).toEqual([]);
});

it('the token comes from the URL; without one the page says the connection was refused, and does not retry', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true', CLIENT_TOKENS: 'page-token' });
  const refused = await open(gw.port, '', false);
  await refused.page.waitForFunction(() => window.voicegw.state === 'closed');
  const errors = await refused.page.evaluate(() => window.voicegw.errors);
  expect(errors).toEqual([{ kind: 'close', code: 1006, message: expect.stringContaining('refused before it opened') }]);
  const allowed = await open(gw.port, '?token=page-token');
  expect(await allowed.page.evaluate(() => window.voicegw.errors)).toEqual([]);
  expect(await allowed.page.inputValue('#token')).toBe('page-token');
  // Connect is for when no session is up: with the token typed in, the refused page connects.
  expect(await allowed.page.isDisabled('#connect')).toBe(true);
  await refused.page.fill('#token', 'page-token');
  await refused.page.click('#connect');
  await refused.page.waitForFunction(() => window.voicegw.state === 'ready');
  expect(await refused.page.isDisabled('#connect')).toBe(true);
});

it('a connection that drops after it had opened (1006) is said to have dropped, and the page connects again by itself', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const proxy = await tcpProxy(gw.port);
  const { page, problems } = await open(proxy.port);
  const first = await page.evaluate(() => window.voicegw.sessionId);
  proxy.cut();
  await page.waitForFunction(() => window.voicegw.state === 'waiting');
  expect(await page.evaluate(() => window.voicegw.errors)).toEqual([
    { kind: 'close', code: 1006, message: expect.stringMatching(/^The connection to the gateway dropped\. Trying again in \d+ s\.$/) },
  ]);
  expect(await page.isDisabled('#talk')).toBe(true);
  await page.waitForFunction(() => window.voicegw.state === 'ready', undefined, { timeout: 10_000 });
  expect(await page.evaluate(() => window.voicegw.sessionId)).not.toBe(first);
  expect(problems).toEqual([]);
});

it('an activation code is shown until the device is bound, then the session is ready', async () => {
  const gw = await resources.gateway({
    WEB_ENABLED: 'true',
    SIM_PROVISIONING: 'manager',
    CLIENT_TOKENS: 'alice:alice-token',
    ACTIVATION_POLL_MS: '50',
  });
  const { page, problems } = await open(gw.port, '?token=alice-token', false);
  await page.waitForFunction(() => window.voicegw.state === 'activation');
  expect(await page.isVisible('#activation')).toBe(true);
  const code = (await page.textContent('#activation-code')) ?? '';
  expect(code).toMatch(/^\d{6}$/);
  expect(await page.textContent('#activation-message')).not.toBe('');
  expect(gw.simulator!.bind(code)).toBeDefined();
  await page.waitForFunction(() => window.voicegw.state === 'ready');
  expect(await page.isVisible('#activation')).toBe(false);
  expect(problems).toEqual([]);
});
