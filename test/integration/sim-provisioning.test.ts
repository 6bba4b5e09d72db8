import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import { AUTH_FAILED_TEXT, startSimulator, type Simulator, type SimulatorOptions } from '../../src/sim/simulator.ts';
import { signToken } from '../../src/sim/tokens.ts';

const DEVICE = 'aa:bb:cc:dd:ee:ff';
const CLIENT = '4a1f0c2e-9a53-4b7e-8d3e-2f6c1a0b9d77';
const KEY = 'sim-key';
type Json = Record<string, any>;

const speech = loadSpeech();
/** Three frames a sentence, sent at once: a whole reply takes a few milliseconds. */
const quick: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 3) })) };

let sims: Simulator[] = [];
afterEach(async () => {
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

async function simulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const sim = await startSimulator({ speech: quick, pacing: 'burst', stopDelayMs: 0, ...options });
  sims.push(sim);
  return sim;
}

/** The firmware's OTA request: its identity headers and py-xiaozhi's minimal body. */
function ota(sim: Simulator, headers: Record<string, string> = { 'Device-Id': DEVICE, 'Client-Id': CLIENT }, init: RequestInit = {}): Promise<Response> {
  const body = JSON.stringify({ application: { version: '2.1.1', elf_sha256: 'ab'.repeat(32) }, board: { type: 'bread-compact-wifi', mac: DEVICE } });
  return fetch(sim.otaUrl, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body, ...init });
}

async function otaJson(sim: Simulator, headers?: Record<string, string>): Promise<Json> {
  const response = await ota(sim, headers);
  expect(response.status).toBe(200);
  return (await response.json()) as Json;
}

const activate = (sim: Simulator, body: unknown, deviceId = DEVICE): Promise<Response> =>
  fetch(`${sim.otaUrl}activate`, {
    method: 'POST',
    headers: { 'Device-Id': deviceId, 'Client-Id': CLIENT, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });

/** A device on the WebSocket: what the simulator sent, as JSON or raw text, and how the connection ended. */
class Device {
  readonly messages: (Json | string)[] = [];
  audio = 0;
  readonly closed: Promise<number>;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      if (isBinary) this.audio++;
      else this.messages.push(parse(data.toString()));
      for (const w of this.waiters) w();
    });
    this.closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  }

  static connect(url: string, headers: Record<string, string>): Promise<Device> {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      // The first message may come with the upgrade: listen before 'open' returns.
      const device = new Device(ws);
      ws.once('open', () => resolve(device));
      ws.once('error', reject);
    });
  }

  /** The xiaozhi message shapes so far: `type state`, or the raw text of a message that is not JSON. */
  get shape(): string[] {
    return this.messages.map((m) => (typeof m === 'string' ? m : [m.type, m.state].filter(Boolean).join(' ')));
  }

  say(text: string): void {
    this.ws.send(JSON.stringify({ type: 'listen', state: 'detect', text, session_id: '' }));
  }

  /** Resolves once this many `tts stop` have come. */
  untilStops(count: number): Promise<void> {
    const done = (): boolean => this.shape.filter((s) => s === 'tts stop').length >= count;
    if (done()) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(() => done() && resolve()));
  }
}

function parse(text: string): Json | string {
  try {
    return JSON.parse(text) as Json;
  } catch {
    return text;
  }
}

const wsHeaders = (token: string | undefined, deviceId = DEVICE): Record<string, string> => ({
  'Device-Id': deviceId,
  'Client-Id': CLIENT,
  'Protocol-Version': '1',
  ...(token === undefined || token === '' ? {} : { Authorization: `Bearer ${token}` }),
});

/** Connects with the URL and token of the OTA answer and says something; resolves with what came back. */
async function converse(answer: Json): Promise<Device> {
  const device = await Device.connect(answer.websocket.url as string, wsHeaders(answer.websocket.token as string));
  device.say('hello');
  await device.untilStops(1);
  return device;
}

/** Connects and expects S's refusal: the upgrade succeeds, then "认证失败" and a close. */
async function expectRefused(url: string, headers: Record<string, string>): Promise<void> {
  const device = await Device.connect(url, headers);
  expect(await device.closed).toBe(1000);
  expect(device.messages).toEqual([AUTH_FAILED_TEXT]);
}

const REPLY = ['stt', 'llm', 'tts start', ...quick.sentences.map(() => 'tts sentence_start'), 'tts stop'];

