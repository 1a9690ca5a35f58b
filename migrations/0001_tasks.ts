import { sql, type Kysely } from 'kysely';

/**
 * Tasks and their audit trail.
 * - `(partner, request_no)` is unique: idempotent create relies on the constraint, never on a check-then-insert.
 * - Listing is keyset on `(created_at, id)`, optionally narrowed by partner or status.
 * - Every index is rewritten by every status change (they are not HOT updates), so there are few.
 * - The due-work index is partial on open statuses, so the reconciler's claim cost stays flat as settled
 *   tasks accumulate.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('tasks')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('partner', 'text', (c) => c.notNull())
    .addColumn('request_no', 'text', (c) => c.notNull())
    .addColumn('kind', 'text')
    .addColumn('status', 'text', (c) =>
      c.notNull().check(sql`status in ('pending','dispatched','succeeded','failed','rejected','expired')`),
    )
    .addColumn('payload', 'jsonb', (c) => c.notNull())
    .addColumn('result', 'jsonb')
    .addColumn('error', 'jsonb')
    .addColumn('notify_url', 'text')
    .addColumn('metadata', 'jsonb')
    .addColumn('body_hash', 'text', (c) => c.notNull())
    .addColumn('dispatch_attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('check_attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('last_dispatch_outcome', 'text')
    .addColumn('settled_by', 'text')
    .addColumn('next_check_at', 'timestamptz')
    .addColumn('lease_owner', 'text')
    .addColumn('lease_expires_at', 'timestamptz')
    .addColumn('expires_at', 'timestamptz', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('updated_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('dispatched_at', 'timestamptz')
    .addColumn('completed_at', 'timestamptz')
    .addUniqueConstraint('tasks_partner_request_no_key', ['partner', 'request_no'])
    .execute();

  await sql`create index tasks_created_idx on tasks (created_at desc, id desc)`.execute(db);
  await sql`create index tasks_due_idx on tasks (next_check_at) where status in ('pending','dispatched')`.execute(db);
  // Listing by a status that needs attention stays fast at millions of rows. Common statuses and partner
  // filters walk tasks_created_idx newest first. Full (status, …) and (partner, …) indexes would be
  // rewritten by every status change (they are not HOT updates) for a filter the hot path never uses.
  await sql`create index tasks_attention_idx on tasks (status, created_at desc, id desc)
            where status in ('failed','rejected','expired')`.execute(db);

  await db.schema
    .createTable('task_events')
    .addColumn('id', 'bigint', (c) => c.primaryKey().generatedAlwaysAsIdentity())
    .addColumn('task_id', 'uuid', (c) => c.notNull().references('tasks.id').onDelete('cascade'))
    .addColumn('at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('from_status', 'text')
    .addColumn('to_status', 'text', (c) => c.notNull())
    .addColumn('source', 'text', (c) =>
      c.notNull().check(sql`source in ('api','dispatch','callback','poll','manual','expiry')`),
    )
    .addColumn('detail', 'jsonb')
    .execute();
  await sql`create index task_events_task_idx on task_events (task_id, id)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.dropTable('task_events').execute();
  await db.schema.dropTable('tasks').execute();
}
