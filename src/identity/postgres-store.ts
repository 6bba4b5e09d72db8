import pg from 'pg';
import { deviceForUser, StoreError, type DeviceStore } from './devices.ts';
import { MIGRATIONS, SCHEMA_VERSION_TABLE, toDevice, type DeviceRow } from './migrations.ts';

// PostgreSQL, shared by every instance (and every worker thread of each), so that any of them serves a
// user with the same identity. Each opens a small pool: the store is read once per session.

/** Any fixed number, the same in every instance: instances starting at once take turns to migrate. */
const MIGRATION_LOCK = 0x766f6963;

export async function openPostgresStore(url: string): Promise<DeviceStore> {
  const where = withoutPassword(url);
  // A server that stops answering must fail the sessions waiting on it, not hold them forever.
  const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 5000, query_timeout: 5000, keepAlive: true });
  // A broken idle connection (the server restarted) is reported here; unheard, it would end the process.
  // The pool has already dropped that client: the next query connects afresh, or fails as a StoreError.
  pool.on('error', () => {});

  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (cause) {
    await pool.end();
    throw new StoreError(`cannot reach PostgreSQL at ${where}: ${reason(cause)}`, 'read', { cause });
  }
  try {
    await migrate(client);
    client.release();
  } catch (cause) {
    // Dropping the connection rolls the transaction back.
    client.release(true);
    await pool.end();
    throw new StoreError(`cannot set up the device store in PostgreSQL at ${where}: ${reason(cause)}`, 'write', { cause });
  }

  const query = async <R extends pg.QueryResultRow>(operation: 'read' | 'write', text: string, values: unknown[] = []) => {
    try {
      return await pool.query<R>(text, values);
    } catch (cause) {
      throw new StoreError(`cannot ${operation} the device store in PostgreSQL at ${where}: ${reason(cause)}`, operation, { cause });
    }
  };
  const get = async (user: string) => {
    const { rows } = await query<DeviceRow>('read', 'SELECT * FROM devices WHERE user_name = $1', [user]);
    return rows[0] && toDevice(rows[0]);
  };
  let ending: Promise<void> | undefined;

  return {
    get,
    deviceFor: (user) =>
      deviceForUser(user, get, (d) =>
        query(
          'write',
          `INSERT INTO devices (user_name, device_id, client_id, serial_number, hmac_key, created_at)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_name) DO NOTHING`,
          [d.user, d.deviceId, d.clientId, d.serialNumber, d.hmacKey, d.createdAt],
        ),
      ),
    // COLLATE "C": the same order as SQLite's, whatever the database's locale.
    list: async () => (await query<DeviceRow>('read', 'SELECT * FROM devices ORDER BY user_name COLLATE "C"')).rows.map(toDevice),
    async saveEndpoint(user, deviceId, endpoint) {
      await query(
        'write',
        'UPDATE devices SET endpoint_url = $1, endpoint_token = $2, endpoint_fetched_at = $3 WHERE user_name = $4 AND device_id = $5',
        [endpoint.url, endpoint.token ?? null, endpoint.fetchedAt, user, deviceId],
      );
    },
    async markActivated(user, deviceId, at) {
      await query('write', 'UPDATE devices SET activated_at = $1 WHERE user_name = $2 AND device_id = $3', [at, user, deviceId]);
    },
    forget: async (user) => ((await query('write', 'DELETE FROM devices WHERE user_name = $1', [user])).rowCount ?? 0) > 0,
    close: () => (ending ??= pool.end()),
  };
}

async function migrate(client: pg.PoolClient): Promise<void> {
  await client.query('BEGIN');
  // Before CREATE TABLE IF NOT EXISTS, which two sessions running at once can both attempt and one fail.
  await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
  await client.query(SCHEMA_VERSION_TABLE);
  const { rows } = await client.query<{ version: number }>('SELECT COALESCE(MAX(version), 0) AS version FROM schema_version');
  const version = rows[0]!.version;
  for (const [i, sql] of MIGRATIONS.slice(version).entries()) {
    await client.query(sql);
    await client.query('INSERT INTO schema_version (version) VALUES ($1)', [version + i + 1]);
  }
  await client.query('COMMIT');
}

/** The URL as logs may show it: no password, and no query string, which can carry one too. */
function withoutPassword(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.username === '' ? '' : `${u.username}@`}${u.host}${u.pathname}`;
}

/** Node reports a connection refused on every address of a name as an AggregateError without a message. */
function reason(error: unknown): string {
  if (error instanceof AggregateError && error.message === '') return error.errors.map(reason).join('; ');
  return error instanceof Error ? error.message : String(error);
}
