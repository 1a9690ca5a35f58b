import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { openDatabase } from '../../src/db/database';
import { migrateToLatest } from '../../src/db/migrator';
import { startEmbeddedPostgres } from '../../src/db/embedded-postgres';
import { TEST_ENV, type TestDatabaseServer } from './test-env';

declare global {
  // eslint-disable-next-line no-var
  var __testDatabaseServer: TestDatabaseServer | undefined;
}

/**
 * Finds a PostgreSQL for the whole run, in this order: TEST_DATABASE_URL; a testcontainers PostgreSQL
 * when Docker answers; an embedded PostgreSQL in a temporary folder. Then builds one migrated template
 * database that every test file clones, so files run in parallel on databases of their own.
 */
export default async function globalSetup(): Promise<void> {
  const server = await findServer();
  globalThis.__testDatabaseServer = server;
  const runId = `${process.pid}_${Date.now().toString(36)}`;
  const template = `cr_tpl_${runId}`;
  const admin = new Client({ connectionString: server.adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${template}`);
  } finally {
    await admin.end();
  }
  const handle = openDatabase({ url: withDatabase(server.adminUrl, template), poolSize: 2, connectTimeoutMs: 10_000 });
  try {
    await migrateToLatest(handle.db);
  } finally {
    await handle.close();
  }
  process.env[TEST_ENV.adminUrl] = server.adminUrl;
  process.env[TEST_ENV.template] = template;
  process.env[TEST_ENV.runId] = runId;
  process.stderr.write(`\ntest database: ${server.kind} (template ${template})\n`);
}

async function findServer(): Promise<TestDatabaseServer> {
  const given = process.env.TEST_DATABASE_URL;
  if (given) return { kind: 'TEST_DATABASE_URL', adminUrl: given, stop: async () => undefined };
  try {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('postgres:17-alpine').start();
    return { kind: 'testcontainers', adminUrl: container.getConnectionUri(), stop: async () => void (await container.stop()) };
  } catch (err) {
    process.stderr.write(`\ntestcontainers unavailable (${(err as Error).message.split('\n')[0]}); using embedded PostgreSQL\n`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'cr-test-pg-'));
  // An EmbeddedPostgresError is one line saying what to do (e.g. set TEST_DATABASE_URL); no stack needed.
  const embedded = await startEmbeddedPostgres(dir).catch((err: unknown) => {
    throw new Error(`no database for the tests: ${(err as Error).message}; or set TEST_DATABASE_URL`);
  });
  return { kind: 'embedded', adminUrl: embedded.url, stop: () => embedded.stop() };
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}
