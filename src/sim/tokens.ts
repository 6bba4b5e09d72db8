// The WebSocket token of xiaozhi-esp32-server (../../shared/XIAOZHI-OTA.md §5, S core/auth.py AuthManager):
// issued in the OTA answer, checked only at the handshake, where it must match the Client-Id and Device-Id.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** S's default `expire_seconds`: 30 days. */
export const TOKEN_TTL_SECONDS = 30 * 24 * 3600;

export type TokenCheck = { ok: true } | { ok: false; reason: string };

/** `base64url_nopad(HMAC-SHA256(key, "clientId|deviceId|ts")) + "." + ts`, ts in seconds. */
export function signToken(key: string, clientId: string, deviceId: string, ts: number): string {
  return `${signature(key, clientId, deviceId, ts)}.${ts}`;
}

/** As S verifies: the signature over the handshake's Client-Id and Device-Id, and an age of at most `ttlSeconds`. */
export function verifyToken(key: string, token: string, clientId: string, deviceId: string, nowSeconds: number, ttlSeconds: number): TokenCheck {
  const match = /^([A-Za-z0-9_-]+)\.(\d{1,12})$/.exec(token);
  if (match === null) return { ok: false, reason: 'malformed token' };
  const ts = Number(match[2]);
  // S lets a token from the future pass: only its age counts.
  if (nowSeconds - ts > ttlSeconds) return { ok: false, reason: 'token expired' };
  const given = Buffer.from(match[1]!);
  const expected = Buffer.from(signature(key, clientId, deviceId, ts));
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad signature' };
  return { ok: true };
}

export interface HandshakeIdentity {
  deviceId: string | undefined;
  clientId: string | undefined;
  authorization: string | undefined;
}

/** What the handshake carries; S takes each from the query when the header is missing. */
export function handshakeIdentity(url: string, headers: Record<string, string>): HandshakeIdentity {
  const query = new URLSearchParams(url.split('?')[1] ?? '');
  const pick = (name: string): string | undefined => headers[name] ?? query.get(name) ?? undefined;
  return { deviceId: pick('device-id'), clientId: pick('client-id'), authorization: pick('authorization') };
}

/** S's check of `Authorization: Bearer <token>` against the handshake's Client-Id and Device-Id. */
export function checkHandshake(key: string, identity: HandshakeIdentity, nowSeconds: number, ttlSeconds: number): TokenCheck {
  const { deviceId, clientId, authorization } = identity;
  if (authorization?.startsWith('Bearer ') !== true) return { ok: false, reason: 'no Bearer token' };
  if (deviceId === undefined || clientId === undefined) return { ok: false, reason: 'no Device-Id or Client-Id' };
  return verifyToken(key, authorization.slice('Bearer '.length), clientId, deviceId, nowSeconds, ttlSeconds);
}

function signature(key: string, clientId: string, deviceId: string, ts: number): string {
  return createHmac('sha256', key).update(`${clientId}|${deviceId}|${ts}`).digest('base64url');
}
