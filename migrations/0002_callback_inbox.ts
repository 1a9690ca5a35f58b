import { sql, type Kysely } from 'kysely';

/**
 * Every authenticated partner callback is stored here before it is acted on.
 * - `(partner, webhook_id)` is unique: a redelivery is recognised by the constraint, even when two copies
 *   arrive at the same instant.
 * - `task_id` is set exactly once, by whoever applies the callback (the callback handler, task creation,
 *   or the safety net); the partial index keeps the search for unmatched callbacks cheap.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('callback_inbox')
    .addColumn('id', 'bigint', (c) => c.primaryKey().generatedAlwaysAsIdentity())
    .addColumn('partner', 'text', (c) => c.notNull())
    .addColumn('webhook_id', 'text', (c) => c.notNull())
    .addColumn('request_no', 'text')
    .addColumn('reported_status', 'text', (c) => c.check(sql`reported_status in ('processing','succeeded','failed')`))
    .addColumn('result', 'jsonb')
    .addColumn('error', 'jsonb')
    .addColumn('raw_body', 'text', (c) => c.notNull())
    .addColumn('received_at', 'timestamptz', (c) => c.notNull())
    .addColumn('outcome', 'text', (c) =>
      c.notNull().check(sql`outcome in ('queued','applied','ignored','conflict','unreadable')`),
    )
    .addColumn('task_id', 'uuid', (c) => c.references('tasks.id').onDelete('set null'))
    .addColumn('matched_at', 'timestamptz')
    .addUniqueConstraint('callback_inbox_partner_webhook_id_key', ['partner', 'webhook_id'])
    .execute();
  await sql`create index callback_inbox_unmatched_idx on callback_inbox (partner, request_no) where outcome = 'queued'`.execute(db);
  await sql`create index callback_inbox_received_idx on callback_inbox (received_at)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.dropTable('callback_inbox').execute();
}
