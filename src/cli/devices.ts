import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config.ts';
import { StoreError, type Device } from '../identity/devices.ts';
import { openDeviceStore } from '../identity/store.ts';

const USAGE = `usage: npm run devices -- list | show USER | forget USER

The upstream device each user speaks as, in the store the environment names
(DATABASE_URL, else DATA_DIR/devices.sqlite).

  list          every user's device
  show USER     one user's device, and how old its token is
  forget USER   drops the user's device: their next session is a new device,
                which the server asks to be activated again`;

// Neither list nor show prints the HMAC key or the token: either lets someone speak as the device.

async function main(args: string[]): Promise<number> {
  let positionals: string[];
  try {
    const parsed = parseArgs({ args, allowPositionals: true, options: { help: { type: 'boolean', short: 'h' } } });
    if (parsed.values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    positionals = parsed.positionals;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const [command, user, ...extra] = positionals;
  const valid = extra.length === 0 && (command === 'list' ? user === undefined : (command === 'show' || command === 'forget') && user !== undefined);
  if (!valid) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }

  const store = await openDeviceStore(loadConfig().store);
  try {
    if (command === 'list') {
      process.stdout.write(table(await store.list()));
      return 0;
    }
    if (command === 'show') {
      const device = await store.get(user!);
      if (device === undefined) return missing(user!);
      process.stdout.write(details(device));
      return 0;
    }
    if (!(await store.forget(user!))) return missing(user!);
    process.stdout.write(`forgot ${user}\n`);
    return 0;
  } finally {
    await store.close();
  }
}

function missing(user: string): number {
  process.stderr.write(`${user} has no device\n`);
  return 1;
}

function table(devices: Device[]): string {
  if (devices.length === 0) return 'no devices\n';
  const now = Date.now();
  const rows = [
    ['USER', 'DEVICE ID', 'CLIENT ID', 'CREATED', 'ACTIVATED', 'TOKEN'],
    ...devices.map((d) => [d.user, d.deviceId, d.clientId, time(d.createdAt), time(d.activatedAt), token(d, now)]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

function details(d: Device): string {
  const lines = [
    ['user', d.user],
    ['device id', d.deviceId],
    ['client id', d.clientId],
    ['serial number', d.serialNumber],
    ['created', time(d.createdAt)],
    ['activated', time(d.activatedAt)],
    ['endpoint', d.endpoint?.url ?? '-'],
    ['token', token(d, Date.now())],
  ];
  return lines.map(([k, v]) => `${k!.padEnd(15)}${v}`).join('\n') + '\n';
}

function time(at: number | undefined): string {
  return at === undefined ? '-' : new Date(at).toISOString().replace(/\.\d+Z$/, 'Z');
}

/** How old the token is, which decides when the OTA request is made again; never the token. */
function token({ endpoint }: Device, now: number): string {
  if (endpoint === undefined) return '-';
  if (endpoint.token === undefined) return 'none handed out';
  const s = Math.max(0, Math.round((now - endpoint.fetchedAt) / 1000));
  const age = s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : s < 172_800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86_400)} d`;
  return `${age} old`;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (!(error instanceof StoreError || error instanceof ConfigError)) throw error;
    process.stderr.write(`${error.message}\n`);
    process.exitCode = 1;
  },
);
