// Checks a kustomization (the base, or your overlay of it) as test/deploy checks the base: every object
// against its schema, and the invariants that break drains, probes, scrapes and secrets silently.
//
//   node --import tsx test/deploy/check.ts [DIR]      (DIR: deploy/kubernetes by default)
//
// It renders DIR with `kubectl kustomize` where kubectl is installed (overlays need it), else with the
// small renderer of manifests.ts (enough for the base). Exit 1 with one line per problem.
import { resolve } from 'node:path';
import { checkManifests, KUBERNETES_DIR, kubectlKustomize, renderBase, schemaErrors } from './manifests.ts';

const dir = resolve(process.argv[2] ?? KUBERNETES_DIR);
const rendered = kubectlKustomize(dir);
if (rendered !== undefined && 'error' in rendered) {
  console.error(`kubectl kustomize ${dir} failed:\n${rendered.error}`);
  process.exit(1);
}
const objects = rendered?.objects ?? renderBase(dir);
const problems = [...objects.flatMap(schemaErrors), ...checkManifests(objects)];
console.log(`${dir} (${rendered === undefined ? 'rendered here: kubectl is not installed' : 'rendered by kubectl kustomize'}): ${objects.length} objects`);
for (const problem of problems) console.log(`  ✗ ${problem}`);
if (problems.length > 0) process.exit(1);
console.log('  every schema and invariant holds');
