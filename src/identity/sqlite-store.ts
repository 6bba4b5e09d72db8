import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { deviceForUser, StoreError, type Device, type DeviceStore } from './devices.ts';
import { MIGRATIONS, SCHEMA_VERSION_TABLE, toDevice, type DeviceRow } from './migrations.ts';

// SQLite in DATA_DIR, for one instance. Each worker thread opens its own connection to the file: WAL
// lets them read while one writes, and busy_timeout makes a writer wait its turn rather than fail.
// better-sqlite3 is synchronous: a waiting writer stalls its whole thread, audio included, so the wait
// is short. Writes are rare (a new user, a new OTA answer), and a write that fails only costs an OTA
// request next time.
const BUSY_TIMEOUT_MS = 200;

export function openSqliteStore(file: string): DeviceStore {
  let db: Database.Database;
  try {
    db = open(file);
  } catch (cause) {
    throw new StoreError(`cannot open the device store at ${file}: ${message(cause)}`, 'write', { cause });
  }
  const select = db.prepare<[string], DeviceRow>('SELECT * FROM devices WHERE user_name = ?');
  const selectAll = db.prepare<[], DeviceRow>('SELECT * FROM devices ORDER BY user_name');
  // The user is the key: of two connections inserting at once, the second inserts nothing and reads the first's.
  const insert = db.prepare<[Device]>(
    `INSERT INTO devices (user_name, device_id, client_id, serial_number, hmac_key, created_at)
     VALUES (@user, @deviceId, @clientId, @serialNumber, @hmacKey, @createdAt) ON CONFLICT (user_name) DO NOTHING`,
  );
  const updateEndpoint = db.prepare<[string, string | null, number, string, string]>(
    'UPDATE devices SET endpoint_url = ?, endpoint_token = ?, endpoint_fetched_at = ? WHERE user_name = ? AND device_id = ?',
  );
  const updateActivated = db.prepare<[number, string, string]>('UPDATE devices SET activated_at = ? WHERE user_name = ? AND device_id = ?');
  const remove = db.prepare<[string]>('DELETE FROM devices WHERE user_name = ?');

  const attempt = <T>(operation: 'read' | 'write', work: () => T): Promise<T> => {
    try {
      return Promise.resolve(work());
    } catch (cause) {
      return Promise.reject(new StoreError(`cannot ${operation} the device store at ${file}: ${message(cause)}`, operation, { cause }));
    }
  };
  const get = (user: string) =>
    attempt('read', () => {
      const row = select.get(user);
      return row && toDevice(row);
    });

  return {
    get,
    deviceFor: (user) => deviceForUser(user, get, (d) => attempt('write', () => insert.run(d))),
    list: () => attempt('read', () => selectAll.all().map(toDevice)),
    saveEndpoint: (user, deviceId, endpoint) =>
      attempt('write', () => {
        updateEndpoint.run(endpoint.url, endpoint.token ?? null, endpoint.fetchedAt, user, deviceId);
      }),
    markActivated: (user, deviceId, at) =>
      attempt('write', () => {
        updateActivated.run(at, user, deviceId);
      }),
    forget: (user) => attempt('write', () => remove.run(user).changes > 0),
    close: async () => {
      db.close();
    },
  };
}

function open(file: string): Database.Database {
  mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  try {
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.pragma('journal_mode = WAL');
    // IMMEDIATE takes the write lock first, so threads opening a new file at once migrate it one after another.
    db.transaction(() => {
      db.exec(SCHEMA_VERSION_TABLE);
      const { version } = db.prepare('SELECT COALESCE(MAX(version), 0) AS version FROM schema_version').get() as { version: number };
      MIGRATIONS.slice(version).forEach((sql, i) => {
        db.exec(sql);
        db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(version + i + 1);
      });
    }).immediate();
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
