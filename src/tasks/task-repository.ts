import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { Pool } from 'pg';
import { runPrepared, runRaw } from '../db/prepared';
import type { Database, TaskEventRow, TaskRow } from '../db/schema';
import { allowedSources, FINAL_STATUSES, OPEN_STATUSES, TASK_STATUSES, type EventSource, type PartnerStatus, type SettledBy, type TaskStatus } from './task';

/** What a new task row carries; ids and times come from the service so a test clock governs them. */
export interface NewTask {
  id: string;
  partner: string;
  requestNo: string;
  kind: string | null;
  payload: unknown;
  notifyUrl: string | null;
  metadata: unknown;
  bodyHash: string;
  createdAt: Date;
  expiresAt: Date;
  /** The dispatcher's claim: nobody else acts on the task for `leaseMs` (the database's clock). */
  leaseOwner: string;
  leaseMs: number;
  /** When the reconciler should look at it if the dispatcher never records an outcome. */
  nextCheckAt: Date;
}

export type InsertResult =
  | { inserted: true; task: TaskRow; hasQueuedCallbacks: boolean }
  | { inserted: false; existing: TaskRow };

/** Column changes that ride along with a status move (or a stay, for attempt bookkeeping). */
export interface TaskChanges {
  result?: unknown;
  error?: unknown;
  settledBy?: SettledBy;
  /** `null` means "no further check" (final). Undefined leaves it as is. */
  nextCheckAt?: Date | null;
  markDispatched?: boolean;
  incrementDispatchAttempts?: boolean;
  incrementCheckAttempts?: boolean;
  /**
   * `exhausted`: the last attempt failed transiently (5xx/429) and no attempt is left; the partner is
   * asked before the task is rejected (a gateway's 502 is no proof that the partner never got it).
   */
  lastDispatchOutcome?: 'transient' | 'ambiguous' | 'exhausted' | null;
  /** Keep the current lease; by default a move releases it, since whoever held it is done. */
  keepLease?: boolean;
}

export interface TransitionSpec {
  taskId: string;
  to: TaskStatus;
  /** Statuses the task may be in; defaults to the lifecycle's allowed sources of `to`. */
  from?: readonly TaskStatus[];
  source: EventSource;
  now: Date;
  changes?: TaskChanges;
  /** Only the holder of this lease token may make the move (fencing against a taken-over claim). */
  fence?: string;
  /** The partner's report behind the move, when there is one: a contradicting one is recorded as a conflict. */
  reported?: PartnerStatus;
  detail?: Record<string, unknown>;
  /**
   * Apply on behalf of this stored callback: the move happens only if the inbox row is still queued, and
   * the row is marked with the outcome and the task in the same statement, so a callback is applied once
   * however many paths (handler, task creation, safety net) race for it.
   */
  inboxId?: number;
  /**
   * Write no event row for this move. Only for a status that stays the same and says nothing new (a
   * routine poll answered "processing"), so a long-running task's trail is not buried in checks.
   */
  quiet?: boolean;
}

export type TransitionOutcome = 'applied' | 'ignored' | 'conflict' | 'not_found' | 'already_handled';

export interface TransitionResult {
  outcome: TransitionOutcome;
  /** The status before the statement ran (the locked, current one). */
  previousStatus?: TaskStatus;
  /** The row after the move when applied. */
  task?: TaskRow;
  /** The outbox row written with the move (a final status of a task with a notifyUrl). */
  notificationId?: string;
}

/** What a final transition does besides the move, fixed per process (so the statement stays prepared once). */
export interface FinalTransitionEffects {
  /** Write the notification outbox row for a task with a notifyUrl (NOTIFY_SECRET is set). */
  outbox?: boolean;
}

/** Statuses a `waitSeconds` read waits for, and on reaching which a client is notified. */
const SETTLED_STATUSES: readonly TaskStatus[] = [...FINAL_STATUSES, 'expired'];

export interface ListFilter {
  status?: TaskStatus;
  partner?: string;
  /** With `requestNo` and no `partner`: the partners to look in, so the `(partner, request_no)` index serves it. */
  requestNo?: { value: string; partners: readonly string[] };
  limit: number;
  after?: { createdAt: Date; id: string };
  /** A page ends once its rows' JSON passes this many bytes (at least one row is always returned). */
  maxBytes?: number;
}

/** A value as jsonb; undefined and null become SQL NULL (not a JSON null, which `coalesce` would keep). */
const json = (v: unknown): RawBuilder<unknown> => sql`${v === undefined || v === null ? null : JSON.stringify(v)}::jsonb`;
const textArray = (values: readonly string[]): RawBuilder<unknown> => sql`${values}::text[]`;

/**
 * The group-commit create: insert what is new (the unique constraint decides, never a prior check), write
 * each creation event, detect waiting callbacks, and return the rows that already existed, in one statement.
 */
const INSERT_MANY_SQL = `
  with input as (
    select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::timestamptz[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::integer[])
      as v(id, partner, request_no, kind, payload, notify_url, metadata, body_hash, next_check_at, lease_owner, expires_at, created_at, lease_ms)
  ), inserted as (
    insert into tasks (id, partner, request_no, kind, status, payload, notify_url, metadata, body_hash,
                       next_check_at, lease_owner, lease_expires_at, expires_at, created_at, updated_at)
    select id, partner, request_no, kind, 'pending', payload::jsonb, notify_url, metadata::jsonb, body_hash,
           -- (issue 7) the dispatcher's lease runs by the database's clock, apart from the due time
           next_check_at, lease_owner, now() + lease_ms * interval '1 millisecond', expires_at, created_at, created_at
    from input
    order by partner, request_no
    on conflict (partner, request_no) do nothing
    returning *
  ), created_event as (
    insert into task_events (task_id, at, from_status, to_status, source)
    select id, created_at, null, 'pending', 'api' from inserted
  )
  select inserted.*, true as was_inserted, exists (
    select 1 from callback_inbox i
    where i.partner = inserted.partner and i.request_no = inserted.request_no and i.outcome = 'queued'
  ) as has_queued_callbacks
  from inserted
  union all
  select t.*, false, false
  from input v join tasks t on t.partner = v.partner and t.request_no = v.request_no`;

