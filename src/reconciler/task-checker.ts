import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import type { TaskRow } from '../db/schema';
import type { Dispatcher } from '../dispatch/dispatcher';
import type { Metrics } from '../observability/metrics';
import type { PartnerRegistry } from '../partners/partner-registry';
import { transitionForReport } from '../tasks/report-transition';
import type { PartnerReport } from '../partners/mapping';
import type { StatusResult } from '../partners/partner-client';
import { capAtExpiry, checkDelayMs, retryAfterDelayMs } from '../tasks/schedule';
import type { ConfirmLease, TaskRepository } from '../tasks/task-repository';
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

/** A partner call is only made while the lease outlasts its timeout by at least this much (database clock). */
const LEASE_SAFETY_MARGIN_MS = 1000;
/**
 * This process never starts a status query of a task sooner than this after the previous one ended (the
 * claims coalesce on-demand checks across replicas; this takes the claim-to-call jitter out here).
 */
export const MIN_STATUS_QUERY_GAP_MS = 1000;

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
  /**
   * The fence before each status query (see DispatcherDeps.confirmLease): the runtime passes the lease
   * batcher's submit; by default `repo.confirmLease`. When it throws (the batcher saturated or stopped,
   * the database failing), the check throws before anything is asked: the claim lapses and the task is
   * checked again.
   */
  confirmLease?: ConfirmLease;
}

/**
 * What the reconciler does with one claimed task. The fence (the lease is still ours) is checked right
 * before every partner call as well as on every write, so a replica whose claim was taken over can
 * neither call the partner nor change the task.
 *
 * - pending after a transient failure (the request never left) → dispatch again;
 * - any other pending (never dispatched, crashed mid-way, ambiguous, attempts exhausted on 5xx/429) →
 *   ask first: 404 → dispatch (or reject once attempts are spent), found → adopt the partner's status;
 *   never blindly re-send;
 * - dispatched → ask: processing keeps it open on the partner's schedule, an outcome settles it;
 * - past `maxAgeSeconds` → ask once more (a final answer wins), then expired;
 * - a partner no longer configured → left until its expiry, then expired without asking.
 */
export class TaskChecker {
  /** When this process last had an answer about a task (the app's clock), oldest first; pruned as it grows. */
  private readonly lastQueried = new Map<string, number>();

  private readonly confirmLease: ConfirmLease;

  constructor(private readonly deps: TaskCheckerDeps) {
    this.confirmLease = deps.confirmLease ?? ((id, owner, minLeftMs) => deps.repo.confirmLease(id, owner, minLeftMs));
  }

  /**
   * @param routine where to put a routine "still processing" result instead of writing it at once; the
   *   sweep writes a whole batch of them in one statement (they change nothing but the schedule).
   */
  async check(task: TaskRow, fence: string, routine?: Array<{ id: string; nextCheckAt: Date }>): Promise<CheckOutcome> {
    const now = this.deps.clock.now();
    const expired = now.getTime() >= new Date(task.expires_at).getTime();
    const client = this.deps.partners.get(task.partner);
    if (!client) {
      if (expired) return this.expire(task, fence, now, { partner: 'not configured' });
      // Not claimed by a sweep any more (see claimDue); a stray claim parks it until its expiry.
      await this.deps.repo.defer(task.id, fence, new Date(task.expires_at));
      return 'unknown_partner';
    }
    const partner = client.config;
    if (!expired && task.status === 'pending' && task.last_dispatch_outcome === 'transient') {
      // The attempt about to leave may never be recorded; until it is, the task must read "ask first".
      if (!(await this.deps.repo.beginResend(task.id, fence))) return 'fenced_out';
      return this.redispatch(task, fence);
    }

    const sinceLast = now.getTime() - (this.lastQueried.get(task.id) ?? Number.NEGATIVE_INFINITY);
    if (sinceLast >= 0 && sinceLast < MIN_STATUS_QUERY_GAP_MS) {
      await this.deps.repo.defer(task.id, fence, new Date(now.getTime() + MIN_STATUS_QUERY_GAP_MS - sinceLast));
      return 'deferred';
    }
    if (!(await this.confirmLease(task.id, fence, partner.status.timeoutMs + LEASE_SAFETY_MARGIN_MS))) return 'fenced_out';
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
    // Noted when the answer is in (a deferred call never left): the next query of this task then starts
    // a whole gap after this one ended, so the partner never sees two within the gap, whatever the jitter.
    if (answer.kind !== 'deferred') this.noteQuery(task.id);
    if (answer.kind === 'deferred') {
      // Nothing was asked (breaker open, rate limit spent): put it back, expiry included, burning nothing.
      await this.deps.repo.defer(task.id, fence, new Date(now.getTime() + answer.deferral.retryInMs));
      return 'deferred';
    }
    if (answer.kind === 'error') this.deps.metrics.partnerErrors.inc({ partner: partner.id, operation: 'status', class: answer.error.class });
    if (expired) return this.atExpiry(partner, task, fence, now, answer);
    switch (answer.kind) {
      case 'not_found':
        return this.onNotFound(partner, task, fence, now);
      case 'error': {
        const delay = answer.retryAfterMs !== undefined ? retryAfterDelayMs(answer.retryAfterMs) : checkDelayMs(partner, task.check_attempts);
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
          return this.stayOpen(task, fence, now, delayMs, 'processing', { quiet: true });
        }
        return this.settle(partner, task, fence, now, report);
      }
    }
  }

  private noteQuery(id: string): void {
    const at = this.deps.clock.now().getTime();
    this.lastQueried.delete(id);
    this.lastQueried.set(id, at);
    if (this.lastQueried.size < 1000) return;
    for (const [key, when] of this.lastQueried) {
      if (at - when < MIN_STATUS_QUERY_GAP_MS) break;
      this.lastQueried.delete(key);
    }
  }

  /** Applies what the partner's status endpoint said (an outcome, or pending → dispatched). */
  private async settle(partner: PartnerConfig, task: TaskRow, fence: string, now: Date, report: PartnerReport): Promise<CheckOutcome> {
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

  /**
   * (issue 7, item 2) The check at `maxAgeSeconds` asked the partner once: a final answer settles the
   * task (an outcome reached in the last schedule step is not lost); anything else expires it.
   */
  private async atExpiry(partner: PartnerConfig, task: TaskRow, fence: string, now: Date, answer: Exclude<StatusResult, { kind: 'deferred' }>): Promise<CheckOutcome> {
    if (answer.kind === 'found' && answer.report.status !== 'processing') return this.settle(partner, task, fence, now, answer.report);
    const lastAnswer = answer.kind === 'found' ? answer.report.status : answer.kind === 'error' ? `error: ${answer.error.class}` : 'not_found';
    return this.expire(task, fence, now, { lastAnswer });
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
    if (result === 'not_held') return 'fenced_out';
    if (result.kind === 'deferred') return 'deferred';
    return result.kind === 'received' ? 'dispatched' : result.kind === 'refused' ? 'rejected' : 'redispatch_failed';
  }

  private async expire(task: TaskRow, fence: string, now: Date, extra: Record<string, unknown>): Promise<CheckOutcome> {
    const r = await this.deps.transitions.apply(task.partner, {
      taskId: task.id,
      to: 'expired',
      from: ['pending', 'dispatched'],
      source: 'expiry',
      now,
      fence,
      detail: { type: 'expiry', reason: 'no outcome within maxAgeSeconds', ...extra },
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
