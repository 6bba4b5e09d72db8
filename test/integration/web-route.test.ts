import { request } from 'node:http';
import { afterEach, expect, it } from 'vitest';
import { Resources } from '../support/gateway.ts';

// How the gateway serves the browser client (web/): its files by exact path, nothing else; the headers
// that keep the page to itself (it asks for the microphone and may carry a token in its address), and
// revalidation by ETag.

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

it('serves the page only to itself: its own scripts and socket, never framed, no Referer, the microphone for itself', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const page = await fetch(`http://127.0.0.1:${gw.port}/`);
  expect(page.headers.get('content-security-policy')).toBe("default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
  expect(page.headers.get('permissions-policy')).toBe('microphone=(self)');
  expect(page.headers.get('referrer-policy')).toBe('no-referrer');
  expect(page.headers.get('x-content-type-options')).toBe('nosniff');
});

it('answers a revalidation of an unchanged file with 304 and no body, and a stale one with the file', async () => {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const url = `http://127.0.0.1:${gw.port}/app.js`;
  const first = await fetch(url);
  const etag = first.headers.get('etag')!;
  const body = await first.text();
  expect(first.headers.get('cache-control')).toBe('no-cache');
  expect(etag).toMatch(/^"[\w-]{22}"$/);

  const again = await fetch(url, { headers: { 'If-None-Match': etag } });
  expect([again.status, await again.text()]).toEqual([304, '']);
  const stale = await fetch(url, { headers: { 'If-None-Match': '"something-else"' } });
  expect([stale.status, (await stale.text()).length]).toEqual([200, body.length]);
});
