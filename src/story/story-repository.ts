import { sql, type Kysely, type Selectable } from 'kysely';
import type { Database, PartnerCallsTable } from '../db/schema';

/** A position in a time-ordered list: the `(at, source, id)` of the last row of a page. */
export interface StoryCursor {
  at: Date;
  /** Which table the row came from, so rows of two tables interleave in one order. */
  source: number;
  id: number;
}

/** A recorded partner call as the story reads it: the table's row without its task id. */
export type PartnerCallRow = Omit<Selectable<PartnerCallsTable>, 'task_id'>;

export interface CallbackStoryRow {
  /** 0: stored in the inbox (verified); 1: refused or only a hint (not verified). */
  source: number;
  id: number;
  received_at: Date;
  webhook_id: string | null;
  verification: string;
  outcome: string;
  reported_status: string | null;
  result: unknown;
  error: unknown;
  raw_body: string | null;
  duplicates: number;
  last_duplicate_at: Date | null;
  matched_at: Date | null;
}

/** How much of a stored callback body the story shows. */
export const RAW_BODY_PREVIEW_CHARS = 2048;

export interface OverviewRow {
  partner: string;
  pending: number;
  dispatched: number;
  expired: number;
  oldest_open: Date | null;
  conflicts: number;
}

/** Reads for the task story and the overview; nothing here changes a task. */
export class StoryRepository {
  constructor(private readonly db: Kysely<Database>) {}

  /** A task's partner calls, oldest first, keyset-paged on `(started_at, id)`. */
  async partnerCalls(taskId: string, limit: number, after?: StoryCursor): Promise<{ rows: PartnerCallRow[]; hasMore: boolean }> {
    const afterClause = after ? sql`and (started_at, id) > (${after.at}, ${after.id})` : sql``;
    const { rows } = await sql<PartnerCallRow>`
      select id, started_at, operation, outcome, reported_status, http_status, error_class, error_message, duration_ms
      from partner_calls
      where task_id = ${taskId}::uuid ${afterClause}
      order by started_at, id
      limit ${limit + 1}`.execute(this.db);
    // bigint ids arrive as text from pg; they stay far below 2^53.
    return { rows: rows.slice(0, limit).map((r) => ({ ...r, id: Number(r.id) })), hasMore: rows.length > limit };
  }

  /**
   * Every callback about a task, oldest first: those stored for its request number (including ones that
   * came before the task, and unreadable ones whose request number could be read), and unverified ones
   * noted on the task. Keyset-paged on `(received_at, source, id)`.
   */
  async callbacks(
    task: { id: string; partner: string; request_no: string },
    limit: number,
    after?: StoryCursor,
  ): Promise<{ rows: CallbackStoryRow[]; hasMore: boolean }> {
    const afterClause = after ? sql`where (received_at, source, id) > (${after.at}, ${after.source}, ${after.id})` : sql``;
    const { rows } = await sql<CallbackStoryRow>`
      select * from (
        select 0 as source, id, received_at, webhook_id, 'verified' as verification, outcome, reported_status,
               result, error, left(raw_body, ${RAW_BODY_PREVIEW_CHARS}) as raw_body, duplicates, last_duplicate_at, matched_at
        from callback_inbox
        where partner = ${task.partner} and request_no = ${task.request_no}
        union all
        select 1, id, received_at, webhook_id, verification, case when verification = 'poll_hint' then 'poll' else 'refused' end,
               null, null, null, null, 0, null, null
        from refused_callbacks
        where task_id = ${task.id}::uuid
      ) c
      ${afterClause}
      order by received_at, source, id
      limit ${limit + 1}`.execute(this.db);
    return { rows: rows.slice(0, limit).map((r) => ({ ...r, id: Number(r.id) })), hasMore: rows.length > limit };
  }

  /**
   * Per partner: open tasks by status and the oldest one's creation, expired tasks (they need someone),
   * and conflicts recorded since `conflictsSince`. Every count uses an index made for it (open: the due
   * index; expired: the attention index; conflicts: the partial conflicts index).
   */
  async overview(conflictsSince: Date): Promise<OverviewRow[]> {
    const { rows } = await sql<OverviewRow>`
      with open as (
        select partner,
               count(*) filter (where status = 'pending')::int as pending,
               count(*) filter (where status = 'dispatched')::int as dispatched,
               min(created_at) as oldest_open
        from tasks where status in ('pending', 'dispatched')
        group by partner
      ), expired as (
        select partner, count(*)::int as expired from tasks where status = 'expired' group by partner
      ), conflicts as (
        select t.partner, count(*)::int as conflicts
        from task_events e join tasks t on t.id = e.task_id
        where (e.detail->>'type') = 'conflict' and e.at >= ${conflictsSince}
        group by t.partner
      )
      select p.partner, coalesce(o.pending, 0) as pending, coalesce(o.dispatched, 0) as dispatched,
             coalesce(x.expired, 0) as expired, o.oldest_open, coalesce(c.conflicts, 0) as conflicts
      from (select partner from open union select partner from expired union select partner from conflicts) p
      left join open o using (partner)
      left join expired x using (partner)
      left join conflicts c using (partner)`.execute(this.db);
    return rows;
  }
}
