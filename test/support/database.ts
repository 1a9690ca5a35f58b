import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { openDatabase, type DatabaseHandle } from '../../src/db/database';
import { TEST_ENV } from './test-env';

export interface TestDatabase {
  url: string;
  name: string;
  /** A small pool for the test's own assertions. */
  handle: DatabaseHandle;
  drop(): Promise<void>;
}

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the tests through jest (global setup prepares the database)`);
  return v;
}

/** A fresh, migrated database for one test file, cloned from the run's template. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = env(TEST_ENV.adminUrl);
  const name = `cr_${env(TEST_ENV.runId)}_${randomBytes(4).toString('hex')}`;
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name} template ${env(TEST_ENV.template)}`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  const url = u.toString();
  const handle = openDatabase({ url, poolSize: 4, connectTimeoutMs: 10_000 });
  return {
    url,
    name,
    handle,
    drop: async () => {
      await handle.close();
      const c = new Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`drop database if exists ${name} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}
