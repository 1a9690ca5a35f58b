import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { Pool } from 'pg';
import { runPrepared } from '../db/prepared';
import type { Database, TaskEventRow, TaskRow } from '../db/schema';
import { allowedSources, FINAL_STATUSES, OPEN_STATUSES, type EventSource, type PartnerStatus, type SettledBy, type TaskStatus } from './task';

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
}

export interface ListFilter {
  status?: TaskStatus;
  partner?: string;
  limit: number;
  after?: { createdAt: Date; id: string };
  /** A page ends once its rows' JSON passes this many bytes (at least one row is always returned). */
  maxBytes?: number;
}

/** A value as jsonb; undefined and null become SQL NULL (not a JSON null, which `coalesce` would keep). */
const json = (v: unknown): RawBuilder<unknown> => sql`${v === undefined || v === null ? null : JSON.stringify(v)}::jsonb`;
const textArray = (values: readonly string[]): RawBuilder<unknown> => sql`${values}::text[]`;

/**
 * On-demand checks (POST .../reconcile, poll hints) of one task are at most this often, counted from the
 * claim of the last check: a flood of hints costs the partner at most one status query per task per
 * second. The quarter second over a second absorbs the time from a claim to its call leaving.
 */
export const ON_DEMAND_MIN_GAP_MS = 1250;
const onDemandGap = sql`${ON_DEMAND_MIN_GAP_MS} * interval '1 millisecond'`;

/** A lease is live while its expiry is ahead of the DATABASE's clock: replicas' clocks never decide it. */
const LEASE_FREE = sql`(t.lease_expires_at is null or t.lease_expires_at <= now())`;

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
    const from = spec.from ?? allowedSources(spec.to);
    const c = spec.changes ?? {};
    const sets: RawBuilder<unknown>[] = [sql`status = ${spec.to}`, sql`updated_at = ${spec.now}`];
    if ('result' in c) sets.push(sql`result = ${json(c.result)}`);
    if ('error' in c) sets.push(sql`error = ${json(c.error)}`);
    if (c.settledBy) sets.push(sql`settled_by = ${c.settledBy}`);
    // (issue 7) Giving the lease up (the default) also runs an on-demand check asked for under it:
    // `nextCheckOnRelease` folds check_requested_at into next_check_at. keepLease leaves both alone.
    if (!c.keepLease) {
      const next = c.nextCheckAt !== undefined ? sql`${c.nextCheckAt}::timestamptz` : sql`t.next_check_at`;
      sets.push(sql`next_check_at = ${nextCheckOnRelease(next)}`, sql`check_requested_at = null`);
    } else if (c.nextCheckAt !== undefined) sets.push(sql`next_check_at = ${c.nextCheckAt}`);
    if (c.markDispatched) sets.push(sql`dispatched_at = coalesce(t.dispatched_at, ${spec.now})`);
    if (c.incrementDispatchAttempts) sets.push(sql`dispatch_attempts = t.dispatch_attempts + 1`);
    if (c.lastDispatchOutcome !== undefined) sets.push(sql`last_dispatch_outcome = ${c.lastDispatchOutcome}`);
    if (FINAL_STATUSES.includes(spec.to) || spec.to === 'expired') sets.push(sql`completed_at = ${spec.now}`);
    if (c.incrementCheckAttempts) sets.push(sql`check_attempts = t.check_attempts + 1`);
    if (!c.keepLease) sets.push(sql`lease_owner = null`, sql`lease_expires_at = null`);
    const fence = spec.fence === undefined ? sql`true` : sql`t.lease_owner = ${spec.fence}`;
    const detail = spec.detail ?? null;
    const reported = spec.reported ?? null;

    const inboxId = spec.inboxId ?? null;
    const { rows } = await runPrepared(this.db, this.pool, sql<TaskRow & { current_status: TaskStatus | null; from_status: TaskStatus | null; conflicts: number; inbox_claimed: boolean }>`
      with inbox as (
        select id from callback_inbox where id = ${inboxId}::bigint and outcome = 'queued' for update
      ), cur as (
        select id, status from tasks
        where id = ${spec.taskId}::uuid and (${inboxId}::bigint is null or exists (select 1 from inbox))
        for update
      ), upd as (
        update tasks t set ${sql.join(sets)}
        from cur
        where t.id = cur.id and cur.status = any(${textArray(from)}) and ${fence}
        returning t.*, cur.status as from_status
      ), moved_event as (
        insert into task_events (task_id, at, from_status, to_status, source, detail)
        select id, ${spec.now}, from_status, status, ${spec.source}, ${json(detail)} from upd where not ${spec.quiet ?? false}
      ), conflict_event as (
        insert into task_events (task_id, at, from_status, to_status, source, detail)
        select cur.id, ${spec.now}, cur.status, cur.status, ${spec.source},
               coalesce(${json(detail)}, '{}'::jsonb) || jsonb_build_object('type', 'conflict', 'reported', ${reported}::text)
        from cur
        where ${reported}::text in ('succeeded', 'failed')
          and cur.status = any(${textArray(FINAL_STATUSES)})
          and cur.status <> ${reported}::text
          and not exists (select 1 from upd)
        returning 1
      ), inbox_marked as (
        update callback_inbox set
          task_id = ${spec.taskId}::uuid,
          matched_at = ${spec.now},
          outcome = case when exists (select 1 from upd) then 'applied'
                         when exists (select 1 from conflict_event) then 'conflict'
                         else 'ignored' end
        where id = (select id from inbox) and exists (select 1 from cur)
      )
      select (select status from cur) as current_status, (select count(*) from conflict_event) as conflicts,
             exists (select 1 from inbox) as inbox_claimed, upd.*
      from (select 1) as one left join upd on true`);

    const row = rows[0]!;
    if (row.current_status === null) {
      return { outcome: inboxId !== null && !row.inbox_claimed ? 'already_handled' : 'not_found' };
    }
    if (row.from_status !== null) {
      const { current_status: _c, from_status: _f, conflicts: _n, inbox_claimed: _i, ...task } = row;
      return { outcome: 'applied', previousStatus: row.from_status, task: task as TaskRow };
    }
    return { outcome: row.conflicts > 0 ? 'conflict' : 'ignored', previousStatus: row.current_status };
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
      where t.id = ${id}::uuid and t.status in ('pending', 'dispatched')
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
    const r = await runPrepared(this.db, this.pool, sql`
      select 1 from tasks t
      where t.id = ${id}::uuid and t.lease_owner = ${owner} and t.status in ('pending', 'dispatched')
        and t.lease_expires_at > now() + ${minLeftMs} * interval '1 millisecond'`);
    return r.rows.length > 0;
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
        for update skip locked
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