/**
 * On-demand checks (POST .../reconcile, poll hints) of one task are at most this often, counted from the
 * claim of the last check: a flood of hints costs the partner at most one status query per task per
 * second. The quarter second over a second absorbs the time from a claim to its call leaving.
 */
export const ON_DEMAND_MIN_GAP_MS = 1250;

/**
 * The task as a notification shows it (`data`, via toApiTask): exactly the columns the API reads, built in
 * one call. (`to_jsonb(row)` minus the internal keys rebuilt the object once per key removed: 4.4 of the
 * outbox's 5.2 ms per 64 settled tasks in EXPLAIN ANALYZE.)
 */
export const SNAPSHOT_COLUMNS = [
  'id', 'partner', 'request_no', 'kind', 'status', 'payload', 'result', 'error', 'notify_url', 'metadata',
  'dispatch_attempts', 'check_attempts', 'settled_by', 'next_check_at', 'created_at', 'updated_at', 'dispatched_at', 'completed_at',
] as const satisfies ReadonlyArray<keyof TaskRow>;
const SNAPSHOT_SQL = `jsonb_build_object(${SNAPSHOT_COLUMNS.map((c) => `'${c}', settled.${c}`).join(', ')})`;

/**
 * The rules of a status change, shared by every statement that moves tasks. It reads the moves from a CTE
 * `v` (one row per move: the columns {@link transitionArrays} fills) and claimable inbox rows from a CTE
 * `inbox`, and defines:
 * - `cur`: each task row, locked, in id order (so overlapping batches lock in one order);
 * - `upd`: the move, only from an allowed source status and with the fence held;
 * - `moved_event`: one event per applied move (none for a quiet one);
 * - `conflict_event`: a definitive report contradicting a final status, recorded and not applied;
 * - `settled`: the applied moves that reached a final status or `expired` (or settled an expired task);
 * - `outbox`: the transactional outbox, one notification per settled task with a notifyUrl when the move's
 *   `outbox` column is on, committed with the move or not at all (issue 8);
 * Waking `waitSeconds` readers on other replicas is not done here: a NOTIFY inside this statement took
 * PostgreSQL's global notify lock at every settling commit, serialising them (the callback rate fell by
 * 37 % in the bench). The process sends the wake after the commit, many tasks per NOTIFY (SettledWakeSender).
 */
export const TRANSITION_CORE_SQL = `
  cur as (
    select t.id, t.status, v.ord
    from tasks t join v on t.id = v.task_id
    where v.inbox_id is null or exists (select 1 from inbox where inbox.id = v.inbox_id)
    order by t.id
    -- NO KEY UPDATE, as the claim: a move changes no key, and FOR UPDATE would also conflict with the FOR
    -- KEY SHARE that every insert referencing the task (partner_calls, events, inbox, notifications) holds
    -- for its foreign-key check, which deadlocked batched moves against the call log's batched insert.
    for no key update of t
  ), upd as (
    update tasks t set
      status = v.to_status,
      updated_at = v.now,
      result = case when v.set_result then v.result::jsonb else t.result end,
      error = case when v.set_error then v.error::jsonb else t.error end,
      settled_by = coalesce(v.settled_by, t.settled_by),
      -- (issue 7) Giving the lease up (all but keep_lease) also runs an on-demand check asked for under
      -- it: check_requested_at is folded into next_check_at (coalesced to ON_DEMAND_MIN_GAP_MS after the
      -- last check), then cleared. A final move (next check null) stays null.
      next_check_at = case
        when v.keep_lease or t.check_requested_at is null
             or (case when v.set_next_check then v.next_check_at else t.next_check_at end) is null
          then case when v.set_next_check then v.next_check_at else t.next_check_at end
        else least(case when v.set_next_check then v.next_check_at else t.next_check_at end,
                   greatest(t.check_requested_at, t.last_check_at + interval '${ON_DEMAND_MIN_GAP_MS} milliseconds')) end,
      check_requested_at = case when v.keep_lease then t.check_requested_at else null end,
      dispatched_at = case when v.mark_dispatched then coalesce(t.dispatched_at, v.now) else t.dispatched_at end,
      dispatch_attempts = t.dispatch_attempts + case when v.inc_dispatch then 1 else 0 end,
      last_dispatch_outcome = case when v.set_ldo then v.ldo else t.last_dispatch_outcome end,
      completed_at = case when v.completes then v.now else t.completed_at end,
      check_attempts = t.check_attempts + case when v.inc_check then 1 else 0 end,
      lease_owner = case when v.keep_lease then t.lease_owner else null end,
      lease_expires_at = case when v.keep_lease then t.lease_expires_at else null end
    from cur join v on v.ord = cur.ord
    where t.id = cur.id
      and cur.status = any(string_to_array(v.from_list, ','))
      and (not v.has_fence or t.lease_owner = v.fence)
    returning t.*, cur.status as from_status, cur.ord as moved_ord
  ), moved_event as (
    insert into task_events (task_id, at, from_status, to_status, source, detail)
    select upd.id, v.now, upd.from_status, upd.status, v.source, v.detail::jsonb
    from upd join v on v.ord = upd.moved_ord
    where not v.quiet
  ), conflict_event as (
    insert into task_events (task_id, at, from_status, to_status, source, detail)
    select cur.id, v.now, cur.status, cur.status, v.source,
           coalesce(v.detail::jsonb, '{}'::jsonb) || jsonb_build_object('type', 'conflict', 'reported', v.reported)
    from cur join v on v.ord = cur.ord
    where v.reported in ('succeeded', 'failed')
      and cur.status in ('${FINAL_STATUSES.join("', '")}')
      and cur.status <> v.reported
      and not exists (select 1 from upd where upd.moved_ord = cur.ord)
    returning task_id
  ), settled as (
    select upd.*, v.now as settled_at, v.outbox as write_outbox
    from upd join v on v.ord = upd.moved_ord
    where upd.status in ('${SETTLED_STATUSES.join("', '")}') and upd.from_status is distinct from upd.status
  ), outbox as (
    insert into notifications (id, task_id, type, url, host, task_snapshot, occurred_at, status, next_attempt_at)
    select gen_random_uuid(), settled.id, 'task.' || settled.status, settled.notify_url,
           lower(coalesce(substring(settled.notify_url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'), '')),
           ${SNAPSHOT_SQL},
           settled.settled_at, 'pending', now()
    from settled
    where settled.write_outbox and settled.notify_url is not null
    returning id, task_id
  )`;

