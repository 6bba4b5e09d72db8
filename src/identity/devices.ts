import { createHash, randomBytes, randomUUID } from 'node:crypto';

// Which xiaozhi device a user speaks as. Servers bind a device to an account by its Device-Id (a MAC),
// and the token they hand out signs Client-Id and Device-Id together, so both must stay the same for
// as long as the user exists: a new MAC is a new, unbound device, and the assistant forgets the user.

/** The `websocket` section of the device's latest OTA answer: where it connects, and with which token. */
export interface DeviceEndpoint {
  url: string;
  /** Absent when the server hands out none (authentication off). */
  token: string | undefined;
  /** Epoch ms: how old the token is decides when the OTA request is made again. */
  fetchedAt: number;
}

export interface Device {
  user: string;
  /** A locally administered unicast MAC, lowercase and colon-separated, as the firmware sends it. */
  deviceId: string;
  /** A UUID v4, kept like the firmware keeps it in NVS. */
  clientId: string;
  /** For activation version 2, in py-xiaozhi's format: SN-<8 hex of MD5(mac)>-<mac without colons>. */
  serialNumber: string;
  /** For activation version 2: 64 hex characters, used as a UTF-8 key over the server's challenge. */
  hmacKey: string;
  /** Epoch ms of the activation this device completed; undefined until the server stops asking. */
  activatedAt: number | undefined;
  endpoint: DeviceEndpoint | undefined;
  /** Epoch ms. */
  createdAt: number;
}

/**
 * A session's own Device-Id, for a client without a user: the upstream keys conversation memory by it,
 * so two sessions must never share one. A locally administered unicast MAC, as no real device has.
 */
export function deviceIdFor(sessionId: string): string {
  return macOf(createHash('sha256').update(sessionId).digest().subarray(0, 6));
}

/** Locally administered (bit 1) and unicast (bit 0 clear): never a real vendor's address. */
function macOf(bytes: Buffer): string {
  bytes[0] = (bytes[0]! & 0xfe) | 0x02;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A fresh identity, not yet known to any server; `deviceId` when the MAC is decided elsewhere. */
export function newDevice(user: string, deviceId = macOf(randomBytes(6)), now = Date.now()): Device {
  const bare = deviceId.replaceAll(':', '');
  return {
    user,
    deviceId,
    clientId: randomUUID(),
    serialNumber: `SN-${createHash('md5').update(bare).digest('hex').slice(0, 8).toUpperCase()}-${bare}`,
    hmacKey: randomBytes(32).toString('hex'),
    activatedAt: undefined,
    endpoint: undefined,
    createdAt: now,
  };
}

/**
 * Where devices are kept: SQLite in DATA_DIR for one instance, PostgreSQL for several, so that any
 * instance serves any user with the same identity. Every method rejects with a StoreError when the
 * database fails; nothing else is thrown.
 */
export interface DeviceStore {
  /** The user's device, made on first use. Concurrent calls, from any instance, all get the one that was kept. */
  deviceFor(user: string): Promise<Device>;
  get(user: string): Promise<Device | undefined>;
  /** Every device, by user. */
  list(): Promise<Device[]>;
  /** Keeps the latest OTA answer's endpoint of the user's device (matched by Device-Id, so a forgotten user's stays forgotten). */
  saveEndpoint(user: string, deviceId: string, endpoint: DeviceEndpoint): Promise<void>;
  /** The server no longer asks this device for activation. */
  markActivated(user: string, deviceId: string, at: number): Promise<void>;
  /** Drops the user's device: their next session is a new device, to be activated again. True if there was one. */
  forget(user: string): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * The user's device, made on first use, by the one rule every store keeps: read; if none, insert a new
 * device where the user is the key (ON CONFLICT DO NOTHING), so that of two instances inserting at once
 * the second inserts nothing; then read the one that was kept. Loops only while another instance forgets
 * the user between the insert and the read.
 */
export async function deviceForUser(user: string, get: (user: string) => Promise<Device | undefined>, insertIfAbsent: (device: Device) => Promise<unknown>): Promise<Device> {
  for (;;) {
    const kept = await get(user);
    if (kept) return kept;
    await insertIfAbsent(newDevice(user));
  }
}

export class StoreError extends Error {
  override name = 'StoreError';
  constructor(
    message: string,
    readonly operation: 'read' | 'write',
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
