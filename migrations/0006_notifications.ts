import { sql, type Kysely } from 'kysely';

/**
 * The notification outbox: one row per outcome a client asked to be told about (`tasks.notify_url`),
 * written by the same statement as the task's final transition, so a crash can delay a notification but
 * never lose it.
 * - `id` is the `webhook-id` of every attempt. `task_snapshot` is the task row as it was at the
 *   transition, so a retry sends the same body even if the task moved on (expired, then settled).
 * - `next_attempt_at` (when it is due) is kept apart from the lease (`lease_owner`, `lease_expires_at`:
 *   who is attempting it until when), so moving the due time (a redelivery) never breaks a claim.
 * - `host` groups attempts per receiver for the per-host bound and breaker; it is not a security check.
 * - The due-work index is partial on `pending`, so claiming stays cheap as delivered rows pile up.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('notifications')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('task_id', 'uuid', (c) => c.notNull().references('tasks.id').onDelete('cascade'))
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('url', 'text', (c) => c.notNull())
    .addColumn('host', 'text', (c) => c.notNull())
    .addColumn('task_snapshot', 'jsonb', (c) => c.notNull())
    .addColumn('occurred_at', 'timestamptz', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull().check(sql`status in ('pending','delivered','failed','gone')`))
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('last_status_code', 'integer')
    .addColumn('last_error', 'text')
    .addColumn('next_attempt_at', 'timestamptz')
    .addColumn('lease_owner', 'text')
    .addColumn('lease_expires_at', 'timestamptz')
    .addColumn('delivered_at', 'timestamptz')
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('updated_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await sql`create index notifications_due_idx on notifications (next_attempt_at) where status = 'pending'`.execute(db);
  await sql`create index notifications_task_idx on notifications (task_id, created_at)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.dropTable('notifications').execute();
}
