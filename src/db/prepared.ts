import { createHash } from 'node:crypto';
import { CompiledQuery, type Kysely, type RawBuilder } from 'kysely';
import type { Pool } from 'pg';

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
  const r = await pool.query<R & object>({ name, text: compiled.sql, values: compiled.parameters as unknown[] });
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
  const r = await pool.query<R & object>({ name, text, values });
  return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
}
