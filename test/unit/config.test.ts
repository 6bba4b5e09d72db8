import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, type Config } from '../../src/config.ts';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error(`expected ${JSON.stringify(env)} to be refused`);
}

const DEFAULTS: Config = {
  host: '0.0.0.0',
  port: 8080,
  logLevel: 'info',
  clients: { tokens: [], jwt: undefined },
  upstream: {
    url: undefined,
    token: undefined,
    deviceId: undefined,
    clientId: undefined,
    protocolVersion: 1,
    helloTimeoutMs: 10_000,
    maxMessageBytes: 1024 * 1024,
    stallTimeoutMs: 15_000,
    reconnect: { attempts: 5, baseMs: 250, maxMs: 5000 },
    ota: { url: undefined, timeoutMs: 10_000, maxAgeMs: 3_600_000, activationVersion: 1, activationTimeoutMs: 300_000, activationPollMs: 3000 },
  },
  store: { dataDir: 'data', databaseUrl: undefined },
  webEnabled: true,
  workers: availableParallelism(),
  limits: { maxSessions: 1000, maxFrameBytes: 64 * 1024, helloTimeoutMs: 10_000, idleTimeoutMs: 300_000, drainDeadlineMs: 30_000 },
  admission: { maxLagMs: 50, maxLatenessMs: 20 },
  sink: { highWaterBytes: 256 * 1024, queueLimitMs: 5000, maxQueuedMessages: 1000, policy: 'drop-oldest', sessionBufferBytes: 256 * 1024 },
  sim: { reply: 'speech', provisioning: 'off', authKey: undefined },
};