describe('the simulator without provisioning', () => {
  it('publishes its OTA and console URLs and answers OTA as single-module without auth', async () => {
    const sim = await simulator();
    expect(sim.otaUrl).toBe(`http://127.0.0.1:${sim.port}/xiaozhi/ota/`);
    expect(sim.consoleUrl).toBe(`http://127.0.0.1:${sim.port}/console/`);
    const answer = await otaJson(sim);
    expect(answer).toEqual({
      server_time: { timestamp: expect.any(Number), timezone_offset: 480 },
      firmware: { version: '2.1.1', url: '' },
      websocket: { url: sim.url, token: '' },
    });
    const device = await converse(answer);
    expect(device.shape.filter((s) => s !== 'tts sentence_start')).toEqual(REPLY.filter((s) => s !== 'tts sentence_start'));
    expect(sim.otaRequests).toEqual([
      {
        path: '/xiaozhi/ota/',
        method: 'POST',
        headers: expect.objectContaining({ 'device-id': DEVICE, 'client-id': CLIENT }),
        body: expect.objectContaining({ board: expect.any(Object) }),
      },
    ]);
  });

  it('still answers 426 on the WebSocket path and 404 elsewhere', async () => {
    const sim = await simulator();
    expect((await fetch(sim.url.replace('ws:', 'http:'))).status).toBe(426);
    expect((await fetch(`http://127.0.0.1:${sim.port}/elsewhere`)).status).toBe(404);
  });
});

describe('single-module provisioning', () => {
  it('answers a bad request as S does: 200 with the reason in the body', async () => {
    const sim = await simulator({ provisioning: { mode: 'single-module' } });
    expect(await otaJson(sim, { 'Device-Id': DEVICE })).toEqual({ success: false, message: 'request error.' });
    expect(await otaJson(sim, { 'Device-Id': 'aa:bb', 'Client-Id': CLIENT })).toEqual({ error: 'Invalid device ID' });
    expect((await activate(sim, {})).status).toBe(404);
    const status = await fetch(sim.otaUrl);
    expect(status.status).toBe(200);
    expect(await status.text()).toContain(sim.url);
    expect(sim.otaRequests.map((r) => r.method)).toEqual(['POST', 'POST', 'POST', 'GET']);
  });

  it('signs a token with the auth key that opens the WebSocket, also given in the query', async () => {
    const sim = await simulator({ provisioning: { mode: 'single-module', authKey: KEY } });
    const answer = await otaJson(sim);
    const [, ts] = (answer.websocket.token as string).split('.');
    expect(answer.websocket.token).toBe(signToken(KEY, CLIENT, DEVICE, Number(ts)));
    expect((await converse(answer)).shape).toEqual(REPLY);

    const query = new URLSearchParams({ 'device-id': DEVICE, 'client-id': CLIENT, authorization: `Bearer ${answer.websocket.token}` });
    const byQuery = await Device.connect(`${sim.url}?${query}`, {});
    byQuery.say('hello');
    await byQuery.untilStops(1);
    expect(sim.sessions).toHaveLength(2);
  });

  it('refuses, with "认证失败" and a close, no token, a token of another device, an expired token, and one signed with the old key', async () => {
    const sim = await simulator({ provisioning: { mode: 'single-module', authKey: KEY, tokenTtlSeconds: 3600 } });
    const { token } = (await otaJson(sim)).websocket as { token: string };
    await expectRefused(sim.url, wsHeaders(undefined));
    await expectRefused(sim.url, wsHeaders(token, 'aa:bb:cc:dd:ee:00'));
    await expectRefused(sim.url, wsHeaders(signToken(KEY, CLIENT, DEVICE, Math.floor(Date.now() / 1000) - 3700)));
    sim.rotateAuthKey();
    await expectRefused(sim.url, wsHeaders(token));
    expect(sim.sessions).toHaveLength(0);

    const fresh = await otaJson(sim);
    expect(fresh.websocket.token).not.toBe(token);
    expect((await converse(fresh)).shape).toEqual(REPLY);
  });
});

