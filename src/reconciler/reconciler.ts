import { randomUUID } from 'node:crypto';
import cron, { type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { TaskRow } from '../db/schema';
import type { Metrics } from '../observability/metrics';
import type { TaskRepository } from '../tasks/task-repository';
import type { TaskChecker } from './task-checker';

export interface ReconcilerOptions {
  /** node-cron expression of the sweep; it fires on every replica. */
  cron: string;
  /** Checks in flight at once on this replica. */
  concurrency: number;
  /** Tasks claimed per statement. */
  batchSize: number;
  /** How long a claim lasts; a replica that dies holding it is taken over after this. */
  leaseMs: number;
}

export interface SweepResult {
  claimed: number;
  checked: number;
  durationMs: number;
}

export interface ReconcilerDeps {
  /** Longest one check of a task of `partner` can take (a status query, then maybe a dispatch). */
  worstCheckMs: (partner: string) => number;
  repo: TaskRepository;
  checker: TaskChecker;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  instanceId: string;
}

/** A claimed task is only checked while its claim still covers its worst-case check plus this margin. */
const LEASE_SAFETY_MARGIN_MS = 2000;
/** A sweep sooner than the cron's next tick is only arranged for work due within this long. */
const EARLY_SWEEP_HORIZON_MS = 10_000;

/**
 * Asks partners about open tasks until each reaches a final status. Every replica sweeps on the cron;
 * claims (SKIP LOCKED, leased by the database's clock, fenced) keep replicas from checking the same task.
 * A sweep claims in batches and keeps `concurrency` checks in flight, claiming again as checks start,
 * until a claim comes back short. It claims only what was due when it began, and every check moves a
 * task's next check past that instant, so a sweep ends however partners answer (deferrals, Retry-After 0).
 */
export class Reconciler {
  private task: ScheduledTask | undefined;
  private sweeping: Promise<SweepResult> | undefined;
  private rerunRequested = false;
  /** Set by stop(): a sweep in flight stops claiming, hands back what it has not started, and nudges are ignored. */
  private stopping = false;
  private wakeStopping: (() => void) | undefined;
  private stopSignal!: Promise<void>;
  private earlyTimer: NodeJS.Timeout | undefined;
  private earlyAt = Number.POSITIVE_INFINITY;

  /**
   * The lease actually taken: at least the configured one, and long enough for the slowest partner's
   * worst-case check plus the margin, so no claim can lapse while its check is still talking to the
   * partner (another replica would then send the same request again).
   */
  private readonly leaseMs: number;

  constructor(
    private readonly deps: ReconcilerDeps,
    private readonly opts: ReconcilerOptions & { partnerIds: readonly string[] },
  ) {
    const slowest = Math.max(0, ...opts.partnerIds.map((p) => deps.worstCheckMs(p)));
    this.leaseMs = Math.max(opts.leaseMs, slowest + 2 * LEASE_SAFETY_MARGIN_MS);
    this.armStopSignal();
  }

  private armStopSignal(): void {
    this.stopSignal = new Promise<void>((resolve) => (this.wakeStopping = resolve));
  }

  start(): void {
    if (this.task) return;
    if (this.stopping) this.armStopSignal();
    this.stopping = false;
    this.task = cron.schedule(this.opts.cron, () => void this.runOnce(), { name: `reconciler-${this.deps.instanceId}`, noOverlap: true });
  }

  /**
   * Stops claiming at once; the sweep in flight hands back the tasks it has not started (due at once for
   * another replica) and lets the checks in flight finish, waited for until `deadline` (epoch ms). A check
   * still talking to its partner then keeps its lease, which lapses on its own.
   */
  async stop(deadline = Number.POSITIVE_INFINITY): Promise<void> {
    this.stopping = true;
    this.wakeStopping?.();
    clearTimeout(this.earlyTimer);
    this.earlyTimer = undefined;
    await this.task?.destroy();
    this.task = undefined;
    if (!this.sweeping) return;
    let timer: NodeJS.Timeout | undefined;
    const outlived = await Promise.race([
      this.sweeping.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), Math.max(0, deadline - Date.now())))),
    ]);
    clearTimeout(timer);
    if (outlived) this.deps.logger.warn('reconciler checks still in flight at the shutdown deadline; their leases will lapse');
  }

  /** Sweeps now, or joins the sweep in flight (the overlap guard). */
  runOnce(): Promise<SweepResult> {
    this.sweeping ??= this.sweep().finally(() => {
      this.sweeping = undefined;
      if (this.rerunRequested && !this.stopping) {
        this.rerunRequested = false;
        void this.runOnce();
      }
    });
    return this.sweeping;
  }

  /**
   * Something became due now (an on-demand check): sweep right away rather than at the next tick. Works
   * whether or not the cron is scheduled: the check was asked for by a request, not by the schedule.
   */
  nudge(): void {
    if (this.stopping) return;
    if (this.sweeping) this.rerunRequested = true;
    else void this.runOnce();
  }

  /**
   * Something becomes due at `at`: sweep then rather than at the next tick (at once when it is due
   * already). A later time is only kept while the cron is scheduled, so tests that drive sweeps by hand
   * with `runOnce()` never see one of their own.
   */
  nudgeAt(at: Date): void {
    if (this.stopping) return;
    const delay = at.getTime() - this.deps.clock.now().getTime();
    if (delay <= 0) return this.nudge();
    if (!this.task || delay > EARLY_SWEEP_HORIZON_MS) return;
    const when = Date.now() + delay;
    if (this.earlyTimer && this.earlyAt <= when) return;
    clearTimeout(this.earlyTimer);
    this.earlyAt = when;
    this.earlyTimer = setTimeout(() => {
      this.earlyTimer = undefined;
      this.earlyAt = Number.POSITIVE_INFINITY;
      this.nudge();
    }, delay);
    this.earlyTimer.unref();
  }

  private async sweep(): Promise<SweepResult> {
    const started = performance.now();
    // One instant for the whole sweep: it claims what was due when it began. A task it puts back (a
    // deferral, Retry-After 0) is due after that instant, so the same sweep never claims it again.
    const cutoff = this.deps.clock.now();
    const inFlight = new Set<Promise<void>>();
    const flushes = new Set<Promise<void>>();
    let claimed = 0;
    let checked = 0;
    try {
      await this.parkUnknownPartners(cutoff);
      while (!this.stopping) {
        const owner = `${this.deps.instanceId}:sweep:${randomUUID()}`;
        const claimedAt = performance.now();
        const batch = await this.deps.repo.claimDue(cutoff, this.opts.batchSize, owner, this.leaseMs, this.opts.partnerIds, this.deps.clock.now());
        claimed += batch.length;
        const routine: Array<{ id: string; nextCheckAt: Date }> = [];
        const handBack: string[] = [];
        const runs: Promise<void>[] = [];
        for (const task of batch) {
          while (!this.stopping && inFlight.size >= this.opts.concurrency) await Promise.race([...inFlight, this.stopSignal]);
          // Draining, or waited so long for a slot that the claim might lapse mid-check: hand it back
          // untouched (still due) for the next claim, here or on another replica.
          if (this.stopping || !this.leaseCovers(task, claimedAt)) {
            handBack.push(task.id);
            continue;
          }
          const run = this.checkOne(task, owner, routine).finally(() => inFlight.delete(run));
          inFlight.add(run);
          runs.push(run);
          checked++;
        }
        // Once every check of this claim is done, its routine results go in one statement (well within
        // the lease: a claim that lapsed first just gets checked again).
        const written: Promise<void> = Promise.all(runs)
          .then(() => this.writeRoutine(owner, routine))
          .then(() => this.handBack(owner, handBack))
          .finally(() => flushes.delete(written));
        flushes.add(written);
        if (batch.length < this.opts.batchSize) break;
      }
      await Promise.all(inFlight);
      await Promise.all(flushes);
      if (this.task && !this.stopping) {
        const next = await this.deps.repo.nextDueAfter(cutoff);
        if (next) this.nudgeAt(next);
      }
    } catch (err) {
      await Promise.allSettled([...inFlight, ...flushes]);
      this.deps.logger.error({ err }, 'reconciler sweep failed');
    }
    const durationMs = performance.now() - started;
    this.deps.metrics.reconcilerSweepDuration.observe(durationMs / 1000);
    if (claimed > 0) this.deps.logger.debug({ claimed, checked, durationMs: Math.round(durationMs) }, 'reconciler sweep');
    return { claimed, checked, durationMs };
  }

  /** Whether a claim taken at `claimedAt` (monotonic) still covers a whole check of `task` plus the margin. */
  private leaseCovers(task: TaskRow, claimedAt: number): boolean {
    const leftMs = this.leaseMs - (performance.now() - claimedAt);
    return leftMs >= this.deps.worstCheckMs(task.partner) + LEASE_SAFETY_MARGIN_MS;
  }

  /**
   * (issue 7, item 5) Open tasks of partners that are no longer configured: the claim skips them until
   * they expire; once due, they get an event and a count once, and are moved out of the due range.
   */
  private async parkUnknownPartners(now: Date): Promise<void> {
    const parked = await this.deps.repo.parkUnknownPartners(this.opts.partnerIds, now);
    for (const [partner, n] of parked) {
      this.deps.metrics.tasksUnknownPartner.inc({ partner }, n);
      this.deps.logger.error({ partner, tasks: n }, 'open tasks of a partner that is not configured: not checked until they expire');
    }
  }

  private async writeRoutine(owner: string, routine: Array<{ id: string; nextCheckAt: Date }>): Promise<void> {
    try {
      await this.deps.repo.recordRoutineChecks(owner, this.deps.clock.now(), routine);
    } catch (err) {
      // Not written: the claims lapse and these tasks are simply checked again.
      this.deps.logger.error({ err, count: routine.length }, 'could not record routine checks');
    }
  }

  private async handBack(owner: string, ids: string[]): Promise<void> {
    try {
      await this.deps.repo.handBack(ids, owner);
    } catch (err) {
      this.deps.logger.warn({ err, count: ids.length }, 'could not hand claims back; they lapse on their own');
    }
  }

  private async checkOne(task: TaskRow, owner: string, routine: Array<{ id: string; nextCheckAt: Date }>): Promise<void> {
    try {
      const outcome = await this.deps.checker.check(task, owner, routine);
      this.deps.metrics.reconcilerChecks.inc({ partner: task.partner, outcome });
    } catch (err) {
      // The claim lapses and the task is checked again; nothing is lost.
      this.deps.metrics.reconcilerChecks.inc({ partner: task.partner, outcome: 'failed' });
      this.deps.logger.error({ err, taskId: task.id }, 'reconciler check failed');
    }
  }
}
