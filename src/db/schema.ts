import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';

/** Table types for Kysely; the migrations in /migrations are the source of truth for the layout. */

type Timestamp = ColumnType<Date, Date | string, Date | string>;
type Json = ColumnType<unknown, string, string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null, Date | string | null>;
type NullableJson = ColumnType<unknown, string | null, string | null>;

export interface TasksTable {
  id: string;
  partner: string;
  request_no: string;
  kind: string | null;
  status: string;
  payload: Json;
  result: NullableJson;
  error: NullableJson;
  notify_url: string | null;
  metadata: NullableJson;
  /** SHA-256 of the canonical create body, to tell an idempotent replay from a conflicting reuse of requestNo. */
  body_hash: string;
  dispatch_attempts: Generated<number>;
  check_attempts: Generated<number>;
  /** What the last dispatch attempt ended as when it left the task pending: `transient` or `ambiguous`. */
  last_dispatch_outcome: string | null;
  settled_by: string | null;
  /** When the reconciler should look at the task next; null once final (or expired). */
  next_check_at: NullableTimestamp;
  /** Claim fence: the token of whoever may act on the task until `lease_expires_at`. */
  lease_owner: string | null;
  /** The database's clock (`now()`), never a replica's: a lease is live while this is after `now()`. */
  lease_expires_at: NullableTimestamp;
  /** An on-demand check asked for under a live lease; folded into `next_check_at` when the lease is given up. */
  check_requested_at: NullableTimestamp;
  /** When the reconciler last claimed the task for a check: on-demand checks are coalesced against it. */
  last_check_at: NullableTimestamp;
  /** created_at + the partner's maxAgeSeconds: past it, an open task expires. */
  expires_at: Timestamp;
  created_at: Timestamp;
  updated_at: Timestamp;
  dispatched_at: NullableTimestamp;
  completed_at: NullableTimestamp;
}

export interface TaskEventsTable {
  id: Generated<number>;
  task_id: string;
  at: Timestamp;
  from_status: string | null;
  to_status: string;
  source: string;
  detail: NullableJson;
}

export type InboxOutcome = 'queued' | 'applied' | 'ignored' | 'conflict' | 'unreadable';

export interface CallbackInboxTable {
  id: Generated<number>;
  partner: string;
  webhook_id: string;
  request_no: string | null;
  reported_status: string | null;
  result: NullableJson;
  error: NullableJson;
  raw_body: string;
  received_at: Timestamp;
  outcome: InboxOutcome;
  task_id: string | null;
  matched_at: NullableTimestamp;
  /** Redeliveries of this `webhook-id` received after it was stored (they change nothing). */
  duplicates: Generated<number>;
  last_duplicate_at: NullableTimestamp;
}

/** One dispatch attempt or status query sent to a partner (see migration 0008). */
export interface PartnerCallsTable {
  id: Generated<number>;
  task_id: string;
  started_at: Timestamp;
  operation: 'dispatch' | 'status';
  outcome: string;
  reported_status: string | null;
  http_status: number | null;
  error_class: string | null;
  error_message: string | null;
  duration_ms: number;
}

/** A callback for an existing task that failed verification; its body is never stored. */
export interface RefusedCallbacksTable {
  id: Generated<number>;
  task_id: string;
  webhook_id: string | null;
  verification: string;
  received_at: Timestamp;
}

export interface CronRunsTable {
  key: string;
  owner: string;
  started_at: Timestamp;
}

export type NotificationStatus = 'pending' | 'delivered' | 'failed' | 'gone';

export interface NotificationsTable {
  /** Also the `webhook-id` of every attempt. */
  id: string;
  task_id: string;
  /** `task.<status>` */
  type: string;
  url: string;
  /** Lower-case `host[:port]` of the URL: groups attempts for the per-host bound and breaker. */
  host: string;
  /** The task row at the transition (to_jsonb), rendered as the API's Task when sent. */
  task_snapshot: Json;
  occurred_at: Timestamp;
  status: NotificationStatus;
  attempts: Generated<number>;
  last_status_code: number | null;
  last_error: string | null;
  /** Due time; null once delivered, failed or gone. */
  next_attempt_at: NullableTimestamp;
  lease_owner: string | null;
  lease_expires_at: NullableTimestamp;
  delivered_at: NullableTimestamp;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

export interface Database {
  cron_runs: CronRunsTable;
  notifications: NotificationsTable;
  tasks: TasksTable;
  task_events: TaskEventsTable;
  callback_inbox: CallbackInboxTable;
  partner_calls: PartnerCallsTable;
  refused_callbacks: RefusedCallbacksTable;
}

export type TaskRow = Selectable<TasksTable>;
export type NewTaskRow = Insertable<TasksTable>;
export type TaskEventRow = Selectable<TaskEventsTable>;
export type InboxRow = Selectable<CallbackInboxTable>;
export type NotificationRow = Selectable<NotificationsTable>;
