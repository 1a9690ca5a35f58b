import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { TaskRow } from '../db/schema';
import type { Metrics } from '../observability/metrics';
import type { DispatchResult } from '../partners/partner-client';
import type { PartnerRegistry } from '../partners/partner-registry';
import type { PartnerConfig } from '../config/partners';
import type { ConfirmLease, TaskRepository, TransitionResult, TransitionSpec } from '../tasks/task-repository';
import type { TaskTransitions } from '../tasks/task-transitions';
import type { PartnerCallLog } from '../story/partner-call-log';
import {
  AMBIGUOUS_RECHECK_MS,
  capAtExpiry,
  checkDelayMs,
  retryAfterDelayMs,
  transientRetryDelayMs,
} from '../tasks/schedule';

/** A queued dispatch is only sent while its claim still covers a whole attempt plus this margin. */
const LEASE_SAFETY_MARGIN_MS = 1000;

export interface DispatcherDeps {
  partners: PartnerRegistry;
  transitions: TaskTransitions;
  repo: TaskRepository;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  publicBaseUrl: string;
  /** Dispatches in flight at once in this process. */
  concurrency: number;
  /** Where each attempt is recorded for the task's story. */
  callLog?: PartnerCallLog;
  /**
   * The fence before each call: whether `owner` still holds the task's lease for `minLeftMs` more (the
   * database's clock). The runtime passes the lease batcher's submit (many fences, one statement); by
   * default `repo.confirmLease`, one statement each.
   */
  confirmLease?: ConfirmLease;
  /**
   * Told when a recorded outcome left the task due already (an on-demand check was asked for while the
   * dispatch held the lease), so the reconciler checks it now rather than at its next tick.
   */
  onDue?: (at: Date) => void;
}

/** What dispatchNow came to: the partner's answer, `not_held` (the lease is no longer ours: nothing sent), or undefined (unknown partner). */
export type DispatchNowResult = DispatchResult | 'not_held' | undefined;

/**
 * The fence before a dispatch could not be checked (the lease batcher refused it: saturated or stopped;
 * or the database failed), so the dispatch was NOT sent. `cause` says why.
 */
export class DispatchNotSentError extends Error {
  override name = 'DispatchNotSentError';
  constructor(
    readonly taskId: string,
    cause: unknown,
  ) {
    super(`dispatch of ${taskId} not sent: the lease could not be confirmed (${cause instanceof Error ? cause.message : String(cause)})`, { cause });
  }
}

interface Job {
  task: TaskRow;
  leaseOwner: string;
}

/**
 * Sends tasks to partners after they are committed and records what came of it. A task reaches the
 * dispatcher already claimed (its lease is set in the insert), so no other replica touches it meanwhile;
 * if this process dies, the lease runs out and the reconciler takes the task over.
 */
