import { describe, expect, it } from 'vitest';
import {
  activateAnswer,
  bindPromptText,
  otaAnswer,
  otaRefusal,
  Provisioning,
  type DeviceRecord,
  type HttpRequest,
  type OtaContext,
} from '../../src/sim/provisioning.ts';
import { checkHandshake, handshakeIdentity, signToken, TOKEN_TTL_SECONDS, verifyToken } from '../../src/sim/tokens.ts';

const KEY = 'sim-key';
const CLIENT = '4a1f0c2e-9a53-4b7e-8d3e-2f6c1a0b9d77';
const DEVICE = 'aa:bb:cc:dd:ee:ff';
const TS = 1_767_225_600;
const URLS = { ws: 'ws://127.0.0.1:8000/xiaozhi/v1/', console: 'http://127.0.0.1:8000/console/' };

describe('the simulator token', () => {
  it('is exactly what S AuthManager issues for the same key, ids and time', () => {
    // From python: base64.urlsafe_b64encode(hmac.new(key, f"{client}|{device}|{ts}", sha256).digest()).rstrip("=")
    expect(signToken(KEY, CLIENT, DEVICE, TS)).toBe('UMBNwPPUMjZZrVFNHHen7jLpHgCb5QEUzeqQgtZOJXA.1767225600');
  });

  it('verifies for the key, Client-Id and Device-Id it was signed for, within its age', () => {
    const token = signToken(KEY, CLIENT, DEVICE, TS);
    expect(verifyToken(KEY, token, CLIENT, DEVICE, TS + TOKEN_TTL_SECONDS, TOKEN_TTL_SECONDS)).toEqual({ ok: true });
  });

  it('is refused under another key, for another device or another client', () => {
    const token = signToken(KEY, CLIENT, DEVICE, TS);
    expect(verifyToken('other-key', token, CLIENT, DEVICE, TS, 60)).toEqual({ ok: false, reason: 'bad signature' });
    expect(verifyToken(KEY, token, CLIENT, 'aa:bb:cc:dd:ee:00', TS, 60)).toEqual({ ok: false, reason: 'bad signature' });
    expect(verifyToken(KEY, token, 'another-client', DEVICE, TS, 60)).toEqual({ ok: false, reason: 'bad signature' });
  });

  it('is refused once older than the time to live, and passes when from the future as in S', () => {
    const token = signToken(KEY, CLIENT, DEVICE, TS);
    expect(verifyToken(KEY, token, CLIENT, DEVICE, TS + 61, 60)).toEqual({ ok: false, reason: 'token expired' });
    expect(verifyToken(KEY, token, CLIENT, DEVICE, TS - 3600, 60)).toEqual({ ok: true });
  });

  it('is refused when malformed', () => {
    const token = signToken(KEY, CLIENT, DEVICE, TS);
    for (const bad of ['', 'test-token', token.split('.')[0]!, `${token}.1`, `${token.split('.')[0]}.soon`, `x.${TS}`, `${token.slice(1)}`]) {
      expect(verifyToken(KEY, bad, CLIENT, DEVICE, TS, 60).ok, bad).toBe(false);
    }
  });
});

describe('the handshake check', () => {
  const token = signToken(KEY, CLIENT, DEVICE, TS);
  const headers = { 'device-id': DEVICE, 'client-id': CLIENT, authorization: `Bearer ${token}` };

  it('takes the Bearer token and the ids from the headers, or from the query as S does', () => {
    expect(checkHandshake(KEY, handshakeIdentity('/xiaozhi/v1/', headers), TS, 60)).toEqual({ ok: true });
    const query = new URLSearchParams({ 'device-id': DEVICE, 'client-id': CLIENT, authorization: `Bearer ${token}` });
    expect(checkHandshake(KEY, handshakeIdentity(`/xiaozhi/v1/?${query}`, {}), TS, 60)).toEqual({ ok: true });
  });

  it('refuses a token without "Bearer ", and a handshake without its ids', () => {
    expect(checkHandshake(KEY, handshakeIdentity('/', { ...headers, authorization: token }), TS, 60)).toEqual({ ok: false, reason: 'no Bearer token' });
    const anonymous = handshakeIdentity('/', { authorization: `Bearer ${token}` });
    expect(checkHandshake(KEY, anonymous, TS, 60)).toEqual({ ok: false, reason: 'no Device-Id or Client-Id' });
  });
});

