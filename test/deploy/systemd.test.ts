import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkUnit, SYSTEMD_ENV, SYSTEMD_UNIT } from './manifests.ts';

// One machine: deploy/systemd/voicegw.service drains as a Kubernetes rollout does, and systemd itself
// finds nothing to say about it where systemd-analyze is installed.

const unit = readFileSync(SYSTEMD_UNIT, 'utf8');
const env = readFileSync(SYSTEMD_ENV, 'utf8');
const analyze = spawnSync('systemd-analyze', ['--version']).error === undefined;

describe('the systemd unit (deploy/systemd/voicegw.service)', () => {
  it('runs node dist/main.js as a non-root user, SIGTERM to node alone, TimeoutStopSec past the drain, restarts on failure', () => {
    expect(checkUnit(unit, env)).toEqual([]);
  });

  it.skipIf(!analyze)('passes systemd-analyze verify without a warning', () => {
    // With this machine's node in ExecStart: verify wants the executable to exist.
    const dir = mkdtempSync(join(tmpdir(), 'voicegw-unit-'));
    const copy = join(dir, 'voicegw.service');
    writeFileSync(copy, unit.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `));
    const result = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
    expect(result.stderr + result.stdout).toBe('');
  });

  it.each<[string, string, string, RegExp]>([
    ['a stop timeout shorter than the drain', 'TimeoutStopSec=45', 'TimeoutStopSec=20', /TimeoutStopSec 20 must be at least DRAIN_DEADLINE_MS 30 s \+ 5 s/],
    ['npm as the process', 'ExecStart=/usr/bin/node dist/main.js', 'ExecStart=/usr/bin/npm run start:prod', /not `\/path\/to\/node dist\/main.js`/],
    ['SIGTERM to every process of the unit', 'KillMode=mixed', 'KillMode=control-group', /KillMode control-group: use mixed/],
    ['no restart after a crash', 'Restart=on-failure', 'Restart=no', /Restart=no: use on-failure/],
    ['root', 'User=voicegw', 'User=root', /runs as root/],
    ['a JIT-killing hardening option', 'LockPersonality=yes', 'LockPersonality=yes\nMemoryDenyWriteExecute=yes', /MemoryDenyWriteExecute=yes kills Node/],
    ['a token in the unit', 'Environment=HOST=0.0.0.0 PORT=8080 DATA_DIR=/var/lib/voicegw DRAIN_DEADLINE_MS=30000', 'Environment=HOST=0.0.0.0 PORT=8080 DATA_DIR=/var/lib/voicegw DRAIN_DEADLINE_MS=30000 UPSTREAM_TOKEN=abc', /UPSTREAM_TOKEN is in the unit/],
  ])('rejects %s', (_, from, to, message) => {
    // Whole lines: the comments name some of these settings too.
    const line = new RegExp(`^${from.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`, 'm');
    expect(unit).toMatch(line);
    const problems = checkUnit(unit.replace(line, to), env);
    expect(problems.some((p) => message.test(p)), problems.join('\n')).toBe(true);
  });

  it('rejects an environment file that raises the drain past TimeoutStopSec (EnvironmentFile= overrides Environment=)', () => {
    expect(checkUnit(unit, `${env}DRAIN_DEADLINE_MS=60000\n`)).toEqual([expect.stringMatching(/TimeoutStopSec 45 must be at least DRAIN_DEADLINE_MS 60 s/)]);
  });
});
