import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

// The production image installs `dependencies` only (deploy/Dockerfile): whatever src/ imports must be
// one, or the compiled gateway that passed every test here would not start there.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

it('lists every package that src/ imports (type-only imports aside) under dependencies', () => {
  const { dependencies } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const imported = new Set<string>();
  for (const file of sources(join(ROOT, 'src'))) {
    for (const [, typeOnly, specifier] of readFileSync(file, 'utf8').matchAll(/^import (type )?[^'"]*from '([^'.][^']*)'/gm)) {
      if (typeOnly !== undefined || specifier!.startsWith('node:')) continue;
      const parts = specifier!.split('/');
      imported.add(specifier!.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!);
    }
  }
  expect(imported.size).toBeGreaterThan(5);
  expect([...imported].filter((name) => dependencies[name] === undefined)).toEqual([]);
});