describe('the OTA decision', () => {
  const unbound: DeviceRecord = { deviceId: DEVICE, clientId: CLIENT, bound: false, code: '123456' };
  const bound: DeviceRecord = { deviceId: DEVICE, clientId: CLIENT, bound: true, code: undefined };
  const context = (over: Partial<OtaContext>): OtaContext => ({
    mode: 'single-module',
    fault: undefined,
    nowMs: TS * 1000,
    wsUrl: URLS.ws,
    consoleUrl: URLS.console,
    token: 'the-token',
    device: bound,
    version: '2.1.1',
    ...over,
  });
  const bodyOf = (c: OtaContext): Record<string, any> => {
    const answer = otaAnswer(c);
    if (typeof answer.body === 'string') throw new Error('not a JSON answer');
    expect(answer.status).toBe(200);
    return answer.body as Record<string, any>;
  };

  it('refuses a request without both identity headers in single-module mode, and a bad Device-Id in every mode', () => {
    expect(otaRefusal('single-module', { 'device-id': DEVICE })).toEqual({ status: 200, body: { success: false, message: 'request error.' } });
    expect(otaRefusal('single-module', { 'client-id': CLIENT })).toEqual({ status: 200, body: { success: false, message: 'request error.' } });
    expect(otaRefusal('manager', {})).toEqual({ status: 200, body: { error: 'Invalid device ID' } });
    expect(otaRefusal('cloud', { 'device-id': 'aa:bb:cc:dd:ee' })).toEqual({ status: 200, body: { error: 'Invalid device ID' } });
    expect(otaRefusal('single-module', { 'device-id': 'not-a-mac', 'client-id': CLIENT })).toEqual({ status: 200, body: { error: 'Invalid device ID' } });
    expect(otaRefusal('manager', { 'device-id': 'AA-BB-CC-DD-EE-FF' })).toBeUndefined();
  });

  it('answers a bound device with the time, its own version and the WebSocket URL and token, and nothing else', () => {
    expect(bodyOf(context({}))).toEqual({
      server_time: { timestamp: TS * 1000, timezone_offset: 480 },
      firmware: { version: '2.1.1', url: '' },
      websocket: { url: URLS.ws, token: 'the-token' },
    });
    expect(bodyOf(context({ version: undefined })).firmware).toEqual({ version: '1.0.0', url: '' });
  });

  it('tells an unbound device its code, where to bind it and, in manager mode, its Device-Id as challenge', () => {
    const body = bodyOf(context({ mode: 'manager', device: unbound }));
    expect(body.activation).toEqual({ code: '123456', message: `Bind this device: POST ${URLS.console}bind/123456`, challenge: DEVICE });
    expect(body.websocket).toEqual({ url: URLS.ws, token: 'the-token' });
    expect(body.mqtt).toBeUndefined();
  });

  it('adds an mqtt section in cloud mode, and a random challenge with timeout_ms', () => {
    const body = bodyOf(context({ mode: 'cloud', device: unbound }));
    expect(body.mqtt).toMatchObject({ client_id: `GID_test@@@aa_bb_cc_dd_ee_ff@@@${CLIENT}`, publish_topic: 'device-server' });
    expect(body.websocket).toEqual({ url: URLS.ws, token: 'the-token' });
    expect(body.activation).toMatchObject({ code: '123456', timeout_ms: 30_000 });
    expect(body.activation.challenge).toMatch(/^[0-9a-f]{32}$/);
  });

  it('answers the mqtt_only fault without a websocket section and the error_body fault with an error', () => {
    const body = bodyOf(context({ fault: 'mqtt_only' }));
    expect(body.websocket).toBeUndefined();
    expect(body.mqtt).toBeDefined();
    expect(otaAnswer(context({ fault: 'error_body' }))).toEqual({ status: 200, body: { error: 'Invalid device ID' } });
  });

  it('answers /activate with 202 until the device is bound, then 200', () => {
    expect(activateAnswer(undefined)).toEqual({ status: 202, body: '' });
    expect(activateAnswer(unbound)).toEqual({ status: 202, body: '' });
    expect(activateAnswer(bound)).toEqual({ status: 200, body: 'success' });
  });

  it('prompts with the code, or for the OTA address when the device has none', () => {
    expect(bindPromptText('042017')).toBe('Please log in to the control panel and enter 042017 to bind this device.');
    expect(bindPromptText(undefined)).toMatch(/configure the OTA address/);
  });
});

