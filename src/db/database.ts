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
  /**
   * Server-side bound on every statement (Postgres `statement_timeout`), so a lock or a sick database
   * fails a request instead of holding it and its connection. 0 or absent: none (migrations, admin tools).
   */
  statementTimeoutMs?: number;
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
    // A database host that vanishes without a reset is noticed by TCP keep-alive instead of after hours.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    ...(opts.statementTimeoutMs ? { statement_timeout: opts.statementTimeoutMs, idle_in_transaction_session_timeout: opts.statementTimeoutMs * 2 } : {}),
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on('error', () => undefined);
  // Nor may a checked-out one: pg-pool removes its own listener while a client is lent out, and a client
  // whose socket breaks mid-query (a reset, not a server-sent error) also emits 'error', which with no
  // listener is an uncaught exception that ends the process. The query itself is rejected with the error,
  // so its caller still sees it (503 on the routes); this listener only keeps the process alive.
  pool.on('connect', (client) => client.on('error', () => undefined));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  let closed: Promise<void> | undefined;
  return {
    db,
    pool,
    close: () => (closed ??= db.destroy()),
  };
}

/** How long a client is told to wait (`Retry-After`, seconds) while the database is unavailable. */
export const DATABASE_RETRY_AFTER_SECONDS = 5;

/**
 * SQLSTATEs and driver errors that mean "the database cannot serve right now", not "this request is wrong":
 * connection failures (class 08), shutdown or start-up (57P01-57P03), out of resources (class 53), a
 * statement cut by statement_timeout (57014), and the pool's own connect timeout or shutdown.
 */
const UNAVAILABLE_SQLSTATE = /^(08|53|57P0[123]|57014|40001|40P01|55P03)/;
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);
const UNAVAILABLE_MESSAGES = [
  'timeout exceeded when trying to connect',
  'Connection terminated',
  'Cannot use a pool after calling end',
  'Client has encountered a connection error',
  'Connection terminated unexpectedly',
  'the database system is',
];

/**
 * Sorts a database error for the HTTP answer: `unavailable` (503 with Retry-After), `unstorable` (a
 * value Postgres refused: class 22 data exceptions, 54 program limits; the input checks should have
 * caught it, so this is a backstop) or undefined (a bug: 500). Never exposes the error's text.
 */
export function classifyDatabaseError(err: unknown): 'unavailable' | 'unstorable' | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  const e = err as { code?: unknown; message?: unknown; errors?: unknown };
  const code = typeof e.code === 'string' ? e.code : '';
  if (/^[0-9A-Z]{5}$/.test(code)) {
    if (UNAVAILABLE_SQLSTATE.test(code)) return 'unavailable';
    if (/^(22|54)/.test(code)) return 'unstorable';
    return undefined;
  }
  if (UNAVAILABLE_CODES.has(code)) return 'unavailable';
  // Node's AggregateError (both 127.0.0.1 and ::1 refused) carries the codes inside.
  if (Array.isArray(e.errors) && e.errors.some((inner) => classifyDatabaseError(inner) === 'unavailable')) return 'unavailable';
  const message = typeof e.message === 'string' ? e.message : '';
  return UNAVAILABLE_MESSAGES.some((m) => message.includes(m)) ? 'unavailable' : undefined;
}
