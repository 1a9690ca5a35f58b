import { sql, type Kysely } from 'kysely';
import type { Pool } from 'pg';
import { runPrepared } from '../db/prepared';
import type { Database, InboxOutcome, InboxRow } from '../db/schema';

export interface NewInboxRow {
  partner: string;
  webhookId: string;
  requestNo: string | null;
  reportedStatus: string | null;
  result: unknown;
  error: unknown;
  rawBody: string;
  receivedAt: Date;
  outcome: 'queued' | 'unreadable';
}

/** The stored callback and, in the same round trip, its task if it already exists. */
export type StoreResult =
  | { stored: true; inboxId: number; task: { id: string; check_attempts: number; expires_at: Date } | undefined }
  | { stored: false };

export interface InboxLookup {
  outcome: InboxOutcome;
  task: { id: string; check_attempts: number; expires_at: Date } | undefined;
}

const json = (v: unknown) => sql`${v === undefined || v === null ? null : JSON.stringify(v)}::jsonb`;

/** SQL on the callback inbox. */
export class InboxRepository {
  /** With `pool`, the store statement runs as a named prepared statement (see runPrepared). */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly pool?: Pool,
  ) {}

  /**
   * Stores a callback unless `(partner, webhook_id)` is already there (a redelivery: `stored: false`),
   * and looks up its task in the same statement.
   */
  async store(row: NewInboxRow): Promise<StoreResult> {
    const { rows } = await runPrepared(this.db, this.pool, sql<{ id: number; task_id: string | null; check_attempts: number | null; expires_at: Date | null }>`
      with ins as (
        insert into callback_inbox (partner, webhook_id, request_no, reported_status, result, error, raw_body, received_at, outcome)
        values (${row.partner}, ${row.webhookId}, ${row.requestNo}, ${row.reportedStatus}, ${json(row.result)},
                ${json(row.error)}, ${row.rawBody}, ${row.receivedAt}, ${row.outcome})
        on conflict (partner, webhook_id) do nothing
        returning id, partner, request_no
      )
      select ins.id, t.id as task_id, t.check_attempts, t.expires_at
      from ins left join tasks t on t.partner = ins.partner and t.request_no = ins.request_no`);
    const r = rows[0];
    if (!r) return { stored: false };
    return { stored: true, inboxId: r.id, task: r.task_id ? { id: r.task_id, check_attempts: r.check_attempts!, expires_at: r.expires_at! } : undefined };
  }

  /** The callback's current outcome and its task, if the task exists by now. */
  async lookup(inboxId: number): Promise<InboxLookup | undefined> {
    const r = await this.db
      .selectFrom('callback_inbox as i')
      .leftJoin('tasks as t', (j) => j.onRef('t.partner', '=', 'i.partner').onRef('t.request_no', '=', 'i.request_no'))
      .select(['i.outcome', 't.id as task_id', 't.check_attempts', 't.expires_at'])
      .where('i.id', '=', inboxId)
      .executeTakeFirst();
    if (!r) return undefined;
    return { outcome: r.outcome, task: r.task_id ? { id: r.task_id, check_attempts: r.check_attempts!, expires_at: r.expires_at! } : undefined };
  }

  /** Queued callbacks for one task's request number, oldest first. */
  async queuedFor(partner: string, requestNo: string): Promise<InboxRow[]> {
    return this.db
      .selectFrom('callback_inbox')
      .selectAll()
      .where('partner', '=', partner)
      .where('request_no', '=', requestNo)
      .where('outcome', '=', 'queued')
      .orderBy('id')
      .execute();
  }

  /** Queued callbacks whose task exists by now: what the safety net applies. Uses the partial index. */
  async matchable(limit: number): Promise<Array<InboxRow & { task_check_attempts: number; task_expires_at: Date; matched_task_id: string }>> {
    return this.db
      .selectFrom('callback_inbox as i')
      .innerJoin('tasks as t', (j) => j.onRef('t.partner', '=', 'i.partner').onRef('t.request_no', '=', 'i.request_no'))
      .selectAll('i')
      .select(['t.id as matched_task_id', 't.check_attempts as task_check_attempts', 't.expires_at as task_expires_at'])
      .where('i.outcome', '=', 'queued')
      .orderBy('i.id')
      .limit(limit)
      .execute();
  }

  /** A redelivery of a stored callback: counted on the stored row, nothing else changes. */
  async countDuplicate(partner: string, webhookId: string, at: Date): Promise<void> {
    await this.db
      .updateTable('callback_inbox')
      .set((eb) => ({ duplicates: eb('duplicates', '+', 1), last_duplicate_at: at }))
      .where('partner', '=', partner)
      .where('webhook_id', '=', webhookId)
      .execute();
  }

  /**
   * Notes a callback that was not verified (refused, or a mere hint from a `verify: "poll"` partner) on
   * its task, for the task story. Only for a task that exists, and at most
   * {@link MAX_REFUSED_PER_TASK} per task: unauthenticated senders cannot grow the table without bound.
   */
  async recordRefused(partner: string, requestNo: string, webhookId: string | null, verification: string, at: Date): Promise<void> {
    await sql`
      insert into refused_callbacks (task_id, webhook_id, verification, received_at)
      select t.id, ${webhookId === null ? null : webhookId.slice(0, 200)}, ${verification}, ${at}
      from tasks t
      where t.partner = ${partner} and t.request_no = ${requestNo}
        and (select count(*) from refused_callbacks r where r.task_id = t.id) < ${MAX_REFUSED_PER_TASK}`.execute(this.db);
  }
}

/** Unverified callbacks kept per task for its story; later ones are not recorded. */
export const MAX_REFUSED_PER_TASK = 20;