describe('the provisioning state', () => {
  const ota = (deviceId: string, clientId = CLIENT): HttpRequest => ({
    path: '/xiaozhi/ota/',
    method: 'POST',
    headers: { 'device-id': deviceId, 'client-id': clientId },
    body: { application: { version: '2.1.1' } },
  });
  const codeIn = (p: Provisioning, req: HttpRequest): unknown => {
    const answer = p.answer(req, TS * 1000);
    if (answer === undefined || answer === 'hold') throw new Error('no answer');
    return (answer.body as { activation?: { code: string } }).activation?.code;
  };

  it('keeps one code per unbound device, distinct between devices, until the device is bound', () => {
    const p = new Provisioning({ mode: 'manager' }, URLS);
    const first = codeIn(p, ota(DEVICE));
    expect(first).toMatch(/^\d{6}$/);
    expect(codeIn(p, ota(DEVICE))).toBe(first);
    const other = codeIn(p, ota('aa:bb:cc:dd:ee:00'));
    expect(other).not.toBe(first);
    expect(p.codeOf(DEVICE)).toBe(first);

    expect(p.bind(first as string)).toBe(DEVICE);
    expect(p.codeOf(DEVICE)).toBeUndefined();
    expect(codeIn(p, ota(DEVICE))).toBeUndefined();
    expect(p.bind(first as string)).toBeUndefined();
    expect(p.bindPrompt(DEVICE)).toBeUndefined();
    expect(p.bindPrompt('aa:bb:cc:dd:ee:00')).toBe(bindPromptText(other as string));
  });

  it('binds no one in single-module mode, where every device counts as bound', () => {
    const p = new Provisioning(undefined, URLS);
    expect(codeIn(p, ota(DEVICE))).toBeUndefined();
    expect(p.bindPrompt(DEVICE)).toBeUndefined();
    expect(p.bindPrompt(undefined)).toBeUndefined();
    expect(p.answer({ ...ota(DEVICE), path: '/xiaozhi/ota/activate' }, 0)).toEqual({ status: 404, body: { error: 'not found' } });
  });

  it('records every OTA and /activate request but no console request, and leaves other paths alone', () => {
    const p = new Provisioning({ mode: 'cloud' }, URLS);
    p.answer(ota(DEVICE), 0);
    p.answer({ ...ota(DEVICE), path: '/xiaozhi/ota/activate', body: {} }, 0);
    p.answer({ path: '/console/devices', method: 'GET', headers: {}, body: '' }, 0);
    expect(p.answer({ path: '/xiaozhi/v1/', method: 'GET', headers: {}, body: '' }, 0)).toBeUndefined();
    expect(p.requests.map((r) => r.path)).toEqual(['/xiaozhi/ota/', '/xiaozhi/ota/activate']);
  });

  it('answers the server faults before looking at the request', () => {
    const p = new Provisioning({ mode: 'manager' }, URLS);
    p.fault = 'timeout';
    expect(p.answer(ota('bad'), 0)).toBe('hold');
    p.fault = 'http_error';
    expect(p.answer(ota('bad'), 0)).toEqual({ status: 500, body: 'Internal Server Error' });
    p.fault = 'malformed';
    const malformed = p.answer(ota(DEVICE), 0);
    expect(malformed !== undefined && malformed !== 'hold' && typeof malformed.body).toBe('string');
  });

  it('checks tokens always in manager mode, only with a key in single-module mode, and refuses all under refuse_token', () => {
    const headers = { 'device-id': DEVICE, 'client-id': CLIENT };
    expect(new Provisioning({ mode: 'manager' }, URLS).refusal('/xiaozhi/v1/', headers, 0)).toBe('no Bearer token');
    expect(new Provisioning({ mode: 'single-module' }, URLS).refusal('/xiaozhi/v1/', headers, 0)).toBeUndefined();
    const keyed = new Provisioning({ mode: 'single-module', authKey: KEY }, URLS);
    const token = signToken(KEY, CLIENT, DEVICE, TS);
    expect(keyed.refusal('/xiaozhi/v1/', { ...headers, authorization: `Bearer ${token}` }, TS * 1000)).toBeUndefined();
    keyed.rotateKey();
    expect(keyed.refusal('/xiaozhi/v1/', { ...headers, authorization: `Bearer ${token}` }, TS * 1000)).toBe('bad signature');
    const off = new Provisioning({ mode: 'cloud' }, URLS);
    off.fault = 'refuse_token';
    expect(off.refusal('/xiaozhi/v1/', headers, 0)).toMatch(/refuse_token/);
  });
});
