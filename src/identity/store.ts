import { join } from 'node:path';
import type { Config } from '../config.ts';
import type { DeviceStore } from './devices.ts';
import { openPostgresStore } from './postgres-store.ts';
import { openSqliteStore } from './sqlite-store.ts';

/**
 * The device store the configuration names: PostgreSQL when DATABASE_URL is set, else SQLite at
 * `<DATA_DIR>/devices.sqlite`. Its schema is brought up to date here; a database that cannot be opened
 * is a StoreError naming it (never with a password).
 */
export async function openDeviceStore(store: Config['store']): Promise<DeviceStore> {
  if (store.databaseUrl !== undefined) return openPostgresStore(store.databaseUrl);
  return openSqliteStore(join(store.dataDir, 'devices.sqlite'));
}
