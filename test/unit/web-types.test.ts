import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

// esbuild bundles the browser client without checking its types: this does, for the page and for the
// worklets (each with the names of its own global scope only).

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSC = fileURLToPath(new URL('../../node_modules/typescript/bin/tsc', import.meta.url));

it.each(['web/tsconfig.json', 'web/tsconfig.worklet.json'])('type-checks the browser client with %s', (project) => {
  const result = spawnSync(process.execPath, [TSC, '-p', project, '--noEmit'], { cwd: ROOT, encoding: 'utf8' });
  expect(result.stdout + result.stderr).toBe('');
  expect(result.status).toBe(0);
});
