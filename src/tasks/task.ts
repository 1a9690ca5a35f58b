/**
 * The task lifecycle as pure data: which statuses exist, which moves are allowed, and what a partner's
 * report means for a task. Repositories turn these sets into `WHERE status IN (...)` conditions.
 */

export const TASK_STATUSES = ['pending', 'dispatched', 'succeeded', 'failed', 'rejected', 'expired'] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];

export const OPEN_STATUSES: readonly TaskStatus[] = ['pending', 'dispatched'];
export const FINAL_STATUSES: readonly TaskStatus[] = ['succeeded', 'failed', 'rejected'];

export const EVENT_SOURCES = ['api', 'dispatch', 'callback', 'poll', 'manual', 'expiry'] as const;
export type EventSource = (typeof EVENT_SOURCES)[number];

export type SettledBy = 'callback' | 'poll' | 'dispatch';

/** What a partner can say about a request (after mapping). */
export type PartnerStatus = 'processing' | 'succeeded' | 'failed';

const ALLOWED_MOVES: Readonly<Record<TaskStatus, readonly TaskStatus[]>> = {
  pending: ['dispatched', 'succeeded', 'failed', 'rejected', 'expired'],
  dispatched: ['succeeded', 'failed', 'expired'],
  succeeded: [],
  failed: [],
  rejected: [],
  // A late, definitive report still wins over expiry.
  expired: ['succeeded', 'failed'],
};

export function canMove(from: TaskStatus, to: TaskStatus): boolean {
  return ALLOWED_MOVES[from].includes(to);
}

/** Every status a task may be in for a move to `to` to be allowed: the `IN (...)` of a conditional update. */
export function allowedSources(to: TaskStatus): TaskStatus[] {
  return TASK_STATUSES.filter((from) => canMove(from, to));
}

export function isFinal(status: TaskStatus): boolean {
  return FINAL_STATUSES.includes(status);
}


/** The task status a partner's report asks for. */
export function targetStatusFor(report: PartnerStatus): TaskStatus {
  return report === 'processing' ? 'dispatched' : report;
}

/**
 * A report contradicts a task when both are definitive outcomes and they differ, e.g. `failed` reported
 * for a task that already `succeeded`. Such a report is recorded as a conflict, never applied.
 */
export function contradicts(current: TaskStatus, reported: PartnerStatus): boolean {
  return reported !== 'processing' && isFinal(current) && current !== reported;
}
