import { randomUUID } from 'node:crypto';
import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhenResult, type CircuitBreakerPolicy } from 'cockatiel';
import type { Logger } from 'pino';
import type { NotificationRow } from '../db/schema';
import type { Metrics } from '../observability/metrics';
import type { AttemptRecord, NotificationRepository } from './notification-repository';
import type { AttemptResult, NotificationSender } from './notification-sender';
import { judgeAttempt, parseRetryAfter } from './retry-policy';

/** Consecutive failed attempts (no answer, 5xx, 429) that open a receiver host's breaker on this replica. */
export const HOST_BREAKER_FAILURES = 5;
/** How long an open host breaker keeps that host's notifications unclaimed before one trial attempt. */
export const HOST_BREAKER_HALF_OPEN_MS = 30_000;
/** Claims lapse this long after the attempt's own timeout (signing, recording), then others take over. */
export const LEASE_MARGIN_MS = 10_000;
/** Breakers kept before closed, idle ones are forgotten. */
const MAX_BREAKERS = 10_000;

export interface DeliveryWorkerOptions {
  /** Attempts in flight in this process. */
  concurrency: number;
  /** Attempts in flight per receiver host in this process. */
  hostConcurrency: number;
  /** NOTIFY_TIMEOUT_MS: one attempt's limit. */
  timeoutMs: number;
  /** NOTIFY_SCHEDULE_SECONDS */
  scheduleSeconds: readonly number[];
  /** The short poll that finds notifications written by other replicas or due for a retry. */
  pollMs: number;
}

export interface DeliveryWorkerDeps {
  repo: NotificationRepository;
  /** Writes an attempt's outcome (default: repo.recordAttempt; the runtime batches them, one commit per batch). */
  record?: (r: AttemptRecord) => Promise<boolean>;
  sender: NotificationSender;
  metrics: Metrics;
  logger: Logger;
  instanceId: string;
}

interface HostBreaker {
  policy: CircuitBreakerPolicy;
  openedAt: number;
}

/**
 * Delivers the notification outbox. Claims work like the reconciler (one SKIP LOCKED statement, a lease
 * apart from the due time, the claim token as a fence on every write), so across replicas one attempt
 * is in flight per notification, and a killed replica's claims are taken over once their lease lapses.
 * Woken at once when this process writes a notification, by a timer when a retry here falls due, and by
 * a short poll otherwise. A slow or dead receiver cannot hold up the others: each host has its own bound
 * on attempts in flight and its own circuit breaker, and hosts at their bound or behind an open breaker
 * are left out of claims.
 */
export class DeliveryWorker {
  private readonly inFlight = new Set<Promise<void>>();
  private readonly perHost = new Map<string, number>();
  private readonly breakers = new Map<string, HostBreaker>();
  private readonly leaseMs: number;
  private pumping: Promise<void> | undefined;
  private pumpAgain = false;
  /** The last claim came back full, or handed rows back: a finishing attempt should claim again. */
  private backlog = false;
  private stopping = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private dueTimer: { at: number; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly deps: DeliveryWorkerDeps,
    private readonly opts: DeliveryWorkerOptions,
  ) {
    this.leaseMs = opts.timeoutMs + LEASE_MARGIN_MS;
  }

  start(): void {
    if (this.pollTimer) return;
    this.stopping = false;
    this.pollTimer = setInterval(() => this.wake(), this.opts.pollMs);
    this.pollTimer.unref();
    this.wake();
  }

