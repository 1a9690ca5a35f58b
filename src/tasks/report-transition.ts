import type { PartnerConfig } from '../config/partners';
import type { TaskRow } from '../db/schema';
import type { PartnerReport } from '../partners/mapping';
import { capAtExpiry, checkDelayMs } from './schedule';
import type { TransitionSpec } from './task-repository';

/**
 * The move a partner's report asks for, from a callback or a status query alike. `processing` confirms
 * receipt (pending → dispatched); `succeeded`/`failed` settle the task from any status that allows it
 * (expired included: a late, definitive report still wins).
 */
export function transitionForReport(
  partner: PartnerConfig,
  task: Pick<TaskRow, 'id' | 'check_attempts' | 'expires_at'>,
  report: PartnerReport,
  source: 'callback' | 'poll',
  now: Date,
): TransitionSpec {
  if (report.status === 'processing') {
    const next = new Date(now.getTime() + checkDelayMs(partner, task.check_attempts));
    return {
      taskId: task.id,
      to: 'dispatched',
      from: ['pending'],
      source,
      now,
      reported: 'processing',
      changes: { markDispatched: true, error: null, lastDispatchOutcome: null, nextCheckAt: capAtExpiry(next, new Date(task.expires_at)) },
    };
  }
  return {
    taskId: task.id,
    to: report.status,
    source,
    now,
    reported: report.status,
    changes: {
      result: report.result ?? null,
      error: report.error ?? null,
      settledBy: source,
      nextCheckAt: null,
      markDispatched: true,
      lastDispatchOutcome: null,
    },
  };
}
