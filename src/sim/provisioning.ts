// xiaozhi provisioning as the real servers do it (../../shared/XIAOZHI-OTA.md): the OTA answer that hands a
// device its WebSocket URL and token, activation and binding in a console, and the token check at the
// handshake. Three servers are played: S single-module (no binding), S manager-api (binding, tokens always)
// and the public cloud (binding, an mqtt section the gateway must ignore). The decisions are pure
// functions; Provisioning keeps the devices and routes the HTTP requests to them.
import { randomBytes, randomInt } from 'node:crypto';
import { checkHandshake, handshakeIdentity, signToken, TOKEN_TTL_SECONDS } from './tokens.ts';

export type ProvisioningMode = 'single-module' | 'manager' | 'cloud';
export type OtaFault = 'http_error' | 'malformed' | 'timeout' | 'mqtt_only' | 'error_body' | 'refuse_token';

export interface ProvisioningOptions {
  mode: ProvisioningMode;
  /** single-module (and cloud): sign tokens with this key and check them at the WebSocket handshake; absent = auth off, token "" (single-module). */
  authKey?: string;
  /** How old a token may be at the handshake (default 30 days, like S). */
  tokenTtlSeconds?: number;
}

/** An HTTP request as received; `body` is parsed JSON, or the raw string when it is not JSON. */
export interface HttpRequest {
  path: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
}

/** A JSON body unless `body` is a string. */
export interface HttpReply {
  status: number;
  body: string | object;
}

/** 'hold' never answers (the `timeout` fault). */
export type HttpAnswer = HttpReply | 'hold';

export interface DeviceRecord {
  deviceId: string;
  clientId: string;
  bound: boolean;
  /** While unbound: the code a user enters in the console. */
  code: string | undefined;
}

/** S manager-api's check of the Device-Id header (OTAController). */
const DEVICE_ID = /^([0-9A-Za-z]{2}[:-]){5}([0-9A-Za-z]{2})$/;
const METHOD_NOT_ALLOWED: HttpReply = { status: 405, body: '' };
/** UTC+8: S's default, and what the public cloud answers. */
const TIMEZONE_OFFSET_MINUTES = 480;
/** What the public cloud was seen handing out (78/xiaozhi-esp32#1785) when it checks no token. */
const CLOUD_TOKEN = 'test-token';

/** S single-module's answer to a request without both identity headers; S manager-api's to a bad Device-Id. */
export function otaRefusal(mode: ProvisioningMode, headers: Record<string, string>): HttpReply | undefined {
  const deviceId = headers['device-id'];
  if (mode === 'single-module' && (deviceId === undefined || headers['client-id'] === undefined)) {
    return { status: 200, body: { success: false, message: 'request error.' } };
  }
  if (deviceId === undefined || !DEVICE_ID.test(deviceId)) return { status: 200, body: { error: 'Invalid device ID' } };
  return undefined;
}

export interface OtaContext {
  mode: ProvisioningMode;
  fault: OtaFault | undefined;
  nowMs: number;
  wsUrl: string;
  consoleUrl: string;
  token: string;
  device: DeviceRecord;
  /** What the device reported as `application.version`. */
  version: unknown;
}

/** The answer to a valid OTA POST. */
export function otaAnswer(c: OtaContext): HttpReply {
  if (c.fault === 'error_body') return { status: 200, body: { error: 'Invalid device ID' } };
  const { device } = c;
  const body: Record<string, unknown> = {
    server_time: { timestamp: c.nowMs, timezone_offset: TIMEZONE_OFFSET_MINUTES },
    firmware: { version: typeof c.version === 'string' ? c.version : '1.0.0', url: '' },
  };
  if (c.fault !== 'mqtt_only') body.websocket = { url: c.wsUrl, token: c.token };
  if (c.mode === 'cloud' || c.fault === 'mqtt_only') {
    body.mqtt = {
      // Nothing answers there: a gateway that wrongly followed this section fails at once.
      endpoint: 'mqtt.invalid',
      client_id: `GID_test@@@${device.deviceId.replace(/[:-]/g, '_')}@@@${device.clientId}`,
      username: 'sim',
      password: 'sim',
      publish_topic: 'device-server',
      subscribe_topic: 'null',
    };
  }
  if (device.code !== undefined) {
    body.activation = {
      code: device.code,
      message: `Bind this device: POST ${c.consoleUrl}bind/${device.code}`,
      // manager-api's challenge is the Device-Id; the cloud's value was never seen, so it is anything unpredictable.
      challenge: c.mode === 'manager' ? device.deviceId : randomBytes(16).toString('hex'),
      ...(c.mode === 'cloud' ? { timeout_ms: 30_000 } : {}),
    };
  }
  return { status: 200, body };
}

/** A GET of the OTA URL: S single-module says in plain text where devices connect, the cloud answers JSON. */
export function statusAnswer(mode: ProvisioningMode, wsUrl: string): HttpReply {
  if (mode === 'single-module') return { status: 200, body: `The OTA interface is working; the websocket address sent to devices is ${wsUrl}` };
  return { status: 200, body: { status: 'ok', message: 'Server is working normally' } };
}

/** S manager-api ignores the body: 202 until the device is bound, then 200. */
export function activateAnswer(device: DeviceRecord | undefined): HttpReply {
  return device?.bound === true ? { status: 200, body: 'success' } : { status: 202, body: '' };
}

/** What S speaks instead of a reply to a device that must be bound first (receiveAudioHandle check_bind_device). */
export function bindPromptText(code: string | undefined): string {
  if (code === undefined) return 'No version information was found for this device. Please configure the OTA address correctly.';
  return `Please log in to the control panel and enter ${code} to bind this device.`;
}

