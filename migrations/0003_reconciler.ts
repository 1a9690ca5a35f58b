import { sql, type Kysely } from 'kysely';

/**
 * What the reconciler shares across replicas.
 * - `partner_rate_limits`: the store of rate-limiter-flexible's RateLimiterPostgres (its own layout,
 *   created here so every table is under migrations), one row per partner and window.
 * - `cron_runs`: one row per cluster-wide job and tick; the replica whose insert wins runs it.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create table partner_rate_limits (
    key varchar(255) primary key,
    points integer not null default 0,
    expire bigint
  )`.execute(db);
  await db.schema
    .createTable('cron_runs')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('owner', 'text', (c) => c.notNull())
    .addColumn('started_at', 'timestamptz', (c) => c.notNull())
    .execute();
  await sql`create index cron_runs_started_idx on cron_runs (started_at)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.dropTable('cron_runs').execute();
  await db.schema.dropTable('partner_rate_limits').execute();
}
