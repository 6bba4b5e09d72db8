import { afterEach, expect, it } from 'vitest';
import { Resources } from '../support/gateway.ts';

// The headers the browser client is served with: what keeps the page to itself (it asks for the
// microphone and may carry a token in its address), and revalidation by ETag.

const resources = new Resources();
afterEach(() => resources.dispose());

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