/**
 * Columns every statement embedding {@link TRANSITION_CORE_SQL} selects per move (`upd` joined as in its
 * final select): the outbox row written for the move.
 */
export const TRANSITION_EFFECTS_SELECT = `
  (select o.id from outbox o where o.task_id = upd.id) as notification_id`;

/** The columns of the `v` CTE, in order, with their array types. */
export const TRANSITION_COLUMNS = [
  ['task_id', 'uuid'], ['to_status', 'text'], ['from_list', 'text'], ['has_fence', 'boolean'], ['fence', 'text'],
  ['source', 'text'], ['now', 'timestamptz'], ['reported', 'text'], ['detail', 'text'], ['inbox_id', 'bigint'],
  ['quiet', 'boolean'], ['set_result', 'boolean'], ['result', 'text'], ['set_error', 'boolean'], ['error', 'text'],
  ['settled_by', 'text'], ['set_next_check', 'boolean'], ['next_check_at', 'timestamptz'], ['mark_dispatched', 'boolean'],
  ['inc_dispatch', 'boolean'], ['set_ldo', 'boolean'], ['ldo', 'text'], ['inc_check', 'boolean'], ['keep_lease', 'boolean'],
  ['completes', 'boolean'], ['outbox', 'boolean'],
] as const;

const TRANSITION_MANY_SQL = `
  with v as (
    select * from unnest(${TRANSITION_COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')})
      with ordinality as v(${TRANSITION_COLUMNS.map(([name]) => name).join(', ')}, ord)
  ), inbox as (
    select i.id from callback_inbox i join v on i.id = v.inbox_id
    where i.outcome = 'queued'
    order by i.id
    for update of i
  ), ${TRANSITION_CORE_SQL.trim()},
  inbox_marked as (
    update callback_inbox i set
      task_id = v.task_id,
      matched_at = v.now,
      outcome = case when exists (select 1 from upd where upd.moved_ord = v.ord) then 'applied'
                     when exists (select 1 from conflict_event c where c.task_id = v.task_id) then 'conflict'
                     else 'ignored' end
    from v join cur on cur.ord = v.ord
    where i.id = v.inbox_id and i.id in (select id from inbox)
  )
  select v.ord as batch_ord, cur.status as current_status,
         exists (select 1 from inbox where inbox.id = v.inbox_id) as inbox_claimed,
         exists (select 1 from conflict_event c where c.task_id = v.task_id) as conflicted,
         ${TRANSITION_EFFECTS_SELECT.trim()},
         upd.*
  from v
  left join cur on cur.ord = v.ord
  left join upd on upd.moved_ord = v.ord`;

export type TransitionRow = TaskRow & {
  batch_ord: number | string;
  current_status: TaskStatus | null;
  from_status: TaskStatus | null;
  moved_ord: number | string | null;
  conflicted: boolean;
  inbox_claimed: boolean;
  notification_id: string | null;
};

const jsonText = (v: unknown): string | null => (v === undefined || v === null ? null : JSON.stringify(v));

/**
 * One array per column of `v` for these moves (the parameters of {@link TRANSITION_MANY_SQL}). The
 * process's {@link FinalTransitionEffects} ride along per move, so one prepared statement serves both.
 */
export function transitionArrays(specs: readonly TransitionSpec[], effects: FinalTransitionEffects = {}): unknown[][] {
  const cols: unknown[][] = TRANSITION_COLUMNS.map(() => []);
  for (const spec of specs) {
    const c = spec.changes ?? {};
    const row: unknown[] = [
      spec.taskId,
      spec.to,
      (spec.from ?? allowedSources(spec.to)).join(','),
      spec.fence !== undefined,
      spec.fence ?? null,
      spec.source,
      spec.now.toISOString(),
      spec.reported ?? null,
      jsonText(spec.detail),
      spec.inboxId ?? null,
      spec.quiet ?? false,
      'result' in c,
      jsonText(c.result),
      'error' in c,
      jsonText(c.error),
      c.settledBy ?? null,
      c.nextCheckAt !== undefined,
      c.nextCheckAt ? c.nextCheckAt.toISOString() : null,
      c.markDispatched ?? false,
      c.incrementDispatchAttempts ?? false,
      c.lastDispatchOutcome !== undefined,
      c.lastDispatchOutcome ?? null,
      c.incrementCheckAttempts ?? false,
      c.keepLease ?? false,
      FINAL_STATUSES.includes(spec.to) || spec.to === 'expired',
      effects.outbox ?? false,
    ];
    row.forEach((value, k) => cols[k]!.push(value));
  }
  return cols;
}

