import { sql, type Kysely } from 'kysely';
import type { Pool } from 'pg';
import { runPrepared, runRaw } from '../db/prepared';
import { TRANSITION_COLUMNS, TRANSITION_CORE_SQL, TRANSITION_EFFECTS_SELECT, transitionArrays, transitionResult, type TransitionResult, type FinalTransitionEffects, type TransitionRow, type TransitionSpec } from '../tasks/task-repository';
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

/** A callback to store and, when its task exists, apply in the same statement. */
export interface StoreAndApply {
  row: NewInboxRow & { requestNo: string; outcome: 'queued' };
  /**
   * The move the report asks for, built by transitionForReport for a definitive report (succeeded or
   * failed), which does not depend on the task row; its `taskId` is ignored (the statement finds the task).
   */
  spec: TransitionSpec;
}

/**
 * `duplicate`: the webhook-id was already stored. `applied` set: the task existed and the move ran (or was
 * ignored, or was a conflict) in the statement that stored the callback. Unset: stored as queued.
 */
export type StoreAndApplyResult = { stored: false } | { stored: true; inboxId: number; taskId: string | undefined; applied: TransitionResult | undefined };

export interface InboxLookup {
  outcome: InboxOutcome;
  task: { id: string; check_attempts: number; expires_at: Date } | undefined;
}

const json = (v: unknown) => sql`${v === undefined || v === null ? null : JSON.stringify(v)}::jsonb`;

const jsonText = (v: unknown): string | null => (v === undefined || v === null ? null : JSON.stringify(v));

/** The unique constraint a concurrent copy of the same callback trips in {@link InboxRepository.storeAndApply}. */
export function isDuplicateCallback(err: unknown): boolean {
  const e = err as { code?: unknown; constraint?: unknown } | null;
  return e?.code === '23505' && e.constraint === 'callback_inbox_partner_webhook_id_key';
}

const CALLBACK_COLUMNS = [
  ['partner', 'text'], ['webhook_id', 'text'], ['request_no', 'text'], ['reported_status', 'text'], ['cb_result', 'text'],
  ['cb_error', 'text'], ['raw_body', 'text'], ['received_at', 'timestamptz'],
] as const;
const STORE_AND_APPLY_COLUMNS = [...TRANSITION_COLUMNS, ...CALLBACK_COLUMNS];

/**
 * Store and apply, one statement: callbacks whose webhook-id is new (`fresh`) and whose task exists become
 * moves (`v`) for the shared transition core; every fresh callback is inserted with its outcome.
 */
const STORE_AND_APPLY_SQL = `
  with c as (
    select * from unnest(${STORE_AND_APPLY_COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')})
      with ordinality as c(${STORE_AND_APPLY_COLUMNS.map(([name]) => name).join(', ')}, ord)
  ), fresh as (
    select c.* from c
    where not exists (select 1 from callback_inbox i where i.partner = c.partner and i.webhook_id = c.webhook_id)
  ), v as (
    select t.id as task_id, ${TRANSITION_COLUMNS.slice(1).map(([name]) => `f.${name}`).join(', ')}, f.ord
    from fresh f join tasks t on t.partner = f.partner and t.request_no = f.request_no
  ), inbox as (
    select null::bigint as id where false
  ), ${TRANSITION_CORE_SQL.trim()},
  ins as (
    insert into callback_inbox (partner, webhook_id, request_no, reported_status, result, error, raw_body, received_at, outcome, task_id, matched_at)
    select f.partner, f.webhook_id, f.request_no, f.reported_status, f.cb_result::jsonb, f.cb_error::jsonb, f.raw_body, f.received_at,
           case when v.task_id is null then 'queued'
                when exists (select 1 from upd where upd.moved_ord = f.ord) then 'applied'
                when exists (select 1 from conflict_event e where e.task_id = v.task_id) then 'conflict'
                else 'ignored' end,
           v.task_id, case when v.task_id is null then null else f.now end
    from fresh f left join v on v.ord = f.ord
    order by f.ord
    returning id, partner, webhook_id
  )
  select c.ord as batch_ord, ins.id as inbox_id, v.task_id as found_task_id, cur.status as current_status, false as inbox_claimed,
         exists (select 1 from conflict_event e where e.task_id = v.task_id) as conflicted,
         ${TRANSITION_EFFECTS_SELECT.trim()},
         upd.*
  from c
  left join ins on ins.partner = c.partner and ins.webhook_id = c.webhook_id
  left join v on v.ord = c.ord
  left join cur on cur.ord = c.ord
  left join upd on upd.moved_ord = c.ord`;

/** SQL on the callback inbox. */
export class InboxRepository {
  /** With `pool`, the store statement runs as a named prepared statement (see runPrepared). */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly pool?: Pool,
    /** The same outbox setting as the TaskRepository's: a callback that settles a task writes its notification too. */
    private readonly effects: FinalTransitionEffects = {},
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

  /**
   * Stores callbacks and applies each to its task in the same statement when the task exists: one
   * round trip and one commit for a whole batch, instead of a store and then an apply per callback. The
   * move is the shared transition statement's (allowed sources, one event per change, conflicts), and the
   * inbox row is written with its final outcome, so it is never left queued for another path to apply.
   *
   * A webhook-id stored by a concurrent statement makes this one fail with a unique violation (nothing of
   * it is kept): the caller answers `duplicate` (see {@link isDuplicateCallback}).
   */
  async storeAndApply(items: readonly StoreAndApply[]): Promise<StoreAndApplyResult[]> {
    if (items.some((i) => i.spec.reported === 'processing' || i.spec.inboxId !== undefined)) {
      throw new Error('storeAndApply takes definitive reports of callbacks not yet stored');
    }
    const params = [
      ...transitionArrays(items.map((i) => i.spec), this.effects),
      items.map((i) => i.row.partner),
      items.map((i) => i.row.webhookId),
      items.map((i) => i.row.requestNo),
      items.map((i) => i.row.reportedStatus),
      items.map((i) => jsonText(i.row.result)),
      items.map((i) => jsonText(i.row.error)),
      items.map((i) => i.row.rawBody),
      items.map((i) => i.row.receivedAt.toISOString()),
    ];
    const { rows } = await runRaw<TransitionRow & { inbox_id: number | null; found_task_id: string | null }>(this.db, this.pool, 'cr_callback_store_apply', STORE_AND_APPLY_SQL, params);
    const byOrd = new Map(rows.map((r) => [Number(r.batch_ord), r]));
    return items.map((_, k) => {
      const row = byOrd.get(k + 1)!;
      if (row.inbox_id === null) return { stored: false };
      const { inbox_id: inboxId, found_task_id: taskId, ...rest } = row;
      return {
        stored: true,
        inboxId: Number(inboxId),
        taskId: taskId ?? undefined,
        applied: rest.current_status === null ? undefined : transitionResult(rest, null),
      };
    });
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
