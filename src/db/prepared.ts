import { createHash } from 'node:crypto';
import { CompiledQuery, type Kysely, type RawBuilder } from 'kysely';
import type { Pool, QueryConfig, QueryResult } from 'pg';

/**
 * Runs a hot single statement as a named prepared statement, so Postgres parses and plans it once per
 * connection instead of on every call. Measured: planning the status-change CTE took ~0.28 ms against
 * ~0.09 ms of execution. The name is a hash of the SQL text, so each shape of a statement gets its own.
 * Without a pool (repositories built in tests) it runs the ordinary way.
 */
export async function runPrepared<R>(db: Kysely<any>, pool: Pool | undefined, query: RawBuilder<R>): Promise<{ rows: R[]; rowCount: number }> {
  if (!pool) {
    const r = await query.execute(db);
    return { rows: r.rows, rowCount: Number(r.numAffectedRows ?? r.rows.length) };
  }
  const compiled = query.compile(db);
  const name = `cr_${createHash('sha1').update(compiled.sql).digest('base64url').slice(0, 24)}`;
  const r = await queryRetryingConflicts<R & object>(pool, { name, text: compiled.sql, values: compiled.parameters as unknown[] });
  return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
}

/**
 * Runs hand-written SQL (no query builder compile on the hot path) as the named prepared statement
 * `name`. Without a pool it runs through Kysely, unprepared.
 */
export async function runRaw<R>(db: Kysely<any>, pool: Pool | undefined, name: string, text: string, values: unknown[]): Promise<{ rows: R[]; rowCount: number }> {
  if (!pool) {
    const r = await db.executeQuery<R>(CompiledQuery.raw(text, values));
    return { rows: r.rows, rowCount: Number(r.numAffectedRows ?? r.rows.length) };
  }
  const r = await queryRetryingConflicts<R & object>(pool, { name, text, values });
  return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
}

/** How many times a statement that hit a deadlock or a serialization failure is run again. */
export const CONFLICT_RETRIES = 2;

/** 40P01 deadlock detected, 40001 serialization failure: the statement was rolled back whole. */
export function isConcurrencyConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '40P01' || code === '40001';
}

/**
 * A statement on the pool runs in its own implicit transaction, so one rolled back by a deadlock or a
 * serialization failure left nothing behind and says nothing about its data: it is run again (up to
 * {@link CONFLICT_RETRIES} times) rather than failing every caller of a batch.
 */
async function queryRetryingConflicts<R extends object>(pool: Pool, config: QueryConfig): Promise<QueryResult<R>> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await pool.query<R>(config);
    } catch (err) {
      if (attempt >= CONFLICT_RETRIES || !isConcurrencyConflict(err)) throw err;
    }
  }
}