/** What one row of the transition statement means for its move. */
export function transitionResult(row: TransitionRow, inboxId: number | null): TransitionResult {
  if (row.current_status === null) {
    return { outcome: inboxId !== null && !row.inbox_claimed ? 'already_handled' : 'not_found' };
  }
  if (row.from_status !== null) {
    const { batch_ord: _b, current_status: _c, from_status: _f, moved_ord: _m, conflicted: _n, inbox_claimed: _i, notification_id: notificationId, ...task } = row as TransitionRow & Record<string, unknown>;
    return { outcome: 'applied', previousStatus: row.from_status, task: task as TaskRow, ...(notificationId ? { notificationId } : {}) };
  }
  return { outcome: row.conflicted ? 'conflict' : 'ignored', previousStatus: row.current_status };
}

const onDemandGap = sql`${ON_DEMAND_MIN_GAP_MS} * interval '1 millisecond'`;

/** A lease is live while its expiry is ahead of the DATABASE's clock: replicas' clocks never decide it. */
const LEASE_FREE = sql`(t.lease_expires_at is null or t.lease_expires_at <= now())`;

/**
 * "Still open", for a lookup by id. Written as the complement on purpose: `status in ('pending',
 * 'dispatched')` is the predicate of the partial `tasks_due_idx`, and with statistics taken when few tasks
 * were open the planner then walked that whole index filtering on id instead of reading the primary key
 * (a generic plan seen reading every open task once per dispatch). The complement cannot pick that index.
 */
const STILL_OPEN_SQL = `t.status not in ('${TASK_STATUSES.filter((st) => !OPEN_STATUSES.includes(st)).join("', '")}')`;

/**
 * The fence's rule for task row `t`: `owner` holds its lease, the task is still open, and the lease lasts
 * `minLeftMs` more by the database's clock. Shared by the single and the batched fence.
 */
const leaseHeldSql = (id: string, owner: string, minLeftMs: string): string =>
  `t.id = ${id} and t.lease_owner = ${owner} and ${STILL_OPEN_SQL}
    and t.lease_expires_at > now() + ${minLeftMs} * interval '1 millisecond'`;

/** The fence before a partner call ($1 task id, $2 lease owner, $3 ms the lease must still last). */
export const CONFIRM_LEASE_SQL = `
  select 1 from tasks t
  where ${leaseHeldSql('$1::uuid', '$2', '$3')}`;

/**
 * The fence for a batch of partner calls, one statement for all of them ($1 task ids, $2 lease owners,
 * $3 ms each lease must still last, as parallel arrays): one row per item, in the items' order, `held`
 * by the rule of {@link CONFIRM_LEASE_SQL}, asked of each item on its own (an id that appears twice is
 * simply looked up twice). A plain read: no lock, so it never waits on a move or a claim.
 *
 * Each item is one probe of the primary key, whatever the statistics say. As a join (`left join tasks t
 * on t.id = v.id and ...`) the planner was free to pick a sequential scan: with statistics taken when
 * almost no task was open, the plan made for a batch of 500 read every open task into memory and
 * compared it with every item (test/integration/lookup-plans.test.ts). A correlated EXISTS is a subplan
 * run once per item with the id as its parameter, and its only sensible path is the primary key; it
 * cannot be hashed either (the lease comparison is no equality).
 */
export const CONFIRM_LEASES_SQL = `
  select v.ord, exists (
    select 1 from tasks t
    where ${leaseHeldSql('v.id', 'v.owner', 'v.min_left_ms')}
  ) as held
  from unnest($1::uuid[], $2::text[], $3::int[]) with ordinality as v(id, owner, min_left_ms, ord)
  order by v.ord`;

/**
 * The fence as the dispatcher and the checker call it: whether `owner` still holds task `id`'s lease for
 * `minLeftMs` more. The runtime passes the lease batcher's submit; {@link TaskRepository.confirmLease} is
 * the one-statement-each default.
 */
export type ConfirmLease = (id: string, owner: string, minLeftMs: number) => Promise<boolean>;

/** One fence of a batch: {@link TaskRepository.confirmLeases}. */
export interface LeaseConfirmation {
  id: string;
  owner: string;
  minLeftMs: number;
}

/**
 * The next check of a task whose lease is being given up: `next`, unless an on-demand check was asked
 * for under the lease, which then becomes due (coalesced: not sooner than the gap after the last check).
 * A final move (`next` null) stays null.
 */
const nextCheckOnRelease = (next: RawBuilder<unknown>): RawBuilder<unknown> => sql`case
  when ${next} is null or t.check_requested_at is null then ${next}
  else least(${next}, greatest(t.check_requested_at, t.last_check_at + ${onDemandGap})) end`;

/** What an on-demand check did: made the task due at `dueAt`, or (under a live lease) left it to the holder. */
export interface CheckRequest {
  task: TaskRow;
  /** When the task is due now; undefined when a live lease holds it (the request runs once it is given up). */
  dueAt?: Date;
}

/**
 * All SQL on tasks and their events. Every change of status is one statement: it locks the row,
 * updates it only if its current status is an allowed source, and writes the event row, so there is
 * never a read followed by a write.
 */
