import { createHmac } from 'node:crypto';

// The xiaozhi OTA exchange (../../shared/XIAOZHI-OTA.md), from the device's side: what it sends, and
// what it takes from the answer. Like the other parsers here, parseOtaAnswer never throws: a server's
// answer is input like any other.

/** What a device needs to know of its identity to ask. */
export interface OtaDevice {
  deviceId: string;
  clientId: string;
  serialNumber: string;
  hmacKey: string;
}

export interface OtaAnswer {
  /**
   * Where and how to connect; absent when the server offers only MQTT (which the gateway does not speak).
   * Its `version` is not taken: the framing is UPSTREAM_PROTOCOL_VERSION's, which the operator chose for the server.
   */
  websocket: { url: string; token: string | undefined } | undefined;
  /** While present, the server wants the device bound to an account before it will converse. */
  activation: { code: string | undefined; message: string | undefined; challenge: string | undefined } | undefined;
}

export type OtaParse = { ok: true; answer: OtaAnswer } | { ok: false; detail: string };

/** The firmware's board and version, as py-xiaozhi (which works against the public cloud) reports them. */
const BOARD = 'bread-compact-wifi';
const APP = 'voicegw';

export function otaHeaders(device: OtaDevice, activationVersion: 1 | 2, version: string): Record<string, string> {
  const headers: Record<string, string> = {
    'Activation-Version': String(activationVersion),
    'Device-Id': device.deviceId,
    'Client-Id': device.clientId,
    'User-Agent': `${BOARD}/${APP}-${version}`,
    'Accept-Language': 'en-US',
    'Content-Type': 'application/json',
  };
  if (activationVersion === 2) headers['Serial-Number'] = device.serialNumber;
  return headers;
}

/**
 * py-xiaozhi's minimal body, which the public cloud accepts. S manager-api reads `application.version`
 * of an unbound device without a null check, so it is always sent. py-xiaozhi puts its HMAC key in
 * `elf_sha256`; whether the cloud takes the key from there is unconfirmed, but it is what works.
 */
export function otaBody(device: OtaDevice, version: string): object {
  return {
    application: { name: APP, version, elf_sha256: device.hmacKey },
    board: { type: BOARD, name: APP, mac: device.deviceId },
    mac_address: device.deviceId,
    uuid: device.clientId,
  };
}

/** Version 1 is the firmware's `{}` for boards without a serial; version 2 proves the key over the challenge. */
export function activationBody(device: OtaDevice, challenge: string, activationVersion: 1 | 2): object {
  if (activationVersion === 1) return {};
  return {
    algorithm: 'hmac-sha256',
    serial_number: device.serialNumber,
    challenge,
    // As py-xiaozhi: the 64-hex key is used as UTF-8 text, not decoded.
    hmac: createHmac('sha256', device.hmacKey).update(challenge).digest('hex'),
  };
}

/** `<ota>activate`, with the slash the firmware adds when the OTA URL lacks it. */
export function activateUrl(otaUrl: string): string {
  return `${otaUrl.endsWith('/') ? otaUrl : `${otaUrl}/`}activate`;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export function parseOtaAnswer(body: string): OtaParse {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { ok: false, detail: `the OTA answer is not JSON: ${body.slice(0, 80)}` };
  }
  if (!isObject(json)) return { ok: false, detail: 'the OTA answer is not a JSON object' };
  // S manager-api answers errors as {"error": …}, S single-module as {"success": false, "message": …}, both with 200.
  if (json.error !== undefined) return { ok: false, detail: `the OTA server refused: ${String(json.error).slice(0, 120)}` };
  if (json.success === false) return { ok: false, detail: `the OTA server refused: ${String(json.message ?? 'no reason given').slice(0, 120)}` };

  let websocket: OtaAnswer['websocket'];
  if (json.websocket !== undefined) {
    const ws = json.websocket;
    const url = isObject(ws) ? text(ws.url) : undefined;
    if (url === undefined || !/^wss?:\/\//i.test(url)) return { ok: false, detail: 'the OTA answer has a websocket section without a ws:// or wss:// url' };
    // The firmware leaves the Authorization header out for an empty token.
    const token = isObject(ws) ? text(ws.token) : undefined;
    websocket = { url, token: token === '' ? undefined : token };
  }
  // The firmware's rule: activation goes on while the section carries a code or a challenge.
  const a = json.activation;
  const activation = isObject(a) && (typeof a.code === 'string' || typeof a.challenge === 'string') ? { code: text(a.code), message: text(a.message), challenge: text(a.challenge) } : undefined;
  // `mqtt` is never taken: the firmware prefers it when present, but the gateway speaks WebSocket only.
  return { ok: true, answer: { websocket, activation } };
}
