import { availableParallelism } from 'node:os';
import { z } from 'zod';
import type { ProtocolVersion } from './protocol/xiaozhi.ts';

// The one home of configuration: environment in, one typed and validated object out. Every default
// lives here, so that what the gateway does without any settings can be read in one place.

const int = (fallback: number, min: number, max: number) => z.coerce.number().int().min(min).max(max).default(fallback);
const optionalText = z
  .string()
  .optional()
  .transform((v) => v?.trim());

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const schema = z.object({
  HOST: z.string().default('0.0.0.0'),
  PORT: int(8080, 0, 65535),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  CLIENT_TOKENS: optionalText,
  CLIENT_JWT_SECRET: optionalText.pipe(z.string().min(32, 'must be at least 32 characters (HS256)').optional()),
  CLIENT_JWT_PUBLIC_KEY_FILE: optionalText,
  CLIENT_JWT_AUDIENCE: optionalText,
  CLIENT_JWT_ISSUER: optionalText,

  UPSTREAM_URL: optionalText.pipe(z.url({ protocol: /^wss?$/ }).optional()),
  UPSTREAM_TOKEN: optionalText,
  UPSTREAM_DEVICE_ID: optionalText.pipe(
    z
      .string()
      .transform((v) => v.toLowerCase())
      .refine((v) => MAC.test(v), 'must be a MAC address like aa:bb:cc:dd:ee:ff')
      .optional(),
  ),
  UPSTREAM_CLIENT_ID: optionalText.pipe(z.uuid().optional()),
  UPSTREAM_OTA_URL: optionalText.pipe(z.url({ protocol: /^https?$/ }).optional()),
  UPSTREAM_OTA_TIMEOUT_MS: int(10_000, 100, 120_000),
  UPSTREAM_OTA_MAX_AGE_MS: int(3_600_000, 1000, 30 * 86_400_000),
  UPSTREAM_ACTIVATION_VERSION: z.coerce.number().pipe(z.union([z.literal(1), z.literal(2)])).default(1),
  ACTIVATION_TIMEOUT_MS: int(300_000, 100, 3_600_000),
  ACTIVATION_POLL_MS: int(3000, 10, 60_000),
  DATA_DIR: z.string().default('data'),
  DATABASE_URL: optionalText.pipe(z.url({ protocol: /^postgres(ql)?$/ }).optional()),
  UPSTREAM_PROTOCOL_VERSION: z.coerce.number().pipe(z.union([z.literal(1), z.literal(2), z.literal(3)])).default(1),
  UPSTREAM_HELLO_TIMEOUT_MS: int(10_000, 100, 120_000),
  UPSTREAM_MAX_MESSAGE_BYTES: int(1024 * 1024, 4096, 64 * 1024 * 1024),
  UPSTREAM_STALL_TIMEOUT_MS: int(15_000, 100, 600_000),
  UPSTREAM_RECONNECT_ATTEMPTS: int(5, 0, 100),
  UPSTREAM_RECONNECT_BASE_MS: int(250, 1, 60_000),
  UPSTREAM_RECONNECT_MAX_MS: int(5000, 1, 600_000),

  WORKERS: int(availableParallelism(), 1, 256),
  MAX_SESSIONS: int(1000, 1, 1_000_000),
  ADMISSION_MAX_LAG_MS: int(50, 1, 10_000),
  ADMISSION_MAX_LATENESS_MS: int(20, 1, 10_000),
  MAX_FRAME_BYTES: int(64 * 1024, 1024, 16 * 1024 * 1024),
  HELLO_TIMEOUT_MS: int(10_000, 100, 120_000),
  IDLE_TIMEOUT_MS: int(300_000, 1000, 86_400_000),
  DRAIN_DEADLINE_MS: int(30_000, 0, 3_600_000),
  SOCKET_HIGH_WATER_BYTES: int(256 * 1024, 1024, 64 * 1024 * 1024),
  QUEUE_LIMIT_MS: int(5000, 60, 600_000),
  QUEUE_MAX_MESSAGES: int(1000, 16, 1_000_000),
  SESSION_BUFFER_BYTES: int(256 * 1024, 16 * 1024, 256 * 1024 * 1024),
  SLOW_CLIENT_POLICY: z.enum(['drop-oldest', 'close']).default('drop-oldest'),

  WEB_ENABLED: z
    .enum(['true', 'false'])
    .default('true')
    .transform((v) => v === 'true'),
  SIM_REPLY: z.enum(['speech', 'echo']).default('speech'),
  SIM_PROVISIONING: z.enum(['off', 'single-module', 'manager', 'cloud']).default('off'),
  SIM_AUTH_KEY: optionalText,
});

