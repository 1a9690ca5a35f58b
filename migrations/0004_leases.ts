import { sql, type Kysely } from 'kysely';

/**
 * Leases kept apart from schedules (issue 7, "Leases and scheduling").
 * - `check_requested_at`: an on-demand check (POST .../reconcile, a poll hint) asked for while someone
 *   held the task's lease. The holder is never disturbed; when it gives the lease up, the task becomes
 *   due at that moment (the request is folded into `next_check_at` then).
 * - `last_check_at`: when the reconciler last claimed the task for a check (the app's clock, like
 *   `next_check_at`). On-demand checks are coalesced against it: at most one per task per second.
 * Both are nullable without a default, so adding them rewrites nothing. No new index: the claim still
 * walks `tasks_due_idx`.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table tasks add column check_requested_at timestamptz, add column last_check_at timestamptz`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table tasks drop column check_requested_at, drop column last_check_at`.execute(db);
}
