import type { Device } from './devices.ts';

// The device table, the same in SQLite and PostgreSQL. Each migration runs once, in order, and its
// number (its place in the list, from 1) is recorded in schema_version: add new ones at the end, never
// edit one that has shipped.

export const SCHEMA_VERSION_TABLE = 'CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)';

export const MIGRATIONS: readonly string[] = [
  // Times are epoch ms. device_id is unique too: two users sharing a MAC would share one upstream device.
  `CREATE TABLE devices (
    user_name TEXT PRIMARY KEY,
    device_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    hmac_key TEXT NOT NULL,
    activated_at BIGINT,
    endpoint_url TEXT,
    endpoint_token TEXT,
    endpoint_fetched_at BIGINT,
    created_at BIGINT NOT NULL
  )`,
];

/** A devices row; PostgreSQL hands BIGINT columns back as strings. */
export interface DeviceRow {
  user_name: string;
  device_id: string;
  client_id: string;
  serial_number: string;
  hmac_key: string;
  activated_at: number | string | null;
  endpoint_url: string | null;
  endpoint_token: string | null;
  endpoint_fetched_at: number | string | null;
  created_at: number | string;
}

export function toDevice(row: DeviceRow): Device {
  return {
    user: row.user_name,
    deviceId: row.device_id,
    clientId: row.client_id,
    serialNumber: row.serial_number,
    hmacKey: row.hmac_key,
    activatedAt: row.activated_at === null ? undefined : Number(row.activated_at),
    endpoint:
      row.endpoint_url === null
        ? undefined
        : { url: row.endpoint_url, token: row.endpoint_token ?? undefined, fetchedAt: Number(row.endpoint_fetched_at) },
    createdAt: Number(row.created_at),
  };
}