export interface Config {
  host: string;
  port: number;
  logLevel: z.infer<typeof schema>['LOG_LEVEL'];
  /** Who may connect; no tokens and no JWT key means anyone, each session a device of its own. */
  clients: ClientAuth;
  /** The xiaozhi server; neither `url` nor `ota.url` means the embedded simulator. */
  upstream: {
    url: string | undefined;
    token: string | undefined;
    /** Shared by every session when set: the server keys conversation memory by it. */
    deviceId: string | undefined;
    clientId: string | undefined;
    protocolVersion: ProtocolVersion;
    helloTimeoutMs: number;
    /** A larger upstream message is a fault: the connection is dropped rather than the memory spent. */
    maxMessageBytes: number;
    /** Silence this long while a reply is due or under way means the upstream is stuck: reconnect. */
    stallTimeoutMs: number;
    /** After losing the upstream mid-session: attempts, then capped exponential backoff between them. */
    reconnect: { attempts: number; baseMs: number; maxMs: number };
    /**
     * OTA provisioning (XIAOZHI-OTA.md), as a xiaozhi device does it: the server hands each device its
     * WebSocket URL and token, and asks for activation until the device is bound to an account.
     */
    ota: {
      /** Absent: connect to `url` directly, as a device with a fixed server does. */
      url: string | undefined;
      timeoutMs: number;
      /** A cached answer older than this is fetched again before the next connection. */
      maxAgeMs: number;
      /** 1: the `{}` activation body of boards without a serial; 2: the HMAC body over the challenge. */
      activationVersion: 1 | 2;
      /** How long a session waits for its user to bind the device (then `activation_timeout`, 4002). */
      activationTimeoutMs: number;
      /** Between `/activate` polls while the server answers 202, as the firmware's 3 s. */
      activationPollMs: number;
    };
  };
  /** Where each user's device identity is kept: PostgreSQL when DATABASE_URL is set, else SQLite in dataDir. */
  store: { dataDir: string; databaseUrl: string | undefined };
  /** Whether GET / serves the browser client (web/). */
  webEnabled: boolean;
  /** Threads serving clients, one uWS App each on the same port; a session lives wholly in one. */
  workers: number;
  limits: {
    /** Sessions the whole gateway holds at most, shared evenly between the workers. */
    maxSessions: number;
    maxFrameBytes: number;
    helloTimeoutMs: number;
    /** A session with no client message and no reply for this long is closed (1000). */
    idleTimeoutMs: number;
    /** On SIGTERM, how long replies in progress may run before every session is closed (1001). */
    drainDeadlineMs: number;
  };
  /**
   * Admission by load, per worker: while its event loop lags or its delivered frames run late by more
   * than these bounds, it refuses new sessions (1013) and /readyz says 503, so that the sessions it
   * already holds keep their timing.
   */
  admission: { maxLagMs: number; maxLatenessMs: number };
  sink: {
    /** Above this many bytes buffered in the socket, frames wait in the session's own queue. */
    highWaterBytes: number;
    /** How much audio a session's queue holds beyond what the socket buffers. */
    queueLimitMs: number;
    /** Messages (never dropped) a session's queue holds at most: past it the client is too slow (4003). */
    maxQueuedMessages: number;
    /** When the audio queue is full: drop the oldest audio, or close the session with 4003. */
    policy: 'drop-oldest' | 'close';
    /**
     * Bytes one session may hold in memory for its client and its upstream together: the client's queue
     * (audio and text), the pacer's hold, and what waits for the upstream socket.
     */
    sessionBufferBytes: number;
  };
  /**
   * The embedded simulator. reply: the recorded speech, or the user's own uplink audio back.
   * provisioning: which xiaozhi server's OTA and activation it plays (off: the gateway connects directly).
   * authKey: single-module only, the key of the tokens it hands out and checks at the handshake.
   */
  sim: { reply: 'speech' | 'echo'; provisioning: 'off' | 'single-module' | 'manager' | 'cloud'; authKey: string | undefined };
}

