import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, stop } from 'esbuild';
import type uWS from 'uWebSockets.js';

// The browser client (web/), as the gateway serves it at GET /: its static files and its TypeScript,
// bundled once at start. Only what is built here is served, by exact path: no directory listing, and
// nothing outside web/ can be named.

const WEB = fileURLToPath(new URL('../../web/', import.meta.url));
/** Each is a module of its own: the page, and the two AudioWorklet processors it loads by URL. */
const ENTRIES = ['app', 'player-worklet', 'mic-worklet'];
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

export interface WebFile {
  type: string;
  body: Uint8Array;
  /** Of the content: a browser that has it gets 304, and a new gateway's client is fetched anew. */
  etag: string;
}

/** By URL path: `/` is index.html. A Map, so that it crosses to worker threads as it is. */
export type WebAssets = Map<string, WebFile>;

export async function buildWebAssets(): Promise<WebAssets> {
  const assets: WebAssets = new Map();
  for (const name of readdirSync(WEB, { withFileTypes: true })) {
    const type = TYPES[extname(name.name)];
    if (!name.isFile() || type === undefined) continue;
    assets.set(`/${name.name}`, file(type, readFileSync(join(WEB, name.name))));
  }
  const index = assets.get('/index.html');
  if (index === undefined) throw new Error(`the browser client has no ${join(WEB, 'index.html')}`);
  assets.set('/', index);
  const bundled = await build({
    entryPoints: ENTRIES.map((e) => join(WEB, 'src', `${e}.ts`)),
    bundle: true,
    format: 'esm',
    target: 'es2022',
    outdir: WEB,
    write: false,
    logLevel: 'silent',
  });
  // esbuild keeps a service process for further builds: there are none.
  await stop();
  for (const output of bundled.outputFiles) assets.set(`/${output.path.slice(WEB.length)}`, file(TYPES['.js']!, output.contents));
  return assets;
}

function file(type: string, body: Uint8Array): WebFile {
  return { type, body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` };
}

/**
 * The page asks for the microphone and may carry a client token in its address: it runs only its own
 * scripts, connects only to its own gateway, is never framed by another site (which could grant itself
 * the microphone), and sends no Referer.
 */
const PAGE_HEADERS = {
  'Content-Security-Policy': "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'Permissions-Policy': 'microphone=(self)',
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  // Revalidated every time (cheap with the ETag), so that a new gateway's client is the one that runs.
  'Cache-Control': 'no-cache',
};

/**
 * GET of the client's files, by exact path; anything else falls through to the app's 404. Not HEAD: uWS
 * v20.30 does not take endWithoutBody with a length as an answer, and browsers never ask.
 */
export function serveWeb(app: uWS.TemplatedApp, web: WebAssets): void {
  app.get('/*', (res, req) => {
    const found = web.get(req.getUrl());
    if (found === undefined) return void res.writeStatus('404 Not Found').end();
    const fresh = req.getHeader('if-none-match') === found.etag;
    res.cork(() => {
      res.writeStatus(fresh ? '304 Not Modified' : '200 OK');
      for (const [name, value] of Object.entries(PAGE_HEADERS)) res.writeHeader(name, value);
      res.writeHeader('Content-Type', found.type).writeHeader('ETag', found.etag);
      if (fresh) res.endWithoutBody(0);
      else res.end(found.body);
    });
  });
}
