import { Kysely, PostgresDialect } from 'kysely';
import { Pool, types } from 'pg';
import type { Database } from './schema';

// int8 (counts, identity ids) stays a string by default in pg; counts we read are small, so parse them.
types.setTypeParser(types.builtins.INT8, (v) => Number(v));

export interface DatabaseHandle {
  readonly db: Kysely<Database>;
  readonly pool: Pool;
  /** Ends the pool; safe to call twice. */
  close(): Promise<void>;
}

export interface DatabaseOptions {
  url: string;
  poolSize: number;
  /** Bound on waiting for a connection, so a slow or saturated database fails requests instead of hanging them. */
  connectTimeoutMs: number;
  applicationName?: string;
}

/** Opens a Kysely instance over a bounded pg Pool. */
export function openDatabase(opts: DatabaseOptions): DatabaseHandle {
  const pool = new Pool({
    connectionString: opts.url,
    max: opts.poolSize,
    connectionTimeoutMillis: opts.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: opts.applicationName ?? 'callback-reconciler',
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on('error', () => undefined);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  let closed: Promise<void> | undefined;
  return {
    db,
    pool,
    close: () => (closed ??= db.destroy()),
  };
}