export interface ClientAuth {
  /** Static tokens; `user` when the entry named one (`alice:<token>`), else the token only admits. */
  tokens: readonly { user: string | undefined; token: string }[];
  /** Signed JWTs from the app's backend: their `sub` is the user. */
  jwt: { secret: string | undefined; publicKeyFile: string | undefined; audience: string; issuer: string | undefined } | undefined;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const USER = /^[A-Za-z0-9._@-]{1,64}$/;

/** CLIENT_TOKENS entries are `user:token` or a bare token; CLIENT_JWT_* need a key and an audience. */
function clientAuth(e: z.infer<typeof schema>): ClientAuth {
  const tokens = (e.CLIENT_TOKENS ?? '')
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '')
    .map((entry) => {
      const colon = entry.indexOf(':');
      if (colon < 0) return { user: undefined, token: entry };
      const user = entry.slice(0, colon);
      const token = entry.slice(colon + 1);
      if (!USER.test(user) || token === '') throw new ConfigError('invalid configuration:\n  CLIENT_TOKENS: each entry is user:token (a user of letters, digits, . _ @ -) or a bare token');
      return { user, token };
    });
  const key = e.CLIENT_JWT_SECRET ?? e.CLIENT_JWT_PUBLIC_KEY_FILE;
  if (key === undefined) return { tokens, jwt: undefined };
  if (e.CLIENT_JWT_SECRET !== undefined && e.CLIENT_JWT_PUBLIC_KEY_FILE !== undefined) {
    throw new ConfigError('invalid configuration:\n  CLIENT_JWT_SECRET, CLIENT_JWT_PUBLIC_KEY_FILE: set one, not both');
  }
  if (e.CLIENT_JWT_AUDIENCE === undefined) throw new ConfigError('invalid configuration:\n  CLIENT_JWT_AUDIENCE: required with a JWT key, so that tokens minted for another service are refused');
  return { tokens, jwt: { secret: e.CLIENT_JWT_SECRET, publicKeyFile: e.CLIENT_JWT_PUBLIC_KEY_FILE, audience: e.CLIENT_JWT_AUDIENCE, issuer: e.CLIENT_JWT_ISSUER } };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // A variable set to blank (FOO= in an env file) means unset, as operators expect.
  const given = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const parsed = schema.safeParse(given);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  return {
    host: e.HOST,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    clients: clientAuth(e),
    upstream: {
      url: e.UPSTREAM_URL,
      token: e.UPSTREAM_TOKEN,
      deviceId: e.UPSTREAM_DEVICE_ID,
      clientId: e.UPSTREAM_CLIENT_ID,
      protocolVersion: e.UPSTREAM_PROTOCOL_VERSION as ProtocolVersion,
      helloTimeoutMs: e.UPSTREAM_HELLO_TIMEOUT_MS,
      maxMessageBytes: e.UPSTREAM_MAX_MESSAGE_BYTES,
      stallTimeoutMs: e.UPSTREAM_STALL_TIMEOUT_MS,
      reconnect: { attempts: e.UPSTREAM_RECONNECT_ATTEMPTS, baseMs: e.UPSTREAM_RECONNECT_BASE_MS, maxMs: e.UPSTREAM_RECONNECT_MAX_MS },
      ota: {
        url: e.UPSTREAM_OTA_URL,
        timeoutMs: e.UPSTREAM_OTA_TIMEOUT_MS,
        maxAgeMs: e.UPSTREAM_OTA_MAX_AGE_MS,
        activationVersion: e.UPSTREAM_ACTIVATION_VERSION,
        activationTimeoutMs: e.ACTIVATION_TIMEOUT_MS,
        activationPollMs: e.ACTIVATION_POLL_MS,
      },
    },
    store: { dataDir: e.DATA_DIR, databaseUrl: e.DATABASE_URL },
    webEnabled: e.WEB_ENABLED,
    workers: e.WORKERS,
    limits: {
      maxSessions: e.MAX_SESSIONS,
      maxFrameBytes: e.MAX_FRAME_BYTES,
      helloTimeoutMs: e.HELLO_TIMEOUT_MS,
      idleTimeoutMs: e.IDLE_TIMEOUT_MS,
      drainDeadlineMs: e.DRAIN_DEADLINE_MS,
    },
    admission: { maxLagMs: e.ADMISSION_MAX_LAG_MS, maxLatenessMs: e.ADMISSION_MAX_LATENESS_MS },
    sink: {
      highWaterBytes: e.SOCKET_HIGH_WATER_BYTES,
      queueLimitMs: e.QUEUE_LIMIT_MS,
      maxQueuedMessages: e.QUEUE_MAX_MESSAGES,
      policy: e.SLOW_CLIENT_POLICY,
      sessionBufferBytes: e.SESSION_BUFFER_BYTES,
    },
    sim: { reply: e.SIM_REPLY, provisioning: e.SIM_PROVISIONING, authKey: e.SIM_AUTH_KEY },
  };
}