describe('manager provisioning', () => {
  it('hands an unbound device a code, its Device-Id as challenge and a signed token, the same code until it is bound', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    const answer = await otaJson(sim);
    const code = sim.codeOf(DEVICE)!;
    expect(code).toMatch(/^\d{6}$/);
    expect(answer.activation).toEqual({ code, message: `Bind this device: POST ${sim.consoleUrl}bind/${code}`, challenge: DEVICE });
    expect(answer.websocket.token).toMatch(/^[\w-]{43}\.\d+$/);
    expect(answer.mqtt).toBeUndefined();
    expect((await otaJson(sim)).activation.code).toBe(code);
  });

  it('answers /activate with 202 until the device is bound in the console, then 200, whatever the body', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    const { activation } = await otaJson(sim);
    const v2 = { algorithm: 'hmac-sha256', serial_number: 'SN-0A1B2C3D-aabbccddeeff', challenge: activation.challenge, hmac: 'ab'.repeat(32) };
    expect((await activate(sim, {})).status).toBe(202);
    expect((await activate(sim, v2)).status).toBe(202);
    expect((await activate(sim, { Payload: v2 })).status).toBe(202);
    expect((await activate(sim, {}, 'aa:bb:cc:dd:ee:00')).status).toBe(202);

    const unknown = await fetch(`${sim.consoleUrl}bind/abcdef`, { method: 'POST' });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as Json).error).toMatch(/^no device waits for code/);
    const bound = await fetch(`${sim.consoleUrl}bind/${activation.code}`, { method: 'POST' });
    expect(bound.status).toBe(200);
    expect(await bound.json()).toEqual({ deviceId: DEVICE });

    const done = await activate(sim, {});
    expect(done.status).toBe(200);
    expect(await done.text()).toBe('success');
    expect((await otaJson(sim)).activation).toBeUndefined();
    expect(sim.codeOf(DEVICE)).toBeUndefined();
    expect(sim.otaRequests.filter((r) => r.path.endsWith('activate')).map((r) => r.body)).toEqual([{}, v2, { Payload: v2 }, {}, {}]);
  });

  it('lists the devices it knows in the console, and binds through bind() as well', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    await otaJson(sim);
    await otaJson(sim, { 'Device-Id': 'aa:bb:cc:dd:ee:00' });
    const code = sim.codeOf('aa:bb:cc:dd:ee:00')!;
    expect(sim.bind(code)).toBe('aa:bb:cc:dd:ee:00');
    expect(sim.bind(code)).toBeUndefined();
    const devices = await (await fetch(`${sim.consoleUrl}devices`)).json();
    expect(devices).toEqual([
      { deviceId: DEVICE, clientId: CLIENT, bound: false, code: sim.codeOf(DEVICE) },
      { deviceId: 'aa:bb:cc:dd:ee:00', clientId: 'aa:bb:cc:dd:ee:00', bound: true, code: null },
    ]);
  });

  it('speaks the binding prompt with the code instead of every reply until the device is bound, then replies', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    const answer = await otaJson(sim);
    const code = answer.activation.code as string;
    const device = await Device.connect(answer.websocket.url as string, wsHeaders(answer.websocket.token as string));
    device.say('hello');
    await device.untilStops(1);
    device.ws.send(JSON.stringify({ type: 'listen', state: 'stop', session_id: '' }));
    await device.untilStops(2);

    const prompt = `Please log in to the control panel and enter ${code} to bind this device.`;
    expect(device.shape).toEqual(['stt', 'tts start', 'tts sentence_start', 'tts stop', 'stt', 'tts start', 'tts sentence_start', 'tts stop']);
    const spoken = (device.messages as Json[]).filter((m) => m.type === 'stt' || m.state === 'sentence_start');
    expect(spoken.map((m) => m.text)).toEqual([prompt, prompt, prompt, prompt]);
    expect(device.audio).toBe(2 * quick.sentences[0]!.packets.length);
    expect(sim.sessions[0]!.repliesSent).toBe(0);

    sim.bind(code);
    device.say('hello again');
    await device.untilStops(3);
    expect(device.shape.slice(8)).toEqual(REPLY);
    expect(sim.sessions[0]!.repliesSent).toBe(1);
  });

  it('checks tokens without being given a key', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    await expectRefused(sim.url, wsHeaders(undefined));
    await expectRefused(sim.url, wsHeaders(signToken('guessed', CLIENT, DEVICE, Math.floor(Date.now() / 1000))));
  });
});

