import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkDockerfile, DOCKERFILE, DOCKERIGNORE, parseDockerfile, runtimeFiles } from './manifests.ts';

// Images cannot be built or pulled on this machine, so deploy/Dockerfile is held to hadolint's rules and
// to what the gateway needs of its image by reading it (manifests.ts checkDockerfile); hadolint itself
// runs too where it is installed.

const dockerfile = readFileSync(DOCKERFILE, 'utf8');
const dockerignore = readFileSync(DOCKERIGNORE, 'utf8');
const hadolint = spawnSync('hadolint', ['--version']).error === undefined;

describe('the container image (deploy/Dockerfile)', () => {
  it("follows hadolint's rules and runs node dist/main.js as its only process, as a numeric non-root user", () => {
    expect(checkDockerfile(dockerfile, dockerignore)).toEqual([]);
  });

  it('copies every file the compiled gateway reads relative to itself to where dist/<dir>/../../ finds it', () => {
    // A new one (a new `new URL('../../…', import.meta.url)` in src/) appears here first: copy it in the Dockerfile too.
    expect(runtimeFiles()).toEqual(['package.json', 'test/fixtures/speech.json', 'web/']);
  });

  it('builds in one stage and runs from a slim one of the same Node', () => {
    const from = parseDockerfile(dockerfile).filter((i) => i.keyword === 'FROM').map((i) => i.args);
    expect(from).toEqual(['node:20.20.2-bookworm-slim AS build', 'node:20.20.2-bookworm-slim AS runtime']);
  });

  it.skipIf(!hadolint)('passes hadolint itself', () => {
    const result = spawnSync('hadolint', [DOCKERFILE], { encoding: 'utf8' });
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  });
});

describe('the Dockerfile checks fail on a broken image', () => {
  it.each<[string, (text: string) => string, RegExp]>([
    ['npm as the process', (t) => t.replace('CMD ["node", "dist/main.js"]', 'CMD ["npm", "run", "start:prod"]'), /runs `node npm run start:prod`|runs `npm run start:prod`/],
    ['a shell-form CMD', (t) => t.replace('CMD ["node", "dist/main.js"]', 'CMD node dist/main.js'), /CMD in shell form.*DL3025/],
    ["the base image's entrypoint kept", (t) => t.replace('ENTRYPOINT []\n', ''), /runs `<the base image entrypoint> node dist\/main.js`/],
    ['no USER', (t) => t.replace('USER 1000:1000\n', ''), /sets no USER.*DL3002/],
    ['USER root', (t) => t.replace('USER 1000:1000', 'USER root'), /runs as root \(DL3002\)/],
    ['a user name', (t) => t.replace('USER 1000:1000', 'USER node'), /USER node is not numeric/],
    ['an untagged base image', (t) => t.replace('FROM node:20.20.2-bookworm-slim AS runtime', 'FROM node AS runtime'), /FROM node has no tag \(DL3006\)/],
    ['the latest tag', (t) => t.replace('FROM node:20.20.2-bookworm-slim AS build', 'FROM node:latest AS build'), /uses latest \(DL3007\)/],
    ['recommended packages', (t) => t.replace(' --no-install-recommends', ''), /without --no-install-recommends \(DL3015\)/],
    ['apt lists left in the layer', (t) => t.replace(' \\\n && rm -rf /var/lib/apt/lists/*', ''), /apt lists left in the layer.*\(DL3009\)/],
    ['npm install instead of npm ci', (t) => t.replace('npm ci --no-audit', 'npm install --no-audit'), /use npm ci.*DL3016/],
    ['a relative WORKDIR', (t) => t.replace('WORKDIR /app\n\n# The code', 'WORKDIR app\n\n# The code'), /WORKDIR app is not absolute \(DL3000\)/],
    ['a health check with curl', (t) => t.replace(/CMD \["node", "-e", "fetch[^\n]*/, 'CMD curl -f http://127.0.0.1:8080/healthz'), /curl or wget/],
    ['no HEALTHCHECK', (t) => t.replace(/HEALTHCHECK[^\n]*\\\n[^\n]*\n/, ''), /no HEALTHCHECK asking \/healthz/],
    ['the simulator speech left out', (t) => t.replace('COPY test/fixtures/speech.json ./test/fixtures/speech.json\n', ''), /has no test\/fixtures\/speech.json in \/app/],
    ['web/ copied elsewhere', (t) => t.replace('COPY web ./web', 'COPY web ./dist/web'), /has no web\/ in \/app/],
    ['a token built into the image', (t) => t.replace('ENV HOST=0.0.0.0', 'ENV UPSTREAM_TOKEN=abc HOST=0.0.0.0'), /names a secret setting/],
    ['another port exposed', (t) => t.replace('EXPOSE 8080', 'EXPOSE 3000'), /EXPOSE does not name 8080/],
  ])('rejects %s', (_, edit, message) => {
    const edited = edit(dockerfile);
    expect(edited).not.toBe(dockerfile);
    const problems = checkDockerfile(edited, dockerignore);
    expect(problems.some((p) => message.test(p)), problems.join('\n')).toBe(true);
  });

  it('rejects a build context that leaves out what a COPY takes', () => {
    const problems = checkDockerfile(dockerfile, dockerignore.replace('!web/\n', ''));
    expect(problems).toEqual([expect.stringMatching(/COPY web, which Dockerfile.dockerignore leaves out of the build context/)]);
  });
});
