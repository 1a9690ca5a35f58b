import { sql, type Kysely } from 'kysely';

/**
 * What an operator needs to tell a task's whole story, beyond its status events.
 * - `partner_calls`: one row per dispatch attempt and per status query actually sent to a partner, with
 *   its outcome and error class. Routine "still processing" checks write no event row (the audit trail
 *   stays about changes), so without this table an operator could not see that the partner was asked.
 * - `callback_inbox.duplicates`/`last_duplicate_at`: a redelivered callback stores nothing new, but its
 *   arrival is part of the story; counted on the stored row.
 * - `callback_inbox (partner, request_no)`: every callback for a request number, whatever its outcome
 *   (the existing partial index covers only queued ones). Written once at insert, never updated.
 * - `refused_callbacks`: callbacks that failed verification, linked to an existing task only, and at
 *   most a few per task (see the insert), so unauthenticated traffic cannot grow the table without bound.
 *   Their bodies are never stored.
 * - `task_events_conflicts_idx`: the overview counts recent conflicts per partner without scanning events;
 *   partial, so it holds only conflict rows.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('partner_calls')
    .addColumn('id', 'bigint', (c) => c.primaryKey().generatedAlwaysAsIdentity())
    .addColumn('task_id', 'uuid', (c) => c.notNull().references('tasks.id').onDelete('cascade'))
    .addColumn('started_at', 'timestamptz', (c) => c.notNull())
    .addColumn('operation', 'text', (c) => c.notNull().check(sql`operation in ('dispatch','status')`))
    .addColumn('outcome', 'text', (c) => c.notNull())
    .addColumn('reported_status', 'text')
    .addColumn('http_status', 'integer')
    .addColumn('error_class', 'text')
    .addColumn('error_message', 'text')
    .addColumn('duration_ms', 'integer', (c) => c.notNull())
    .execute();
  await sql`create index partner_calls_task_idx on partner_calls (task_id, id)`.execute(db);
  await sql`create index partner_calls_started_idx on partner_calls (started_at)`.execute(db);

  await sql`alter table callback_inbox add column duplicates integer not null default 0,
                                       add column last_duplicate_at timestamptz`.execute(db);
  await sql`create index callback_inbox_request_idx on callback_inbox (partner, request_no, id)`.execute(db);

  await db.schema
    .createTable('refused_callbacks')
    .addColumn('id', 'bigint', (c) => c.primaryKey().generatedAlwaysAsIdentity())
    .addColumn('task_id', 'uuid', (c) => c.notNull().references('tasks.id').onDelete('cascade'))
    .addColumn('webhook_id', 'text')
    .addColumn('verification', 'text', (c) => c.notNull())
    .addColumn('received_at', 'timestamptz', (c) => c.notNull())
    .execute();
  await sql`create index refused_callbacks_task_idx on refused_callbacks (task_id, id)`.execute(db);
  await sql`create index refused_callbacks_received_idx on refused_callbacks (received_at)`.execute(db);

  await sql`create index task_events_conflicts_idx on task_events (at) where (detail->>'type') = 'conflict'`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop index task_events_conflicts_idx`.execute(db);
  await db.schema.dropTable('refused_callbacks').execute();
  await sql`drop index callback_inbox_request_idx`.execute(db);
  await sql`alter table callback_inbox drop column duplicates, drop column last_duplicate_at`.execute(db);
  await db.schema.dropTable('partner_calls').execute();
}