describe('cloud provisioning', () => {
  it('answers with an mqtt section beside the websocket one, test-token, and activation with timeout_ms', async () => {
    const sim = await simulator({ provisioning: { mode: 'cloud' } });
    const answer = await otaJson(sim);
    expect(answer.mqtt).toMatchObject({ client_id: `GID_test@@@aa_bb_cc_dd_ee_ff@@@${CLIENT}`, publish_topic: 'device-server' });
    expect(answer.websocket).toEqual({ url: sim.url, token: 'test-token' });
    expect(answer.activation).toEqual({
      code: sim.codeOf(DEVICE),
      message: expect.stringContaining(sim.consoleUrl),
      challenge: expect.stringMatching(/^[0-9a-f]{32}$/),
      timeout_ms: 30_000,
    });
    expect(await (await fetch(sim.otaUrl)).json()).toMatchObject({ status: 'ok' });

    sim.bind(answer.activation.code as string);
    expect((await activate(sim, {})).status).toBe(200);
    expect((await converse(await otaJson(sim))).shape).toEqual(REPLY);
  });

  it('tells a device that never asked OTA to configure the OTA address', async () => {
    const sim = await simulator({ provisioning: { mode: 'cloud' } });
    const device = await Device.connect(sim.url, wsHeaders('test-token'));
    device.say('hello');
    await device.untilStops(1);
    expect(device.messages[0]).toMatchObject({ type: 'stt', text: expect.stringMatching(/configure the OTA address/) });
  });

  it('signs and checks tokens when given an auth key', async () => {
    const sim = await simulator({ provisioning: { mode: 'cloud', authKey: KEY } });
    const answer = await otaJson(sim);
    expect(answer.websocket.token).not.toBe('test-token');
    await expectRefused(sim.url, wsHeaders('test-token'));
    sim.bind(answer.activation.code as string);
    expect((await converse(answer)).shape).toEqual(REPLY);
  });
});

describe('OTA faults', () => {
  it('answers http_error with 500, malformed with a body that is not JSON, error_body with an error', async () => {
    const sim = await simulator({ provisioning: { mode: 'single-module', authKey: KEY } });
    sim.setOtaFault('http_error');
    const failed = await ota(sim);
    expect(failed.status).toBe(500);
    expect((await activate(sim, {})).status).toBe(500);
    sim.setOtaFault('malformed');
    const malformed = await ota(sim);
    expect(malformed.status).toBe(200);
    const text = await malformed.text();
    expect(() => JSON.parse(text)).toThrow();
    sim.setOtaFault('error_body');
    expect(await otaJson(sim)).toEqual({ error: 'Invalid device ID' });
    sim.setOtaFault(undefined);
    expect((await otaJson(sim)).websocket.url).toBe(sim.url);
  });

  it('answers mqtt_only with an mqtt section and no websocket section', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    sim.setOtaFault('mqtt_only');
    const answer = await otaJson(sim);
    expect(answer.websocket).toBeUndefined();
    expect(answer.mqtt).toMatchObject({ endpoint: expect.any(String) });
  });

  it('holds a request under timeout, and closing the simulator ends it at once', async () => {
    const sim = await simulator({ provisioning: { mode: 'cloud' } });
    sim.setOtaFault('timeout');
    const pending = ota(sim);
    await vi.waitFor(() => expect(sim.otaRequests).toHaveLength(1));
    const started = performance.now();
    await sim.close();
    await expect(pending).rejects.toThrow();
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it('refuses every handshake under refuse_token yet answers OTA, even with auth off', async () => {
    const sim = await simulator({ provisioning: { mode: 'single-module', authKey: KEY } });
    sim.setOtaFault('refuse_token');
    const answer = await otaJson(sim);
    await expectRefused(sim.url, wsHeaders(answer.websocket.token as string));
    const open = await simulator();
    open.setOtaFault('refuse_token');
    await expectRefused(open.url, wsHeaders(undefined));
    sim.setOtaFault(undefined);
    expect((await converse(answer)).shape).toEqual(REPLY);
  });
});

describe('bad requests', () => {
  it('answers a body that is too large with 413 and records a body that is not JSON as text', async () => {
    const sim = await simulator({ provisioning: { mode: 'manager' } });
    const large = await fetch(sim.otaUrl, { method: 'POST', headers: { 'Device-Id': DEVICE }, body: 'x'.repeat(100_000) });
    expect(large.status).toBe(413);
    const text = await fetch(sim.otaUrl, { method: 'POST', headers: { 'Device-Id': DEVICE }, body: 'not json' });
    expect(text.status).toBe(200);
    expect(sim.otaRequests.at(-1)!.body).toBe('not json');
    expect((await fetch(`${sim.consoleUrl}bind/`, { method: 'POST' })).status).toBe(404);
    expect((await fetch(`${sim.consoleUrl}bind/%E0%A4%A`, { method: 'POST' })).status).toBe(404);
    expect((await fetch(`${sim.consoleUrl}nothing`)).status).toBe(404);
    expect((await fetch(sim.otaUrl, { method: 'PUT' })).status).toBe(405);
  });
});