const MAX_KEPT_REQUESTS = 10_000;

export class Provisioning {
  fault: OtaFault | undefined;
  /** Every OTA and /activate request, in order. */
  readonly requests: HttpRequest[] = [];
  private readonly mode: ProvisioningMode;
  private key: string | undefined;
  private readonly ttlSeconds: number;
  private readonly devices = new Map<string, DeviceRecord>();

  constructor(
    options: ProvisioningOptions | undefined,
    private readonly urls: { ws: string; console: string },
  ) {
    this.mode = options?.mode ?? 'single-module';
    // manager-api seeds server.auth.enabled = true: its tokens are always signed and checked.
    this.key = options?.authKey ?? (this.mode === 'manager' ? randomKey() : undefined);
    this.ttlSeconds = options?.tokenTtlSeconds ?? TOKEN_TTL_SECONDS;
  }

  /** Turns token checks on where they were off. */
  rotateKey(): void {
    this.key = randomKey();
  }

  /** A request under /xiaozhi/ota/ or /console/; undefined for any other path. */
  answer(req: HttpRequest, nowMs: number): HttpAnswer | undefined {
    const path = req.path.replace(/\/+$/, '');
    if (path === '/console' || path.startsWith('/console/')) return this.console(path, req.method);
    if (path !== '/xiaozhi/ota' && path !== '/xiaozhi/ota/activate') return undefined;
    // A long-running simulator keeps the latest only.
    if (this.requests.push(req) > MAX_KEPT_REQUESTS) this.requests.shift();
    if (this.fault === 'timeout') return 'hold';
    if (this.fault === 'http_error') return { status: 500, body: 'Internal Server Error' };
    if (path === '/xiaozhi/ota/activate') {
      // S single-module has no such route.
      if (this.mode === 'single-module') return { status: 404, body: { error: 'not found' } };
      return req.method === 'POST' ? activateAnswer(this.devices.get(req.headers['device-id'] ?? '')) : METHOD_NOT_ALLOWED;
    }
    if (req.method === 'GET') return statusAnswer(this.mode, this.urls.ws);
    return req.method === 'POST' ? this.ota(req, nowMs) : METHOD_NOT_ALLOWED;
  }

  /** Why a handshake is refused, or undefined to let it through. */
  refusal(url: string, headers: Record<string, string>, nowMs: number): string | undefined {
    if (this.fault === 'refuse_token') return 'every token refused (refuse_token fault)';
    if (this.key === undefined) return undefined;
    const check = checkHandshake(this.key, handshakeIdentity(url, headers), Math.floor(nowMs / 1000), this.ttlSeconds);
    return check.ok ? undefined : check.reason;
  }

  /** What to speak instead of a reply, while this device must be bound. */
  bindPrompt(deviceId: string | undefined): string | undefined {
    if (this.mode === 'single-module') return undefined;
    const device = this.devices.get(deviceId ?? '');
    return device?.bound === true ? undefined : bindPromptText(device?.code);
  }

  bind(code: string): string | undefined {
    const device = [...this.devices.values()].find((d) => d.code === code);
    if (device === undefined) return undefined;
    device.bound = true;
    device.code = undefined;
    return device.deviceId;
  }

  codeOf(deviceId: string): string | undefined {
    return this.devices.get(deviceId)?.code;
  }

  private ota(req: HttpRequest, nowMs: number): HttpReply {
    // A proxy's error page, as a misconfigured deployment answers.
    if (this.fault === 'malformed') return { status: 200, body: '<html><body><h1>502 Bad Gateway</h1></body></html>' };
    const refusal = otaRefusal(this.mode, req.headers);
    if (refusal !== undefined) return refusal;
    const deviceId = req.headers['device-id']!;
    const device = this.see(deviceId, req.headers['client-id'] ?? deviceId);
    const { mode, fault, urls } = this;
    const version = (req.body as { application?: { version?: unknown } } | null)?.application?.version;
    return otaAnswer({ mode, fault, nowMs, wsUrl: urls.ws, consoleUrl: urls.console, token: this.token(device, nowMs), device, version });
  }

  private console(path: string, method: string): HttpReply {
    const code = /^\/console\/bind\/([^/]+)$/.exec(path)?.[1];
    if (code !== undefined && method === 'POST') {
      const deviceId = this.bind(code);
      return deviceId === undefined ? { status: 404, body: { error: `no device waits for code ${code}` } } : { status: 200, body: { deviceId } };
    }
    if (path === '/console/devices' && method === 'GET') {
      return { status: 200, body: [...this.devices.values()].map((d) => ({ ...d, code: d.code ?? null })) };
    }
    return { status: 404, body: { error: 'not found' } };
  }

  /** The device's record, made at its first OTA request; a device that must be bound keeps one code until it is. */
  private see(deviceId: string, clientId: string): DeviceRecord {
    const known = this.devices.get(deviceId);
    const device = known ?? { deviceId, clientId, bound: this.mode === 'single-module', code: undefined };
    device.clientId = clientId;
    if (!device.bound && device.code === undefined) device.code = this.newCode();
    if (known === undefined) this.devices.set(deviceId, device);
    return device;
  }

  private newCode(): string {
    const pending = new Set([...this.devices.values()].map((d) => d.code));
    let code: string;
    do code = String(randomInt(1_000_000)).padStart(6, '0');
    while (pending.has(code));
    return code;
  }

  private token(device: DeviceRecord, nowMs: number): string {
    if (this.key !== undefined) return signToken(this.key, device.clientId, device.deviceId, Math.floor(nowMs / 1000));
    return this.mode === 'cloud' ? CLOUD_TOKEN : '';
  }
}

function randomKey(): string {
  return randomBytes(32).toString('hex');
}
