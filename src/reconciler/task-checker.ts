import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import type { TaskRow } from '../db/schema';
import type { Dispatcher } from '../dispatch/dispatcher';
import type { Metrics } from '../observability/metrics';
import type { PartnerRegistry } from '../partners/partner-registry';
import { transitionForReport } from '../tasks/report-transition';
import { capAtExpiry, checkDelayMs, RETRY_AFTER_CAP_MS } from '../tasks/schedule';
import type { TaskRepository } from '../tasks/task-repository';
import type { TaskTransitions } from '../tasks/task-transitions';
import type { PartnerCallLog } from '../story/partner-call-log';

/** How the check of one task ended; the `outcome` label of reconciler_checks_total. */
export type CheckOutcome =
  | 'expired'
  | 'settled'
  | 'confirmed'
  | 'processing'
  | 'dispatched'
  | 'redispatch_failed'
  | 'rejected'
  | 'not_found'
  | 'error'
  | 'deferred'
  | 'fenced_out'
  | 'unknown_partner';

/** A partner that is not configured any more: look again rarely, an operator has to act. */
const UNKNOWN_PARTNER_RECHECK_MS = 60 * 60_000;

export interface TaskCheckerDeps {
  partners: PartnerRegistry;
  dispatcher: Dispatcher;
  transitions: TaskTransitions;
  repo: TaskRepository;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  /** Where each status query is recorded for the task's story. */
  callLog?: PartnerCallLog;
}

/**
 * What the reconciler does with one claimed task. Every write is fenced on the claim, so a replica whose
 * claim was taken over can no longer change the task.
 *
 * - past `maxAgeSeconds` → expired;
 * - pending after a transient failure (the request never left) → dispatch again;
 * - any other pending (never dispatched, crashed mid-way, ambiguous) → ask first: 404 → dispatch,
 *   found → adopt the partner's status; never blindly re-send;
 * - dispatched → ask: processing keeps it open on the partner's schedule, an outcome settles it.
 */
export class TaskChecker {
  constructor(private readonly deps: TaskCheckerDeps) {}

  /**
   * @param routine where to put a routine "still processing" result instead of writing it at once; the
   *   sweep writes a whole batch of them in one statement (they change nothing but the schedule).
   */
  async check(task: TaskRow, fence: string, routine?: Array<{ id: string; nextCheckAt: Date }>): Promise<CheckOutcome> {
    const client = this.deps.partners.get(task.partner);
    if (!client) {
      this.deps.logger.error({ taskId: task.id, partner: task.partner }, 'task of a partner that is no longer configured');
      await this.deps.repo.defer(task.id, fence, new Date(this.deps.clock.now().getTime() + UNKNOWN_PARTNER_RECHECK_MS));
      return 'unknown_partner';
    }
    const partner = client.config;
    const now = this.deps.clock.now();
    if (now.getTime() >= new Date(task.expires_at).getTime()) return this.expire(task, fence, now);
    if (task.status === 'pending' && task.last_dispatch_outcome === 'transient') {
      // The attempt about to leave may never be recorded; until it is, the task must read "ask first".
      if (!(await this.deps.repo.beginResend(task.id, fence))) return 'fenced_out';
      return this.redispatch(task, fence);
    }

    const answer = await client.status(task.request_no);
    if (answer.kind !== 'deferred') {
      this.deps.callLog?.record({
        taskId: task.id,
        startedAt: now,
        operation: 'status',
        outcome: answer.kind,
        reportedStatus: answer.kind === 'found' ? answer.report.status : undefined,
        httpStatus: answer.kind === 'error' ? answer.error.httpStatus : answer.kind === 'not_found' ? 404 : undefined,
        errorClass: answer.kind === 'error' ? answer.error.class : undefined,
        errorMessage: answer.kind === 'error' ? answer.error.message : undefined,
        durationMs: answer.durationMs,
      });
    }
    switch (answer.kind) {
      case 'deferred':
        await this.deps.repo.defer(task.id, fence, new Date(now.getTime() + answer.deferral.retryInMs));
        return 'deferred';
      case 'not_found':
        return this.onNotFound(partner, task, fence, now);
      case 'error': {
        this.deps.metrics.partnerErrors.inc({ partner: partner.id, operation: 'status', class: answer.error.class });
        const delay = answer.retryAfterMs !== undefined ? Math.min(answer.retryAfterMs, RETRY_AFTER_CAP_MS) : checkDelayMs(partner, task.check_attempts);
        return this.stayOpen(task, fence, now, delay, 'error', { detail: { type: 'check', outcome: 'error', error: answer.error } });
      }
      case 'found': {
        const report = answer.report;
        if (report.status === 'processing' && task.status === 'dispatched') {
          // Routine: still working. Count the check, schedule the next one; no event row.
          const delayMs = checkDelayMs(partner, task.check_attempts + 1);
          if (routine) {
            routine.push({ id: task.id, nextCheckAt: this.next(now, delayMs, task) });
            return 'processing';
          }
          return this.stayOpen(task, fence, now, checkDelayMs(partner, task.check_attempts + 1), 'processing', { quiet: true });
        }
        const spec = transitionForReport(partner, task, report, 'poll', now);
        const r = await this.deps.transitions.apply(partner.id, {
          ...spec,
          fence,
          detail: { type: 'check', outcome: 'found', status: report.status },
          changes: { ...spec.changes, incrementCheckAttempts: true },
        });
        if (r.outcome !== 'applied') return r.outcome === 'conflict' ? 'settled' : 'fenced_out';
        return report.status === 'processing' ? 'confirmed' : 'settled';
      }
    }
  }

