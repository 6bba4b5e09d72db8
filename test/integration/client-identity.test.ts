import pino from 'pino';
import { SignJWT } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { gatewayForTest, poll, Resources, upgradeStatus, type TestGateway } from '../support/gateway.ts';

// Who a client is, through a real upgrade: static tokens that name their user, and JWTs from the app's
// backend. The user is in the session's log lines; the token never is.

const res = new Resources();
afterEach(() => res.dispose());

const SECRET = 'a-secret-of-at-least-thirty-two-chars!';
const AUTH = { CLIENT_TOKENS: 'alice:alice-token', CLIENT_JWT_SECRET: SECRET, CLIENT_JWT_AUDIENCE: 'voicegw' };

function jwt(sub: string, expiresAt = Math.floor(Date.now() / 1000) + 600): Promise<string> {
  return new SignJWT({ sub, aud: 'voicegw' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(expiresAt).sign(new TextEncoder().encode(SECRET));
}

async function loggedGateway(): Promise<{ gw: TestGateway; lines: string[] }> {
  const lines: string[] = [];
  const gw = await gatewayForTest(AUTH, pino({ level: 'info' }, { write: (line: string) => void lines.push(line) }));
  res.add(() => gw.stop());
  return { gw, lines };
}

describe('client identity', () => {
  it("admits a JWT's sub and a user:token's user, and names them in their sessions' log lines, never the tokens", async () => {
    const { gw, lines } = await loggedGateway();
    const token = await jwt('carol');
    const carol = await res.client(`${gw.url}?token=${token}`);
    const alice = await res.client(gw.url, { headers: { Authorization: 'Bearer alice-token' } });
    await carol.hello();
    await alice.hello();
    carol.close();
    alice.close();
    const ended = await poll(
      async () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'session ended'),
      (e) => e.length === 2,
      5000,
    );

    expect(ended.map((l) => l.user).sort()).toEqual(['alice', 'carol']);
    expect(lines.join('\n')).not.toContain(token);
    expect(lines.join('\n')).not.toContain('alice-token');
  });

  it('refuses an expired JWT, or one signed with another secret, with HTTP 401', async () => {
    const { gw } = await loggedGateway();
    const expired = await jwt('carol', Math.floor(Date.now() / 1000) - 120);
    const forged = await new SignJWT({ sub: 'carol', aud: 'voicegw' })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode('another-secret-of-thirty-two-chars!!'));

    expect(await upgradeStatus(`${gw.url}?token=${expired}`)).toBe(401);
    expect(await upgradeStatus(gw.url, { headers: { Authorization: `Bearer ${forged}` } })).toBe(401);
    expect(await upgradeStatus(`${gw.url}?token=${await jwt('carol')}`)).toBe(101);
  });
});
