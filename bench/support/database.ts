import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { startEmbeddedPostgres } from '../../src/db/embedded-postgres';

/** A database created for one scenario (or one variant of it); `drop()` is idempotent. */
export interface FreshDatabase {
  readonly name: string;
  readonly url: string;
  drop(): Promise<void>;
}

/** The Postgres server the benchmarks run against. */
export interface BenchPostgres {
  /** Where it came from: `BENCH_DATABASE_URL` or `embedded`. */
  readonly source: string;
  /** The admin URL with any password masked, for the report. */
  readonly displayUrl: string;
  /** `select version()`. */
  readonly version: string;
  /** `create database bench_<random>`; the caller (or its teardown) drops it. */
  createDatabase(prefix?: string): Promise<FreshDatabase>;
  /** Runs one query on a short-lived connection to `url`. */
  query<T extends Record<string, unknown>>(url: string, text: string, values?: unknown[]): Promise<T[]>;
  /** Drops every database still created by this run, and stops the embedded server if any. */
  close(): Promise<void>;
}

export function databaseUrl(adminUrl: string, name: string): string {
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

function mask(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = '***';
  return u.toString();
}

async function query<T extends Record<string, unknown>>(url: string, text: string, values?: unknown[]): Promise<T[]> {
  const client = new Client({ connectionString: url, application_name: 'bench' });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/**
 * `BENCH_DATABASE_URL` when set; otherwise an embedded PostgreSQL in a temporary directory (removed on
 * close), so `npm run bench` works with Node alone.
 */
export async function openBenchPostgres(log: (m: string) => void): Promise<BenchPostgres> {
  let adminUrl = process.env['BENCH_DATABASE_URL'];
  let source = 'BENCH_DATABASE_URL';
  let stopEmbedded: (() => Promise<void>) | undefined;
  if (!adminUrl) {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'bench-pg-'));
    log(`BENCH_DATABASE_URL not set: starting an embedded PostgreSQL in ${dir}`);
    const embedded = await startEmbeddedPostgres(dir);
    adminUrl = embedded.url;
    source = 'embedded';
    stopEmbedded = async () => {
      await embedded.stop();
      await rm(dir, { recursive: true, force: true });
    };
  }
  let version: string;
  try {
    version = String((await query<{ version: string }>(adminUrl, 'select version()'))[0]?.version);
  } catch (err) {
    await stopEmbedded?.();
    throw new Error(
      `cannot reach Postgres at ${mask(adminUrl)}: ${(err as Error).message}` +
        (source === 'BENCH_DATABASE_URL' ? ' (is it running? e.g. pg_ctlcluster --skip-systemctl-redirect 15 main start)' : ''),
    );
  }

  const live = new Map<string, FreshDatabase>();
  const admin = adminUrl;
  return {
    source,
    displayUrl: mask(adminUrl),
    version,
    query,
    async createDatabase(prefix = 'bench') {
      const name = `${prefix}_${randomBytes(5).toString('hex')}`;
      await query(admin, `create database ${name}`);
      let dropped: Promise<void> | undefined;
      const db: FreshDatabase = {
        name,
        url: databaseUrl(admin, name),
        drop: () =>
          (dropped ??= (async () => {
            live.delete(name);
            await query(admin, `drop database if exists ${name} with (force)`);
          })()),
      };
      live.set(name, db);
      return db;
    },
    async close() {
      for (const db of [...live.values()]) await db.drop().catch((err: Error) => log(`drop ${db.name} failed: ${err.message}`));
      await stopEmbedded?.();
    },
  };
}