  /** The partner says it never received the request: safe to send (again), within the attempt budget. */
  private async onNotFound(partner: PartnerConfig, task: TaskRow, fence: string, now: Date): Promise<CheckOutcome> {
    if (task.status === 'dispatched') {
      // It confirmed receipt before and has lost it since: keep asking on schedule; expiry flags it.
      return this.stayOpen(task, fence, now, checkDelayMs(partner, task.check_attempts + 1), 'not_found', {
        detail: { type: 'check', outcome: 'not_found', note: 'partner no longer knows a request it confirmed' },
      });
    }
    if (task.dispatch_attempts >= partner.dispatch.maxAttempts) {
      const r = await this.deps.transitions.apply(partner.id, {
        taskId: task.id,
        to: 'rejected',
        from: ['pending'],
        source: 'poll',
        now,
        fence,
        detail: { type: 'check', outcome: 'not_found', reason: 'never received and dispatch attempts exhausted', attempts: task.dispatch_attempts },
        changes: { incrementCheckAttempts: true, nextCheckAt: null },
      });
      return r.outcome === 'applied' ? 'rejected' : 'fenced_out';
    }
    return this.redispatch(task, fence);
  }

  private async redispatch(task: TaskRow, fence: string): Promise<CheckOutcome> {
    const result = await this.deps.dispatcher.dispatchNow(task, fence);
    if (!result) return 'unknown_partner';
    if (result.kind === 'deferred') return 'deferred';
    return result.kind === 'received' ? 'dispatched' : result.kind === 'refused' ? 'rejected' : 'redispatch_failed';
  }

  private async expire(task: TaskRow, fence: string, now: Date): Promise<CheckOutcome> {
    const r = await this.deps.transitions.apply(task.partner, {
      taskId: task.id,
      to: 'expired',
      from: ['pending', 'dispatched'],
      source: 'expiry',
      now,
      fence,
      detail: { type: 'expiry', reason: 'no outcome within maxAgeSeconds' },
      changes: { nextCheckAt: null },
    });
    return r.outcome === 'applied' ? 'expired' : 'fenced_out';
  }

  /** The task keeps its status: count the check and schedule the next one `delayMs` from now. */
  private async stayOpen(
    task: TaskRow,
    fence: string,
    now: Date,
    delayMs: number,
    outcome: CheckOutcome,
    opts: { quiet?: boolean; detail?: Record<string, unknown> },
  ): Promise<CheckOutcome> {
    const status = task.status as 'pending' | 'dispatched';
    const r = await this.deps.transitions.apply(task.partner, {
      taskId: task.id,
      to: status,
      from: [status],
      source: 'poll',
      now,
      fence,
      ...opts,
      changes: { incrementCheckAttempts: true, nextCheckAt: this.next(now, delayMs, task) },
    });
    return r.outcome === 'applied' ? outcome : 'fenced_out';
  }

  private next(now: Date, delayMs: number, task: TaskRow): Date {
    return capAtExpiry(new Date(now.getTime() + delayMs), new Date(task.expires_at));
  }
}