  /** Stops claiming and waits for attempts in flight (each bounded by the timeout). */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    if (this.dueTimer) clearTimeout(this.dueTimer.timer);
    this.dueTimer = undefined;
    await this.pumping;
    await Promise.allSettled([...this.inFlight]);
  }

  /** Something may be due now: claim soon. Cheap to call often (overlap-guarded). */
  wake(): void {
    if (this.stopping) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
      if (this.pumpAgain) {
        this.pumpAgain = false;
        this.wake();
      }
    });
  }

  /** Claims what is due now and waits until those attempts are done (for tests and the bench). */
  async runOnce(): Promise<void> {
    this.wake();
    await this.pumping;
    await Promise.allSettled([...this.inFlight]);
  }

  get activeCount(): number {
    return this.inFlight.size;
  }

  private async pump(): Promise<void> {
    try {
      while (!this.stopping) {
        const free = this.opts.concurrency - this.inFlight.size;
        if (free <= 0) {
          this.backlog = true;
          return;
        }
        const owner = `${this.deps.instanceId}:notify:${randomUUID()}`;
        const skip = this.hostsToSkip();
        const rows = await this.deps.repo.claimDue(free, owner, this.leaseMs, skip);
        const handBack: string[] = [];
        for (const row of rows) {
          if (this.hostBlocked(row.host)) handBack.push(row.id);
          else this.startAttempt(row, owner);
        }
        // Beyond a host's bound: back at once, due now; this process' next claim skips that host.
        if (handBack.length > 0) await this.deps.repo.release(handBack, owner, 0);
        // Claim again when an attempt ends if there may be more: a full claim, rows handed back, or hosts skipped.
        this.backlog = rows.length === free || handBack.length > 0 || skip.length > 0;
        if (rows.length < free || handBack.length === rows.length) return;
      }
    } catch (err) {
      this.deps.logger.error({ err }, 'notification claim failed');
    }
  }

  private hostsToSkip(): string[] {
    const skip: string[] = [];
    for (const [host, n] of this.perHost) if (n >= this.opts.hostConcurrency) skip.push(host);
    for (const [host, b] of this.breakers) if (this.breakerHolds(b)) skip.push(host);
    return skip;
  }

  private hostBlocked(host: string): boolean {
    const b = this.breakers.get(host);
    return (this.perHost.get(host) ?? 0) >= this.opts.hostConcurrency || (b !== undefined && this.breakerHolds(b));
  }

  /** Open and not yet due for its half-open trial. */
  private breakerHolds(b: HostBreaker): boolean {
    return b.policy.state === CircuitState.Open && Date.now() - b.openedAt < HOST_BREAKER_HALF_OPEN_MS;
  }

  private breakerFor(host: string): HostBreaker {
    let b = this.breakers.get(host);
    if (!b) {
      if (this.breakers.size >= MAX_BREAKERS) {
        for (const [h, old] of this.breakers) if (old.policy.state === CircuitState.Closed && !this.perHost.has(h)) this.breakers.delete(h);
      }
      const policy = circuitBreaker(handleWhenResult((r) => isTransientFailure(r as AttemptResult)), {
        halfOpenAfter: HOST_BREAKER_HALF_OPEN_MS,
        breaker: new ConsecutiveBreaker(HOST_BREAKER_FAILURES),
      });
      const entry: HostBreaker = { policy, openedAt: 0 };
      policy.onBreak(() => {
        entry.openedAt = Date.now();
        this.deps.logger.warn({ host }, 'notification receiver breaker opened');
      });
      this.breakers.set(host, (b = entry));
    }
    return b;
  }

  private startAttempt(row: NotificationRow, owner: string): void {
    this.perHost.set(row.host, (this.perHost.get(row.host) ?? 0) + 1);
    const run = this.attempt(row, owner)
      .catch((err: unknown) => this.deps.logger.error({ err, notificationId: row.id }, 'notification attempt failed; its claim lapses and it is retried'))
      .finally(() => {
        this.inFlight.delete(run);
        const left = (this.perHost.get(row.host) ?? 1) - 1;
        if (left > 0) this.perHost.set(row.host, left);
        else this.perHost.delete(row.host);
        if (this.backlog) this.wake();
      });
    this.inFlight.add(run);
  }

  private async attempt(row: NotificationRow, owner: string): Promise<void> {
    let result: AttemptResult;
    try {
      result = await this.breakerFor(row.host).policy.execute(() => this.deps.sender.send(row));
    } catch (err) {
      if (!(err instanceof BrokenCircuitError)) throw err;
      // Half-open and another attempt is the trial: not an attempt of this notification, so no count.
      await this.deps.repo.release([row.id], owner, HOST_BREAKER_HALF_OPEN_MS);
      return;
    }
    this.deps.metrics.notificationDelivery.observe(result.durationMs / 1000);
    const attempts = row.attempts + 1;
    const retryAfterMs = result.statusCode === 429 || result.statusCode === 503 ? parseRetryAfter(result.retryAfter, Date.now()) : undefined;
    const verdict = judgeAttempt(this.opts.scheduleSeconds, attempts, result.statusCode, retryAfterMs);
    const recorded = await (this.deps.record ?? ((r: AttemptRecord) => this.deps.repo.recordAttempt(r)))({
      id: row.id,
      owner,
      status: verdict.status,
      statusCode: result.statusCode ?? null,
      error: result.error ?? (verdict.status === 'delivered' ? null : `HTTP ${result.statusCode}`),
      ...(verdict.status === 'pending' ? { retryInMs: verdict.retryInMs } : {}),
    });
    if (!recorded) {
      this.deps.logger.warn({ notificationId: row.id }, 'notification claim was taken over before its attempt was recorded');
      return;
    }
    this.deps.metrics.notifications.inc({ outcome: verdict.status === 'pending' ? 'retry' : verdict.status });
    if (verdict.status === 'pending') {
      this.deps.logger.debug({ notificationId: row.id, attempts, statusCode: result.statusCode, error: result.error, retryInMs: verdict.retryInMs }, 'notification attempt failed; retrying');
      if (verdict.retryInMs < this.opts.pollMs) this.wakeIn(verdict.retryInMs);
    } else if (verdict.status !== 'delivered') {
      this.deps.logger.warn({ notificationId: row.id, taskId: row.task_id, attempts, outcome: verdict.status, statusCode: result.statusCode, error: result.error }, 'notification given up');
    }
  }

  /** A retry here falls due before the next poll: wake for it then (plus a little for the database clock). */
  private wakeIn(ms: number): void {
    const at = Date.now() + ms + 5;
    if (this.stopping || (this.dueTimer && this.dueTimer.at <= at)) return;
    if (this.dueTimer) clearTimeout(this.dueTimer.timer);
    const timer = setTimeout(() => {
      this.dueTimer = undefined;
      this.wake();
    }, at - Date.now());
    timer.unref();
    this.dueTimer = { at, timer };
  }
}

/** What counts against a host's breaker: no answer at all, a 5xx or a 429 (an answered 4xx is the receiver alive). */
function isTransientFailure(r: AttemptResult): boolean {
  return r.statusCode === undefined || r.statusCode >= 500 || r.statusCode === 429;
}
