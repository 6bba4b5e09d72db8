import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

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
}

/** By URL path: `/` is index.html. A Map, so that it crosses to worker threads as it is. */
export type WebAssets = Map<string, WebFile>;

export async function buildWebAssets(): Promise<WebAssets> {
  const assets: WebAssets = new Map();
  for (const name of readdirSync(WEB, { withFileTypes: true })) {
    const type = TYPES[extname(name.name)];
    if (!name.isFile() || type === undefined) continue;
    assets.set(`/${name.name}`, { type, body: readFileSync(join(WEB, name.name)) });
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
  for (const file of bundled.outputFiles) assets.set(`/${file.path.slice(WEB.length)}`, { type: TYPES['.js']!, body: file.contents });
  return assets;
}