describe('loadConfig', () => {
  it('gives the defaults src/config.ts documents for an empty environment', () => {
    expect(loadConfig({})).toEqual(DEFAULTS);
  });

  it('uses the embedded simulator (no upstream URL) and no client authentication by default', () => {
    const config = loadConfig({});
    expect(config.upstream.url).toBeUndefined();
    expect(config.clients).toEqual({ tokens: [], jwt: undefined });
  });

  it('refuses bad values with a ConfigError naming every bad variable', () => {
    const error = configError({ PORT: 'abc', UPSTREAM_URL: 'http://x', UPSTREAM_DEVICE_ID: 'zz' });
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.name).toBe('ConfigError');
    expect(error.message).toContain('PORT');
    expect(error.message).toContain('UPSTREAM_URL');
    expect(error.message).toContain('UPSTREAM_DEVICE_ID');
  });

  it.each([
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['PORT', '-1'],
    ['PORT', '80.5'],
    ['UPSTREAM_URL', 'http://x'],
    ['UPSTREAM_URL', 'not a url'],
    ['UPSTREAM_DEVICE_ID', 'zz'],
    ['UPSTREAM_DEVICE_ID', 'aa:bb:cc:dd:ee'],
    ['UPSTREAM_DEVICE_ID', 'aa-bb-cc-dd-ee-ff'],
    ['UPSTREAM_CLIENT_ID', 'not-a-uuid'],
    ['UPSTREAM_PROTOCOL_VERSION', '4'],
    ['UPSTREAM_PROTOCOL_VERSION', 'two'],
    ['LOG_LEVEL', 'loud'],
    ['QUEUE_LIMIT_MS', '10'],
    ['SOCKET_HIGH_WATER_BYTES', '1e12'],
    ['SLOW_CLIENT_POLICY', 'kick'],
    ['SIM_REPLY', 'music'],
  ])('refuses %s=%s with a ConfigError naming it', (name, value) => {
    const error = configError({ [name]: value });
    expect(error.message).toContain(`${name}:`);
  });

  it.each([
    'HOST',
    'PORT',
    'LOG_LEVEL',
    'CLIENT_TOKENS',
    'UPSTREAM_PROTOCOL_VERSION',
    'UPSTREAM_RECONNECT_BASE_MS',
    'UPSTREAM_RECONNECT_MAX_MS',
    'SLOW_CLIENT_POLICY',
    'SIM_REPLY',
    'UPSTREAM_URL',
    'UPSTREAM_TOKEN',
    'UPSTREAM_DEVICE_ID',
    'UPSTREAM_CLIENT_ID',
    'UPSTREAM_HELLO_TIMEOUT_MS',
    'UPSTREAM_MAX_MESSAGE_BYTES',
    'UPSTREAM_STALL_TIMEOUT_MS',
    'UPSTREAM_RECONNECT_ATTEMPTS',
    'MAX_SESSIONS',
    'MAX_FRAME_BYTES',
    'HELLO_TIMEOUT_MS',
    'IDLE_TIMEOUT_MS',
    'DRAIN_DEADLINE_MS',
    'SOCKET_HIGH_WATER_BYTES',
    'QUEUE_LIMIT_MS',
    'QUEUE_MAX_MESSAGES',
    'SESSION_BUFFER_BYTES',
  ])('counts a blank %s as unset', (name) => {
    expect(loadConfig({ [name]: '' })).toEqual(DEFAULTS);
    expect(loadConfig({ [name]: '   ' })).toEqual(DEFAULTS);
  });

  it('lower-cases a MAC address given as the device id', () => {
    expect(loadConfig({ UPSTREAM_DEVICE_ID: 'AA:BB:CC:0D:EE:FF' }).upstream.deviceId).toBe('aa:bb:cc:0d:ee:ff');
    expect(loadConfig({ UPSTREAM_DEVICE_ID: ' 02:Ab:cD:00:11:9f ' }).upstream.deviceId).toBe('02:ab:cd:00:11:9f');
  });

  it('accepts ws and wss upstream URLs, trimmed', () => {
    expect(loadConfig({ UPSTREAM_URL: 'ws://127.0.0.1:8000/xiaozhi/v1/' }).upstream.url).toBe('ws://127.0.0.1:8000/xiaozhi/v1/');
    expect(loadConfig({ UPSTREAM_URL: ' wss://api.example.com/xiaozhi/v1/ ' }).upstream.url).toBe('wss://api.example.com/xiaozhi/v1/');
  });

  it('reads numbers, with surrounding spaces, and the protocol version', () => {
    const config = loadConfig({ PORT: ' 9000 ', QUEUE_LIMIT_MS: '60', UPSTREAM_PROTOCOL_VERSION: '3' });
    expect(config.port).toBe(9000);
    expect(config.sink.queueLimitMs).toBe(60);
    expect(config.upstream.protocolVersion).toBe(3);
  });

  it('splits client tokens on commas, trimming and skipping empty ones', () => {
    expect(loadConfig({ CLIENT_TOKENS: ' alpha, beta,,gamma , ' }).clients.tokens.map((t) => t.token)).toEqual(['alpha', 'beta', 'gamma']);
  });

  it('reads user:token entries as tokens that name their user, and bare ones as naming none', () => {
    expect(loadConfig({ CLIENT_TOKENS: 'alice:t0k:en, plain' }).clients.tokens).toEqual([
      { user: 'alice', token: 't0k:en' },
      { user: undefined, token: 'plain' },
    ]);
    expect(() => loadConfig({ CLIENT_TOKENS: 'al ice:token' })).toThrow(/CLIENT_TOKENS: each entry is user:token/);
    expect(() => loadConfig({ CLIENT_TOKENS: 'alice:' })).toThrow(/CLIENT_TOKENS/);
  });

  it('takes a JWT key only with an audience, one key at a time, and an HS256 secret of 32 characters or more', () => {
    const secret = 's'.repeat(32);
    expect(loadConfig({ CLIENT_JWT_SECRET: secret, CLIENT_JWT_AUDIENCE: 'voicegw' }).clients.jwt).toEqual({ secret, publicKeyFile: undefined, audience: 'voicegw', issuer: undefined });
    expect(() => loadConfig({ CLIENT_JWT_SECRET: secret })).toThrow(/CLIENT_JWT_AUDIENCE: required/);
    expect(() => loadConfig({ CLIENT_JWT_SECRET: secret, CLIENT_JWT_PUBLIC_KEY_FILE: '/k.pem', CLIENT_JWT_AUDIENCE: 'a' })).toThrow(/set one, not both/);
    expect(() => loadConfig({ CLIENT_JWT_SECRET: 'short', CLIENT_JWT_AUDIENCE: 'a' })).toThrow(/at least 32 characters/);
  });

  it('trims the upstream token and client id', () => {
    const config = loadConfig({ UPSTREAM_TOKEN: '  secret ', UPSTREAM_CLIENT_ID: ' 123e4567-e89b-42d3-a456-426614174000 ' });
    expect(config.upstream.token).toBe('secret');
    expect(config.upstream.clientId).toBe('123e4567-e89b-42d3-a456-426614174000');
  });

  it('reads the slow-client policy and the simulator reply', () => {
    const config = loadConfig({ SLOW_CLIENT_POLICY: 'close', SIM_REPLY: 'echo', LOG_LEVEL: 'debug' });
    expect(config.sink.policy).toBe('close');
    expect(config.sim.reply).toBe('echo');
    expect(config.logLevel).toBe('debug');
  });
});
