import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { clientAuthenticator } from '../../src/identity/clients.ts';

const SECRET = 'a-secret-of-at-least-thirty-two-chars!';
const NOW = () => Math.floor(Date.now() / 1000);

const authenticator = (env: Record<string, string>) => clientAuthenticator(loadConfig(env).clients);

function hs256(claims: Record<string, unknown>, secret = SECRET, exp: number = NOW() + 600): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(exp).sign(new TextEncoder().encode(secret));
}

describe('client identity', () => {
  it('admits everyone, naming nobody, when no token and no JWT key is configured', () => {
    expect(authenticator({})(undefined)).toEqual({ user: undefined });
  });

  it('names the user of a user:token entry, admits a bare token without a user, and refuses anything else', () => {
    const auth = authenticator({ CLIENT_TOKENS: 'alice:tok-a,bob:tok-b,plain' });
    expect(auth('tok-a')).toEqual({ user: 'alice' });
    expect(auth('tok-b')).toEqual({ user: 'bob' });
    expect(auth('plain')).toEqual({ user: undefined });
    expect(auth('tok-c')).toBeUndefined();
    expect(auth('')).toBeUndefined();
    expect(auth(undefined)).toBeUndefined();
  });

  describe('with a JWT secret (HS256)', () => {
    const auth = authenticator({ CLIENT_JWT_SECRET: SECRET, CLIENT_JWT_AUDIENCE: 'voicegw', CLIENT_JWT_ISSUER: 'https://app.example' });
    const claims = { sub: 'carol', aud: 'voicegw', iss: 'https://app.example' };

    it('takes the sub of a valid token as the user', async () => {
      expect(await auth(await hs256(claims))).toEqual({ user: 'carol' });
    });

    it.each([
      ['expired', () => hs256(claims, SECRET, NOW() - 120)],
      ['for another audience', () => hs256({ ...claims, aud: 'other' })],
      ['from another issuer', () => hs256({ ...claims, iss: 'https://evil.example' })],
      ['signed with another secret', () => hs256(claims, 'another-secret-of-thirty-two-chars!!')],
      ['without a sub', () => hs256({ aud: 'voicegw', iss: 'https://app.example' })],
      ['unsigned (alg none)', async () => `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ ...claims, exp: NOW() + 600 })).toString('base64url')}.x`],
      ['not a JWT at all', async () => 'abc.def.ghi'],
    ])('refuses a token %s', async (_, make) => {
      expect(await auth(await make())).toBeUndefined();
    });

    it('still admits the static tokens beside the JWTs', async () => {
      const both = authenticator({ CLIENT_TOKENS: 'dave:static', CLIENT_JWT_SECRET: SECRET, CLIENT_JWT_AUDIENCE: 'voicegw' });
      expect(both('static')).toEqual({ user: 'dave' });
      expect(await both(await hs256({ sub: 'erin', aud: 'voicegw' }))).toEqual({ user: 'erin' });
    });
  });

  it('verifies RS256 tokens with a public key file', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const file = join(mkdtempSync(join(tmpdir(), 'voicegw-jwt-')), 'public.pem');
    writeFileSync(file, publicKey.export({ type: 'spki', format: 'pem' }));
    const auth = authenticator({ CLIENT_JWT_PUBLIC_KEY_FILE: file, CLIENT_JWT_AUDIENCE: 'voicegw' });
    const token = await new SignJWT({ sub: 'frank', aud: 'voicegw' }).setProtectedHeader({ alg: 'RS256' }).setExpirationTime(NOW() + 600).sign(privateKey);
    expect(await auth(token)).toEqual({ user: 'frank' });
    // The same claims signed with a secret are not the key's.
    expect(await auth(await hs256({ sub: 'frank', aud: 'voicegw' }))).toBeUndefined();
  });

  it('fails at start, naming the file, when the public key cannot be read', () => {
    expect(() => authenticator({ CLIENT_JWT_PUBLIC_KEY_FILE: '/nonexistent/key.pem', CLIENT_JWT_AUDIENCE: 'voicegw' })).toThrow(/CLIENT_JWT_PUBLIC_KEY_FILE \/nonexistent\/key.pem/);
  });
});
