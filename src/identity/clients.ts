import { createHash, createPublicKey, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { errors, jwtVerify } from 'jose';
import type { ClientAuth } from '../config.ts';

/** Who a client is: a user, or nobody in particular (each of its sessions a device of its own). */
export interface ClientIdentity {
  readonly user: string | undefined;
}

const ANONYMOUS: ClientIdentity = { user: undefined };
/** RFC 7519: a JWS compact serialisation is three base64url parts. */
const JWT = /^[\w-]+\.[\w-]+\.[\w-]+$/;
/** Clocks of the app's backend and the gateway disagree a little. */
const CLOCK_TOLERANCE_S = 30;

/**
 * Who presented this token, or undefined when it admits nobody. Static tokens answer at once; a JWT is
 * verified (signature, expiry, audience, issuer when set; `sub` is the user), which may take a turn.
 */
export type Authenticate = (presented: string | undefined) => ClientIdentity | undefined | Promise<ClientIdentity | undefined>;

/**
 * The gateway's client check, from CLIENT_TOKENS and CLIENT_JWT_*. Without either, everyone is admitted,
 * anonymously. Static tokens are compared as SHA-256 digests in constant time, so that timing says nothing
 * of a token's prefix. A JWT key that cannot be read fails here, at start, not at the first client.
 */
export function clientAuthenticator(auth: ClientAuth): Authenticate {
  if (auth.tokens.length === 0 && auth.jwt === undefined) return () => ANONYMOUS;
  const digest = (t: string) => createHash('sha256').update(t).digest();
  const known = auth.tokens.map((t) => ({ digest: digest(t.token), identity: { user: t.user } }));
  const verify = auth.jwt === undefined ? undefined : jwtVerifier(auth.jwt);
  return (presented) => {
    if (presented === undefined || presented === '') return undefined;
    const d = digest(presented);
    let found: ClientIdentity | undefined;
    // Every entry is compared, found or not.
    for (const k of known) if (timingSafeEqual(k.digest, d)) found = k.identity;
    if (found !== undefined || verify === undefined || !JWT.test(presented)) return found;
    return verify(presented);
  };
}

function jwtVerifier(jwt: NonNullable<ClientAuth['jwt']>): (token: string) => Promise<ClientIdentity | undefined> {
  const key: KeyObject = jwt.secret !== undefined ? createSecretKey(Buffer.from(jwt.secret)) : readPublicKey(jwt.publicKeyFile!);
  const algorithms = jwt.secret !== undefined ? ['HS256'] : key.asymmetricKeyType === 'ec' ? ['ES256', 'ES384', 'ES512'] : ['RS256', 'PS256'];
  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, key, { algorithms, audience: jwt.audience, issuer: jwt.issuer, clockTolerance: CLOCK_TOLERANCE_S, requiredClaims: ['exp', 'sub'] });
      return typeof payload.sub === 'string' && payload.sub !== '' ? { user: payload.sub } : undefined;
    } catch (error) {
      if (error instanceof errors.JOSEError) return undefined;
      throw error;
    }
  };
}

function readPublicKey(file: string): KeyObject {
  try {
    return createPublicKey(readFileSync(file));
  } catch (error) {
    throw new Error(`CLIENT_JWT_PUBLIC_KEY_FILE ${file}: not a readable PEM public key (${error instanceof Error ? error.message : String(error)})`);
  }
}