export class Dispatcher {
  private readonly queue: Job[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  /** Claims being given back: drain awaits them, so none is cut off by the pool closing. */
  private readonly handBacks = new Set<Promise<void>>();
  private readonly maxQueued: number;
  private accepting = true;
  private readonly confirmLease: ConfirmLease;

  constructor(private readonly deps: DispatcherDeps) {
    this.maxQueued = deps.concurrency * 20;
    this.confirmLease = deps.confirmLease ?? ((id, owner, minLeftMs) => deps.repo.confirmLease(id, owner, minLeftMs));
  }

  /** Callback URL handed to partners for tasks of `partner`. */
  callbackUrl(partner: string): string {
    return `${this.deps.publicBaseUrl}/v1/callbacks/${encodeURIComponent(partner)}`;
  }

  /**
   * Schedules the first dispatch of a freshly committed task. Never blocks the caller: when this process
   * is saturated or stopping, the claim is given up so the reconciler dispatches the task instead.
   */
  enqueue(task: TaskRow, leaseOwner: string): void {
    if (!this.accepting || this.queue.length >= this.maxQueued) {
      this.giveUp({ task, leaseOwner });
      return;
    }
    this.queue.push({ task, leaseOwner });
    // Let the create answer go out first; the dispatch starts right after.
    setImmediate(() => this.pump());
  }

  /**
   * Stops taking work, hands queued tasks back to the reconciler (due at once), waits for dispatches in
   * flight until `deadline` (epoch ms; their leases lapse on their own if they outlive it), and waits for
   * every hand-back statement, so the pool is never closed under one.
   */
  async drain(deadline = Number.POSITIVE_INFINITY): Promise<void> {
    this.accepting = false;
    for (const job of this.queue.splice(0)) this.giveUp(job);
    while (this.inFlight.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        this.deps.logger.warn({ inFlight: this.inFlight.size }, 'dispatches still in flight at the shutdown deadline; their leases will lapse');
        break;
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.allSettled([...this.inFlight]), new Promise((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
    while (this.handBacks.size > 0) await Promise.allSettled([...this.handBacks]);
  }

  get activeCount(): number {
    return this.inFlight.size;
  }

  /**
   * Sends one dispatch for a task whose lease `fence` the caller holds, and records the outcome with one
   * conditional update fenced on that lease. Used for first dispatches and by the reconciler for re-sends.
   */
  async dispatchNow(task: TaskRow, fence: string): Promise<DispatchNowResult> {
    const client = this.deps.partners.get(task.partner);
    if (!client) {
      this.deps.logger.error({ taskId: task.id, partner: task.partner }, 'task refers to a partner that is no longer configured');
      return undefined;
    }
    // The fence, checked again right before the call (not only on the write): the lease must still be
    // ours and outlast the whole attempt by the database's clock. (A re-send after a transient failure is
    // marked "ask first" beforehand by the checker's beginResend.)
    const minLeftMs = client.config.dispatch.timeoutMs + LEASE_SAFETY_MARGIN_MS;
    let held: boolean;
    try {
      held = await this.confirmLease(task.id, fence, minLeftMs);
    } catch (err) {
      // Unconfirmed is not held: never call the partner on a fence that was not checked.
      throw new DispatchNotSentError(task.id, err);
    }
    if (!held) return 'not_held';
    const startedAt = this.deps.clock.now();
    const result = await client.dispatch({
      requestNo: task.request_no,
      kind: task.kind,
      payload: task.payload,
      callbackUrl: this.callbackUrl(task.partner),
    });
    if (result.kind === 'deferred') {
      // The partner is protected right now; nothing was sent, so no attempt is counted.
      await this.deps.repo.defer(task.id, fence, new Date(this.deps.clock.now().getTime() + result.deferral!.retryInMs));
      return result;
    }
    this.deps.callLog?.record({
      taskId: task.id,
      startedAt,
      operation: 'dispatch',
      outcome: result.kind,
      reportedStatus: result.report?.status,
      httpStatus: result.httpStatus,
      errorClass: result.error?.class,
      errorMessage: result.error?.message,
      durationMs: result.durationMs,
    });
    const { metrics } = this.deps;
    metrics.dispatchDuration.observe({ partner: task.partner, outcome: result.kind }, result.durationMs / 1000);
    if (result.error) metrics.partnerErrors.inc({ partner: task.partner, operation: 'dispatch', class: result.error.class });
    const recorded = await this.record(client.config, task, fence, { ...result, kind: result.kind });
    const next = recorded.task?.next_check_at;
    if (recorded.outcome === 'applied' && next && new Date(next).getTime() <= this.deps.clock.now().getTime()) this.deps.onDue?.(new Date(next));
    return result;
  }

  private pump(): void {
    while (this.inFlight.size < this.deps.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      const run = this.runJob(job).finally(() => {
        this.inFlight.delete(run);
        this.pump();
      });
      this.inFlight.add(run);
    }
  }

  private async runJob(job: Job): Promise<void> {
    const { task, leaseOwner } = job;
    try {
      // Waited too long in the queue (the lease would not cover the attempt) or lost it: hand it back.
      if ((await this.dispatchNow(task, leaseOwner)) === 'not_held') this.giveUp(job);
    } catch (err) {
      if (err instanceof DispatchNotSentError) {
        // The fence could not be checked (lease batcher saturated or stopped, database trouble): nothing
        // was sent, so the claim is handed back (fenced on it, so only if still ours) and the reconciler
        // asks the partner first, as after any first dispatch not recorded; if the hand-back fails too,
        // the claim lapses to the same effect.
        this.deps.logger.warn({ err: err.cause, taskId: task.id }, 'dispatch not sent: the lease could not be confirmed; claim handed back');
        this.giveUp(job);
        return;
      }
      // The outcome could not be recorded (database trouble). The lease runs out and the reconciler
      // asks the partner before doing anything else, so nothing is lost or sent blindly twice.
      this.deps.logger.error({ err, taskId: task.id }, 'dispatch outcome not recorded');
    }
  }

  private giveUp(job: Job): void {
    const handBack: Promise<void> = this.deps.repo
      .releaseLease(job.task.id, job.leaseOwner, this.deps.clock.now())
      .catch((err: unknown) => {
        this.deps.logger.warn({ err, taskId: job.task.id }, 'could not release dispatch claim; it will lapse on its own');
      })
      .finally(() => this.handBacks.delete(handBack));
    this.handBacks.add(handBack);
  }

  private record(partner: PartnerConfig, task: TaskRow, fence: string, result: DispatchResult & { kind: Exclude<DispatchResult['kind'], 'deferred'> }): Promise<TransitionResult> {
    const now = this.deps.clock.now();
    const expiresAt = new Date(task.expires_at);
    const base = { taskId: task.id, source: 'dispatch' as const, now, fence, from: ['pending' as const] };
    const detail = { type: 'dispatch', outcome: result.kind, ...(result.httpStatus ? { httpStatus: result.httpStatus } : {}) };
    // Outcomes of concurrent dispatches share statements (group commit); each keeps its own fence and rules.
    const apply = (spec: Omit<TransitionSpec, keyof typeof base>) => this.deps.transitions.applyBatched(task.partner, { ...base, ...spec });
    const attempts = task.dispatch_attempts + 1;

    switch (result.kind) {
      case 'received': {
        const report = result.report;
        if (report && report.status !== 'processing') {
          // (issue 7, item 3) A definitive report is applied whatever touched the task during the call (a
          // "processing" callback, a re-claim): by the transition rules, not by the fence. One that
          // contradicts a final status is recorded as a conflict, as from any other source.
          return this.deps.transitions.applyBatched(task.partner, {
            taskId: task.id,
            source: 'dispatch',
            now,
            to: report.status,
            reported: report.status,
            detail,
            changes: {
              result: report.result ?? null,
              error: report.error ?? null,
              settledBy: 'dispatch',
              nextCheckAt: null,
              markDispatched: true,
              incrementDispatchAttempts: true,
              lastDispatchOutcome: null,
            },
          });
        }
        return apply({
          to: 'dispatched',
          detail,
          changes: {
            error: null,
            nextCheckAt: capAtExpiry(new Date(now.getTime() + checkDelayMs(partner, 0)), expiresAt),
            markDispatched: true,
            incrementDispatchAttempts: true,
            lastDispatchOutcome: null,
          },
        });
      }
      case 'refused':
        return apply({
          to: 'rejected',
          detail,
          changes: { error: result.error, nextCheckAt: null, incrementDispatchAttempts: true, lastDispatchOutcome: null },
        });
      case 'transient': {
        const retryAfter = result.retryAfterMs !== undefined ? retryAfterDelayMs(result.retryAfterMs) : undefined;
        if (attempts >= partner.dispatch.maxAttempts) {
          // Refused connections prove the partner never got it. A 5xx/429 does not (a gateway's 502 may
          // follow the partner's receipt): the status endpoint is asked first, 404 there rejects it.
          if (result.error?.class === 'connect') {
            return apply({
              to: 'rejected',
              detail: { ...detail, reason: 'dispatch attempts exhausted', attempts },
              changes: { error: result.error, nextCheckAt: null, incrementDispatchAttempts: true, lastDispatchOutcome: null },
            });
          }
          return apply({
            to: 'pending',
            detail: { ...detail, reason: 'dispatch attempts exhausted; asking the partner before rejecting', attempts },
            changes: {
              error: result.error,
              nextCheckAt: capAtExpiry(new Date(now.getTime() + (retryAfter ?? AMBIGUOUS_RECHECK_MS)), expiresAt),
              incrementDispatchAttempts: true,
              lastDispatchOutcome: 'exhausted',
            },
          });
        }
        const delay = retryAfter ?? transientRetryDelayMs(attempts);
        return apply({
          to: 'pending',
          detail,
          changes: {
            error: result.error,
            nextCheckAt: capAtExpiry(new Date(now.getTime() + delay), expiresAt),
            incrementDispatchAttempts: true,
            lastDispatchOutcome: 'transient',
          },
        });
      }
      case 'ambiguous':
        return apply({
          to: 'pending',
          detail,
          changes: {
            error: result.error,
            nextCheckAt: capAtExpiry(new Date(now.getTime() + AMBIGUOUS_RECHECK_MS), expiresAt),
            incrementDispatchAttempts: true,
            lastDispatchOutcome: 'ambiguous',
          },
        });
    }
  }
}
