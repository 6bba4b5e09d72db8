import { request } from 'node:http';
import { afterEach, expect, it } from 'vitest';
import { Resources } from '../support/gateway.ts';

// How the gateway serves the browser client (web/): its files by exact path, nothing else.

const resources = new Resources();
afterEach(() => resources.dispose());

/** A GET of `path` exactly as written: fetch would resolve `..` before sending. */
function get(port: number, path: string): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
    });
    req.on('error', reject);
    req.end();
  });
}

it('GET / serves the page as text/html, and its stylesheet and bundles with their types', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const page = await get(gw.port, '/');
  expect([page.status, page.type]).toEqual([200, 'text/html; charset=utf-8']);
  expect(page.body).toContain('<script type="module" src="/app.js"></script>');
  expect((await get(gw.port, '/?downlink=pcm16')).status).toBe(200);
  for (const path of ['/app.js', '/player-worklet.js', '/mic-worklet.js']) {
    const js = await get(gw.port, path);
    expect([path, js.status, js.type]).toEqual([path, 200, 'text/javascript; charset=utf-8']);
  }
  expect((await get(gw.port, '/player-worklet.js')).body).toMatch(/registerProcessor\(["']voicegw-player["']/);
  expect((await get(gw.port, '/mic-worklet.js')).body).toMatch(/registerProcessor\(["']voicegw-mic["']/);
  expect((await get(gw.port, '/style.css')).type).toBe('text/css; charset=utf-8');
  expect((await get(gw.port, '/favicon.svg')).type).toBe('image/svg+xml');
});

it('paths outside the client are 404, traversal and its source included', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const paths = ['/../package.json', '/%2e%2e/package.json', '/..%2fpackage.json', '/src/main.ts', '/web/', '/web/index.html', '/src/', '/src/app.ts', '/tsconfig.json', '/nothing.html', '/index.html/'];
  const statuses = await Promise.all(paths.map(async (p) => [p, (await get(gw.port, p)).status]));
  expect(statuses).toEqual(paths.map((p) => [p, 404]));
});

it('WEB_ENABLED=false serves no page', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'false' });
  expect((await get(gw.port, '/')).status).toBe(404);
  expect((await get(gw.port, '/app.js')).status).toBe(404);
  expect((await get(gw.port, '/healthz')).status).toBe(200);
});
