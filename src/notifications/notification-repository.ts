import { sql, type Kysely } from 'kysely';
import type { Pool } from 'pg';
import { runPrepared, runRaw } from '../db/prepared';
import type { Database, NotificationRow, NotificationStatus } from '../db/schema';

/** How one attempt ended, as written back by its claim's holder. */
export interface AttemptRecord {
  id: string;
  owner: string;
  status: NotificationStatus;
  statusCode: number | null;
  error: string | null;
  /** For `pending`: wait before the next attempt. */
  retryInMs?: number;
}

/** Attempt outcomes by notification id, each only where its claim still holds (see recordAttempts). */
const RECORD_ATTEMPTS_SQL = `
  update notifications n
  set status = v.status, attempts = n.attempts + 1, last_status_code = v.status_code, last_error = v.error,
      next_attempt_at = case when v.status = 'pending' then now() + v.retry_ms * interval '1 millisecond' end,
      delivered_at = case when v.status = 'delivered' then now() else n.delivered_at end,
      lease_owner = null, lease_expires_at = null, updated_at = now()
  from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::bigint[]) as v(id, owner, status, status_code, error, retry_ms)
  where n.id = v.id and n.lease_owner = v.owner
  returning n.id`;

/**
 * All SQL on the notification outbox. Rows are written by the task's transition statement
 * (TaskRepository.transition); here they are claimed, recorded, listed and redelivered, each change one
 * conditional statement. Times that decide who may attempt what (due, lease) come from the database's
 * clock (`now()`), so replicas with skewed clocks agree.
 */
export class NotificationRepository {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly pool?: Pool,
  ) {}

  /**
   * Claims up to `limit` due notifications for `owner` in one statement, the reconciler's way: a CTE with
   * `FOR UPDATE SKIP LOCKED` feeding `UPDATE … RETURNING`. The lease is its own column, apart from the due
   * time, and a claim needs it lapsed, so a dead replica's attempts are taken over after `leaseMs` and its
   * late result is fenced out (every write checks `lease_owner`). Hosts in `skipHosts` (at their
   * concurrency bound, or behind an open breaker on this replica) are left for later or for others.
   */
  async claimDue(limit: number, owner: string, leaseMs: number, skipHosts: readonly string[]): Promise<NotificationRow[]> {
    const { rows } = await runPrepared(this.db, this.pool, sql<NotificationRow>`
      with due as (
        select id from notifications
        where status = 'pending' and next_attempt_at <= now()
          and (lease_expires_at is null or lease_expires_at <= now())
          and host <> all(${skipHosts}::text[])
        order by next_attempt_at
        limit ${limit}
        for update skip locked
      )
      update notifications n
      set lease_owner = ${owner}, lease_expires_at = now() + ${leaseMs} * interval '1 millisecond'
      from due
      where n.id = due.id
      returning n.*`);
    return rows;
  }

  /** Writes an attempt's outcome and releases the claim; false when the claim was lost (fenced out). */
  async recordAttempt(r: AttemptRecord): Promise<boolean> {
    return (await this.recordAttempts([r]))[0]!;
  }

  /**
   * Writes many attempts' outcomes in one statement (group commit: one commit for a batch of deliveries
   * instead of one each), each fenced on its own claim. Per record, in order: false when its claim was lost.
   */
  async recordAttempts(records: readonly AttemptRecord[]): Promise<boolean[]> {
    if (records.length === 0) return [];
    const { rows } = await runRaw<{ id: string }>(this.db, this.pool, 'cr_notification_record', RECORD_ATTEMPTS_SQL, [
      records.map((r) => r.id),
      records.map((r) => r.owner),
      records.map((r) => r.status),
      records.map((r) => r.statusCode),
      records.map((r) => r.error),
      records.map((r) => r.retryInMs ?? 0),
    ]);
    const written = new Set(rows.map((row) => row.id));
    return records.map((r) => written.has(r.id));
  }

  /**
   * Hands claimed notifications back without an attempt (their host is busy or its breaker open), due no
   * earlier than `inMs` from now. Only the claim's holder can.
   */
  async release(ids: readonly string[], owner: string, inMs: number): Promise<void> {
    if (ids.length === 0) return;
    await runPrepared(this.db, this.pool, sql`
      update notifications
      set lease_owner = null, lease_expires_at = null,
          next_attempt_at = greatest(next_attempt_at, now() + ${inMs} * interval '1 millisecond')
      where id = any(${ids}::uuid[]) and lease_owner = ${owner}`);
  }

  /** A task's notifications, oldest first. */
  async listForTask(taskId: string): Promise<NotificationRow[]> {
    return this.db.selectFrom('notifications').selectAll().where('task_id', '=', taskId).orderBy('created_at').orderBy('id').execute();
  }

  /**
   * Makes a notification due now whatever its status (`delivered`, `failed` and `gone` included), keeping
   * its id, so the receiver sees the same `webhook-id`. An attempt in flight keeps its claim: the next
   * attempt follows it. Undefined when the task has no such notification.
   */
  async redeliver(taskId: string, id: string): Promise<NotificationRow | undefined> {
    return this.db
      .updateTable('notifications')
      .set({ status: 'pending', next_attempt_at: sql<Date>`now()`, updated_at: sql<Date>`now()` })
      .where('id', '=', id)
      .where('task_id', '=', taskId)
      .returningAll()
      .executeTakeFirst();
  }

  async countPending(): Promise<number> {
    const row = await this.db
      .selectFrom('notifications')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('status', '=', 'pending')
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  /** Seconds until the earliest pending notification is due (for a timely local wake); undefined when none. */
  async secondsUntilNextDue(): Promise<number | undefined> {
    const { rows } = await sql<{ s: number | null }>`
      select extract(epoch from (min(next_attempt_at) - now()))::float8 as s from notifications where status = 'pending'`.execute(this.db);
    const s = rows[0]?.s;
    return s === null || s === undefined ? undefined : Number(s);
  }
}