export class TaskRepository {
  /** With `pool`, the hot statements run as named prepared statements (see runPrepared). */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly pool?: Pool,
    private readonly effects: FinalTransitionEffects = {},
  ) {}

  /**
   * Inserts a task with its creation event in one statement. A concurrent or earlier task with the same
   * `(partner, requestNo)` makes the insert a no-op (the unique constraint decides, never a prior check)
   * and the existing row is returned instead.
   */
  async insert(t: NewTask): Promise<InsertResult> {
    const { rows } = await runPrepared(this.db, this.pool, sql<TaskRow>`
      with inserted as (
        insert into tasks (id, partner, request_no, kind, status, payload, notify_url, metadata, body_hash,
                           next_check_at, lease_owner, lease_expires_at, expires_at, created_at, updated_at)
        values (${t.id}, ${t.partner}, ${t.requestNo}, ${t.kind}, 'pending', ${json(t.payload)}, ${t.notifyUrl},
                ${json(t.metadata)}, ${t.bodyHash}, ${t.nextCheckAt}, ${t.leaseOwner},
                now() + ${t.leaseMs} * interval '1 millisecond',
                ${t.expiresAt}, ${t.createdAt}, ${t.createdAt})
        on conflict (partner, request_no) do nothing
        returning *
      ), created_event as (
        insert into task_events (task_id, at, from_status, to_status, source)
        select id, created_at, null, 'pending', 'api' from inserted
      )
      select inserted.*, exists (
        select 1 from callback_inbox i
        where i.partner = inserted.partner and i.request_no = inserted.request_no and i.outcome = 'queued'
      ) as has_queued_callbacks
      from inserted`);
    const row = rows[0] as (TaskRow & { has_queued_callbacks: boolean }) | undefined;
    if (row) {
      const { has_queued_callbacks: hasQueuedCallbacks, ...task } = row;
      return { inserted: true, task, hasQueuedCallbacks };
    }
    const existing = await this.findByRequestNo(t.partner, t.requestNo);
    if (!existing) {
      // The conflicting row was deleted between the two statements (retention); a retry inserts cleanly.
      return this.insert(t);
    }
    return { inserted: false, existing };
  }

  /**
   * Group commit of many creates: one statement inserts every new task with its creation event and says,
   * per inserted task, whether callbacks are already waiting for it. Answers one result per input, in
   * order, exactly as running {@link insert} for each in turn would: within the batch the first item of a
   * `(partner, requestNo)` is the one inserted and later ones see it as existing.
   *
   * Rows are inserted in `(partner, request_no)` order, so two batches with overlapping keys wait for each
   * other in one order and cannot deadlock.
   */
  async insertMany(tasks: readonly NewTask[]): Promise<InsertResult[]> {
    const keyOf = (t: { partner: string; requestNo: string }) => `${t.partner}\u0000${t.requestNo}`;
    const leaders = new Map<string, NewTask>();
    for (const t of tasks) if (!leaders.has(keyOf(t))) leaders.set(keyOf(t), t);

    const settled = new Map<string, InsertResult>();
    let pending = [...leaders.values()];
    // A conflicting row committed after this statement's snapshot was taken is invisible to it; the next
    // round's fresh snapshot sees it (or inserts, if it was deleted meanwhile).
    for (let round = 0; pending.length > 0; round++) {
      if (round >= 5) throw new Error('insertMany: a conflicting row stayed invisible after 5 rounds');
      const rows = await this.insertRound(pending);
      const byKey = new Map(rows.map((r) => [`${r.partner}\u0000${r.request_no}`, r]));
      const missing: NewTask[] = [];
      for (const t of pending) {
        const row = byKey.get(keyOf(t));
        if (!row) {
          missing.push(t);
          continue;
        }
        const { was_inserted: wasInserted, has_queued_callbacks: hasQueuedCallbacks, ...task } = row;
        settled.set(keyOf(t), wasInserted ? { inserted: true, task, hasQueuedCallbacks } : { inserted: false, existing: task });
      }
      pending = missing;
    }
    return tasks.map((t) => {
      const leader = leaders.get(keyOf(t))!;
      const r = settled.get(keyOf(t))!;
      if (leader === t) return r;
      return { inserted: false, existing: r.inserted ? r.task : r.existing };
    });
  }

  private async insertRound(tasks: readonly NewTask[]) {
    const cols = {
      id: [] as string[], partner: [] as string[], requestNo: [] as string[], kind: [] as (string | null)[], payload: [] as string[],
      notifyUrl: [] as (string | null)[], metadata: [] as (string | null)[], bodyHash: [] as string[], nextCheckAt: [] as string[],
      leaseOwner: [] as string[], expiresAt: [] as string[], createdAt: [] as string[], leaseMs: [] as number[],
    };
    for (const t of tasks) {
      cols.id.push(t.id);
      cols.partner.push(t.partner);
      cols.requestNo.push(t.requestNo);
      cols.kind.push(t.kind);
      cols.payload.push(JSON.stringify(t.payload));
      cols.notifyUrl.push(t.notifyUrl);
      cols.metadata.push(t.metadata === undefined || t.metadata === null ? null : JSON.stringify(t.metadata));
      cols.bodyHash.push(t.bodyHash);
      cols.nextCheckAt.push(t.nextCheckAt.toISOString());
      cols.leaseOwner.push(t.leaseOwner);
      cols.expiresAt.push(t.expiresAt.toISOString());
      cols.createdAt.push(t.createdAt.toISOString());
      cols.leaseMs.push(Math.round(t.leaseMs));
    }
    const { rows } = await runRaw<TaskRow & { was_inserted: boolean; has_queued_callbacks: boolean }>(this.db, this.pool, 'cr_insert_many', INSERT_MANY_SQL, [
      cols.id, cols.partner, cols.requestNo, cols.kind, cols.payload, cols.notifyUrl, cols.metadata, cols.bodyHash,
      cols.nextCheckAt, cols.leaseOwner, cols.expiresAt, cols.createdAt, cols.leaseMs,
    ]);
    return rows;
  }

  async findById(id: string): Promise<TaskRow | undefined> {
    return this.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async findByRequestNo(partner: string, requestNo: string): Promise<TaskRow | undefined> {
    return this.db
      .selectFrom('tasks')
      .selectAll()
      .where('partner', '=', partner)
      .where('request_no', '=', requestNo)
      .executeTakeFirst();
  }

  /**
   * Newest first, keyset-paginated on `(created_at, id)`; fetches one extra row to know whether more follow.
   * A page also ends early once its rows' JSON passes `maxBytes` (it always holds at least one row), cut in
   * the statement so a page of megabyte-sized tasks is never loaded whole.
   */
  async list(filter: ListFilter): Promise<{ rows: TaskRow[]; hasMore: boolean }> {
    let page = this.db
      .selectFrom('tasks')
      .selectAll()
      .select(
        sql<number>`octet_length(payload::text) + coalesce(octet_length(result::text), 0) + coalesce(octet_length(error::text), 0) + coalesce(octet_length(metadata::text), 0)`.as('json_bytes'),
      );
    if (filter.status) page = page.where('status', '=', filter.status);
    if (filter.partner) page = page.where('partner', '=', filter.partner);
    if (filter.requestNo) {
      page = page.where('request_no', '=', filter.requestNo.value);
      if (!filter.partner) page = page.where(sql<boolean>`partner = any(${textArray(filter.requestNo.partners)})`);
    }
    if (filter.after) {
      const { createdAt, id } = filter.after;
      page = page.where(sql<boolean>`(created_at, id) < (${createdAt}, ${id}::uuid)`);
    }
    const fetched = page.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(filter.limit + 1);
    const sized = this.db
      .selectFrom(fetched.as('page'))
      .selectAll()
      .select([
        sql<number>`sum(json_bytes) over (order by created_at desc, id desc)`.as('bytes_through'),
        sql<number>`count(*) over ()`.as('fetched'),
      ]);
    const maxBytes = filter.maxBytes ?? Number.MAX_SAFE_INTEGER;
    const rows = await this.db
      .selectFrom(sized.as('sized'))
      .selectAll()
      .where(sql<boolean>`bytes_through - json_bytes < ${maxBytes}`)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .execute();
    const fetchedCount = Number(rows[0]?.fetched ?? 0);
    const kept = rows.slice(0, filter.limit).map(({ json_bytes: _b, bytes_through: _t, fetched: _f, ...task }) => task as TaskRow);
    return { rows: kept, hasMore: rows.length > filter.limit || fetchedCount > rows.length };
  }

  /** Oldest first. With `limit`, one page after the event `afterId`, and whether more follow. */
  async listEvents(taskId: string): Promise<TaskEventRow[]>;
  async listEvents(taskId: string, page: { limit: number; afterId?: number }): Promise<{ rows: TaskEventRow[]; hasMore: boolean }>;
  async listEvents(taskId: string, page?: { limit: number; afterId?: number }): Promise<TaskEventRow[] | { rows: TaskEventRow[]; hasMore: boolean }> {
    let q = this.db.selectFrom('task_events').selectAll().where('task_id', '=', taskId);
    if (!page) return q.orderBy('id', 'asc').execute();
    if (page.afterId !== undefined) q = q.where('id', '>', page.afterId);
    const rows = await q.orderBy('id', 'asc').limit(page.limit + 1).execute();
    return { rows: rows.slice(0, page.limit), hasMore: rows.length > page.limit };
  }

  /**
   * Moves a task in one statement: lock the row, update it if its status is an allowed source (and the
   * fence matches), write the event; or, when the report contradicts a final status, write a conflict event.
   */
  async transition(spec: TransitionSpec): Promise<TransitionResult> {
    return (await this.transitionMany([spec]))[0]!;
  }

  /**
   * Many moves in one statement (group commit), each with exactly the rules of a lone {@link transition}:
   * allowed sources, fence, one event per change, conflicts recorded and never applied, an inbox row
   * claimed at most once. Moves of one task are never in the same statement: they run in order, each in a
   * statement of its own, so each sees the previous one's result.
   */
  async transitionMany(specs: readonly TransitionSpec[]): Promise<TransitionResult[]> {
    const results: TransitionResult[] = new Array(specs.length);
    let pending = specs.map((spec, i) => ({ spec, i }));
    while (pending.length > 0) {
      const seen = new Set<string>();
      const round: typeof pending = [];
      const later: typeof pending = [];
      for (const p of pending) {
        if (seen.has(p.spec.taskId)) later.push(p);
        else {
          seen.add(p.spec.taskId);
          round.push(p);
        }
      }
      const out = await this.transitionRound(round.map((p) => p.spec));
      round.forEach((p, k) => (results[p.i] = out[k]!));
      pending = later;
    }
    return results;
  }

  private async transitionRound(specs: readonly TransitionSpec[]): Promise<TransitionResult[]> {
    const a = transitionArrays(specs, this.effects);
    const { rows } = await runRaw<TransitionRow>(this.db, this.pool, 'cr_transition_many', TRANSITION_MANY_SQL, a);
    const byOrd = new Map(rows.map((r) => [Number(r.batch_ord), r]));
    return specs.map((spec, k) => transitionResult(byOrd.get(k + 1)!, spec.inboxId ?? null));
  }

  /**
   * Writes an operator's action into the task's events (source `manual`), with the task's current status
   * as both from and to: it records who asked for what, not a change. False when there is no such task.
   */
  async recordManualEvent(taskId: string, now: Date, detail: Record<string, unknown>): Promise<boolean> {
    const { rows } = await sql<{ task_id: string }>`
      insert into task_events (task_id, at, from_status, to_status, source, detail)
      select id, ${now}, status, status, 'manual', ${json(detail)} from tasks where id = ${taskId}::uuid
      returning task_id`.execute(this.db);
    return rows.length > 0;
  }

  /**
   * An on-demand check (POST .../reconcile, a poll hint), one conditional statement that never breaks a
   * lease. Lease free: the task becomes due now, or ON_DEMAND_MIN_GAP_MS after its last check if that is
   * later (hints are coalesced). Under a live lease the schedule is not touched: the request is noted in
   * `check_requested_at` and becomes due when the holder gives the lease up. A request that changes
   * nothing (already due as soon, or already noted) writes nothing. Undefined when absent.
   */
  async requestCheck(id: string, now: Date): Promise<CheckRequest | undefined> {
    const target = sql`greatest(${now}::timestamptz, t.last_check_at + ${onDemandGap})`;
    const { rows } = await runPrepared(this.db, this.pool, sql<TaskRow & { lease_free: boolean }>`
      update tasks t set
        next_check_at = case when ${LEASE_FREE} then least(t.next_check_at, ${target}) else t.next_check_at end,
        check_requested_at = case when ${LEASE_FREE} then t.check_requested_at else ${now}::timestamptz end,
        updated_at = ${now}
      where t.id = ${id}::uuid and ${sql.raw(STILL_OPEN_SQL)}
        and case when ${LEASE_FREE} then t.next_check_at > ${target} else t.check_requested_at is null end
      returning t.*, ${LEASE_FREE} as lease_free`);
    const row = rows[0];
    if (row) {
      const { lease_free: free, ...task } = row;
      return free ? { task, dueAt: new Date(task.next_check_at!) } : { task };
    }
    const { rows: current } = await runPrepared(this.db, this.pool, sql<TaskRow & { lease_free: boolean }>`
      select t.*, ${LEASE_FREE} as lease_free from tasks t where t.id = ${id}::uuid`);
    if (!current[0]) return undefined;
    const { lease_free: free, ...task } = current[0];
    const open = task.status === 'pending' || task.status === 'dispatched';
    return open && free && task.next_check_at ? { task, dueAt: new Date(task.next_check_at) } : { task };
  }

  /**
   * The fence, checked right before a partner call: true when `owner` still holds the task's lease and
   * it lasts at least `minLeftMs` more by the database's clock.
   */
  async confirmLease(id: string, owner: string, minLeftMs: number): Promise<boolean> {
    const r = await runRaw(this.db, this.pool, 'cr_confirm_lease', CONFIRM_LEASE_SQL, [id, owner, minLeftMs]);
    return r.rows.length > 0;
  }

  /**
   * {@link confirmLease} for many partner calls in one statement (the lease batcher's run): one answer
   * per item, in order. Items may repeat an id; each is answered on its own.
   */
  async confirmLeases(items: readonly LeaseConfirmation[]): Promise<boolean[]> {
    if (items.length === 0) return [];
    const r = await runRaw<{ ord: string; held: boolean }>(this.db, this.pool, 'cr_confirm_leases', CONFIRM_LEASES_SQL, [
      items.map((i) => i.id),
      items.map((i) => i.owner),
      items.map((i) => i.minLeftMs),
    ]);
    if (r.rows.length !== items.length) throw new Error(`confirmLeases: ${r.rows.length} rows for ${items.length} items`);
    const held = new Array<boolean>(items.length).fill(false);
    for (const row of r.rows) held[Number(row.ord) - 1] = row.held;
    return held;
  }

  /**
   * Puts a claimed task back, due at `at` (never past its expiry), without counting an attempt or writing
   * an event (the partner was protected: breaker open or rate limit spent, so nothing was sent). Only
   * the claim's holder can do it.
   */
  async defer(id: string, owner: string, at: Date): Promise<boolean> {
    const r = await runPrepared(this.db, this.pool, sql`
      update tasks t set lease_owner = null, lease_expires_at = null, check_requested_at = null,
        next_check_at = ${nextCheckOnRelease(sql`least(${at}::timestamptz, t.expires_at)`)}
      where t.id = ${id}::uuid and t.lease_owner = ${owner}`);
    return r.rowCount > 0;
  }

  /**
   * Claims up to `limit` due tasks for `owner` in one statement, oldest due first. Due (`next_check_at`,
   * the app's clock) and held (`lease_owner` until `lease_expires_at`, the database's clock) are separate:
   * a task is claimed only when it is due AND no live lease holds it, so moving a due time (an on-demand
   * check) can never hand a held task to a second holder. SKIP LOCKED lets replicas claim side by side;
   * a holder that dies is taken over once its lease lapses, and the new `lease_owner` fences it out.
   * Tasks of partners not in `knownPartners` are left alone until their expiry (then expired).
   * `claimedAt` (the app's clock when claiming; a sweep's `now` is when it began) anchors the coalescing
   * of on-demand checks.
   */
  async claimDue(now: Date, limit: number, owner: string, leaseMs: number, knownPartners: readonly string[], claimedAt: Date = now): Promise<TaskRow[]> {
    const { rows } = await runPrepared(this.db, this.pool, sql<TaskRow>`
      with due as (
        select id from tasks t
        where t.status in ('pending', 'dispatched') and t.next_check_at <= ${now} and ${LEASE_FREE}
          and (t.partner = any(${textArray(knownPartners)}) or t.expires_at <= ${now})
        order by t.next_check_at
        limit ${limit}
        -- NO KEY UPDATE (the claim changes no key): a plain FOR UPDATE also conflicts with the FOR KEY
        -- SHARE lock that every insert referencing the task (partner_calls, task_events, ...) holds until
        -- it commits, so SKIP LOCKED silently skipped due, lease-free tasks during those inserts.
        for no key update skip locked
      )
      update tasks t
      set lease_owner = ${owner}, lease_expires_at = now() + ${leaseMs} * interval '1 millisecond',
          last_check_at = ${claimedAt}, check_requested_at = null
      from due
      where t.id = due.id
      returning t.*`);
    return rows;
  }

  /**
   * Records many routine checks at once (the partner said "processing" for a dispatched task): count the
   * check, set the next one, release the claim. One statement for a whole claimed batch, fenced on its
   * owner; no event row (nothing changed). Returns how many rows it updated.
   */
  async recordRoutineChecks(owner: string, now: Date, checks: ReadonlyArray<{ id: string; nextCheckAt: Date }>): Promise<number> {
    if (checks.length === 0) return 0;
    const result = await runPrepared(this.db, this.pool, sql`
      update tasks t
      set check_attempts = t.check_attempts + 1, next_check_at = ${nextCheckOnRelease(sql`v.next_check_at`)},
          lease_owner = null, lease_expires_at = null, check_requested_at = null, updated_at = ${now}
      from unnest(${checks.map((c) => c.id)}::uuid[], ${checks.map((c) => c.nextCheckAt.toISOString())}::timestamptz[]) as v(id, next_check_at)
      where t.id = v.id and t.lease_owner = ${owner} and t.status = 'dispatched'`);
    return result.rowCount;
  }

  /**
   * Forgets that the last dispatch attempt failed before sending, just before the claim's holder sends
   * another. The "transient, so send again without asking" shortcut is only sound while no attempt is
   * in flight: if this attempt's outcome is never recorded (the replica dies, the database is away), the
   * next claim must ask the partner first. Fenced: false when the claim has passed to someone else, and
   * then nothing may be sent.
   */
  async beginResend(id: string, owner: string): Promise<boolean> {
    const r = await this.db
      .updateTable('tasks')
      .set({ last_dispatch_outcome: null })
      .where('id', '=', id)
      .where('lease_owner', '=', owner)
      .where('status', '=', 'pending')
      .executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  /** Gives up a claim early (the dispatcher could not take the task): it becomes due for the reconciler now. */
  async releaseLease(id: string, owner: string, now: Date): Promise<void> {
    await runPrepared(this.db, this.pool, sql`
      update tasks t set lease_owner = null, lease_expires_at = null, check_requested_at = null, next_check_at = ${now}
      where t.id = ${id}::uuid and t.lease_owner = ${owner}`);
  }

  /**
   * Hands claimed tasks back untouched (a draining sweep, or a claim that waited too long for a slot):
   * they were due when claimed, so another replica can claim them at once.
   */
  async handBack(ids: readonly string[], owner: string): Promise<number> {
    if (ids.length === 0) return 0;
    const r = await runPrepared(this.db, this.pool, sql`
      update tasks t set lease_owner = null, lease_expires_at = null,
        next_check_at = ${nextCheckOnRelease(sql`t.next_check_at`)}, check_requested_at = null
      where t.id = any(${[...ids]}::uuid[]) and t.lease_owner = ${owner}`);
    return r.rowCount;
  }

  /**
   * Tasks of partners that are no longer configured: each due one (not yet parked) is moved to be due
   * at its expiry (then it is expired) with one event saying why, so the sweep neither loops on them nor
   * walks past them. Only due rows are read (the range of `tasks_due_idx` the claim reads anyway), so it
   * is cheap enough for every sweep. Tasks under a live lease are left to their holder. Returns how
   * many per partner.
   */
  async parkUnknownPartners(knownPartners: readonly string[], now: Date): Promise<Map<string, number>> {
    const { rows } = await sql<{ partner: string; n: number }>`
      with parked as (
        update tasks t set next_check_at = t.expires_at, check_requested_at = null, updated_at = ${now}
        where t.status in ('pending', 'dispatched') and t.next_check_at <= ${now}
          and not (t.partner = any(${textArray(knownPartners)})) and t.next_check_at < t.expires_at and ${LEASE_FREE}
        returning t.id, t.partner, t.status, t.expires_at
      ), parked_event as (
        insert into task_events (task_id, at, from_status, to_status, source, detail)
        select id, ${now}, status, status, 'poll',
               jsonb_build_object('type', 'partner_unknown', 'note', 'partner is not configured: not checked until the task expires',
                                  'expiresAt', expires_at)
        from parked
      )
      select partner, count(*)::int as n from parked group by partner`.execute(this.db);
    return new Map(rows.map((r) => [r.partner, r.n]));
  }

  /** The earliest due time after `now` of any open task (for a sweep sooner than the next cron tick). */
  async nextDueAfter(now: Date): Promise<Date | undefined> {
    const { rows } = await runPrepared(this.db, this.pool, sql<{ at: Date | null }>`
      select min(next_check_at) as at from tasks where status in ('pending', 'dispatched') and next_check_at > ${now}`);
    const at = rows[0]?.at;
    return at ? new Date(at) : undefined;
  }
}
