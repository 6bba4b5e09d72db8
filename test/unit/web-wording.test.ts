import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { closeText, errorText } from '../../web/src/wording.ts';

// The browser client has words (web/src/wording.ts) for every error code and close code that
// docs/protocol.md lists in its tables, so that a code added there without words here fails this test.

const protocol = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
/** The "## Errors" section: its two tables, error codes then close codes. */
const section = protocol.slice(protocol.indexOf('\n## Errors\n'), protocol.indexOf('\n## ', protocol.indexOf('\n## Errors\n') + 1));
const rows = section.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| code') && !l.startsWith('| close code'));
const errorCodes = rows.flatMap((l) => /^\| `([a-z_]+)` \|/.exec(l)?.[1] ?? []);
const closeCodes = rows.flatMap((l) => /^\| (\d{4}) \|/.exec(l)?.[1] ?? []).map(Number);

it('finds both tables of docs/protocol.md', () => {
  expect(errorCodes).toContain('upstream_lost');
  expect(closeCodes).toContain(4002);
  expect(errorCodes.length + closeCodes.length).toBe(rows.length);
});

it.each(errorCodes)('error %s has words of its own', (code) => {
  const text = errorText(code, 'detail');
  expect(text).not.toMatch(/^The gateway reported an error/);
  expect(text.length).toBeGreaterThan(20);
});

it.each(closeCodes)('close %i has words of its own', (code) => {
  const text = closeText(code, '', { opened: true });
  expect(text).not.toContain(`The connection closed (${code})`);
  expect(text).toMatch(/Press Connect to start again\.$/);
});

it('1006 says whether the connection dropped or never opened, and what happens next', () => {
  expect(closeText(1006, '', { opened: true, retryInMs: 2400 })).toBe('The connection to the gateway dropped. Trying again in 3 s.');
  expect(closeText(1006, '', { opened: false })).toMatch(/^The connection was refused before it opened .* Press Connect to start again\.$/);
  expect(closeText(1013, '', { opened: true, gaveUp: true })).toBe('The gateway is at capacity. The page has stopped trying by itself; press Connect to start again.');
  expect(closeText(1000, 'idle', { opened: true })).toBe('The session was closed after being idle. Press Connect to start again.');
});
