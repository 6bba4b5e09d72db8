// A real PostgreSQL for tests: Debian's binaries, a new cluster in a temporary directory, on a free
// loopback port, trusting local connections, with durability off (the cluster is thrown away).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';

export interface TestPostgres {
  /** An empty database of its own: postgres://voicegw@127.0.0.1:PORT/test_1. */
  url: string;
  /** Creates another empty database and answers its URL. */
  database(): Promise<string>;
  /** Stops the server (SIGINT to its PID: fast shutdown, clients cut off) and removes its directory. */
  stop(): Promise<void>;
}

const SUPERUSER = 'voicegw';
const ROOT = '/usr/lib/postgresql';
const START_MS = 20_000;

export async function startPostgres(): Promise<TestPostgres> {
  const bin = binaries();
  const dir = mkdtempSync(join(tmpdir(), 'voicegw-pg-'));
  // postgres refuses to run as root.
  const owner = process.getuid?.() === 0 ? unprivilegedUser() : undefined;
  if (owner) chownSync(dir, owner.uid, owner.gid);
  const data = join(dir, 'data');
  try {
    await run(join(bin, 'initdb'), ['-D', data, '-U', SUPERUSER, '--auth=trust', '--locale=C', '-E', 'UTF8', '--no-sync', '--no-instructions'], owner, dir);
    const { server, port } = await serve(join(bin, 'postgres'), data, dir, owner);
    const base = `postgres://${SUPERUSER}@127.0.0.1:${port}`;
    let databases = 0;
    const database = async () => {
      const name = `test_${++databases}`;
      const admin = new pg.Client(`${base}/postgres`);
      await admin.connect();
      try {
        await admin.query(`CREATE DATABASE ${name}`);
      } finally {
        await admin.end();
      }
      return `${base}/${name}`;
    };
    let stopping: Promise<void> | undefined;
    const stop = () =>
      (stopping ??= (async () => {
        if (server.exitCode === null && server.signalCode === null) {
          const exited = once(server, 'exit');
          server.kill('SIGINT');
          await exited;
        }
        process.off('exit', orphaned);
        rmSync(dir, { recursive: true, force: true });
      })());
    // If the test process ends without stop(), the server must not outlive it.
    const orphaned = () => server.kill('SIGQUIT');
    process.once('exit', orphaned);
    return { url: await database(), database, stop };
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

/** The newest of Debian's installed versions, /usr/lib/postgresql/<version>/bin. */
function binaries(): string {
  const versions = existsSync(ROOT) ? readdirSync(ROOT).filter((v) => existsSync(join(ROOT, v, 'bin', 'postgres'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (newest === undefined) throw new Error(`no PostgreSQL in ${ROOT}/<version>/bin: install Debian's postgresql package (.ci/run does)`);
  return join(ROOT, newest, 'bin');
}

interface Owner {
  uid: number;
  gid: number;
}

function unprivilegedUser(): Owner {
  for (const name of ['postgres', 'nobody']) {
    try {
      const id = (flag: string) => Number(execFileSync('id', [flag, name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
      return { uid: id('-u'), gid: id('-g') };
    } catch {
      // No such user: try the next.
    }
  }
  throw new Error('postgres refuses to run as root, and there is neither a postgres nor a nobody user to run it as');
}

function run(file: string, args: string[], owner: Owner | undefined, cwd: string): Promise<void> {
  const child = spawn(file, args, { ...owner, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${file} exited with ${code}:\n${output}`))));
  });
}

/** Starts postgres on a free port, trying another should some other process take it first. */
async function serve(file: string, data: string, sockets: string, owner: Owner | undefined): Promise<{ server: ChildProcess; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const server = spawn(file, ['-D', data, '-h', '127.0.0.1', '-p', String(port), '-k', sockets, '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'], {
      ...owner,
      cwd: sockets,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    server.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    try {
      await ready(server, port, () => log);
      return { server, port };
    } catch (error) {
      if (server.exitCode === null && server.signalCode === null) {
        server.kill('SIGQUIT');
        await once(server, 'exit');
      }
      if (attempt === 3 || !log.includes('could not bind')) throw error;
    }
  }
}

/** Polls with real connections until the server takes one, or has exited, or START_MS has passed. */
async function ready(server: ChildProcess, port: number, log: () => string): Promise<void> {
  const deadline = Date.now() + START_MS;
  for (;;) {
    const client = new pg.Client({ host: '127.0.0.1', port, user: SUPERUSER, database: 'postgres' });
    try {
      await client.connect();
      await client.end();
      return;
    } catch (error) {
      if (server.exitCode !== null || server.signalCode !== null) throw new Error(`postgres exited before it took a connection:\n${log()}`);
      if (Date.now() > deadline) throw new Error(`postgres took no connection within ${START_MS} ms (${(error as Error).message}):\n${log()}`);
    }
    await delay(25);
  }
}

/** A loopback port nothing listens on: opened, then closed. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
