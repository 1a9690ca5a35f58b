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

/**
 * Asks partners about open tasks until each reaches a final status. Every replica sweeps on the cron;
 * claims (SKIP LOCKED, leased, fenced) keep replicas from checking the same task. A sweep claims in
 * batches and keeps `concurrency` checks in flight, claiming again as checks start, until a claim comes
 * back short; it never holds more than one batch plus the checks in flight.
 */
export class Reconciler {
  private task: ScheduledTask | undefined;
  private sweeping: Promise<SweepResult> | undefined;
  private rerunRequested = false;
  /** Set by stop(): a sweep in flight stops claiming and nudges are ignored. */
  private stopping = false;

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
  }

  start(): void {
    if (this.task) return;
    this.stopping = false;
    this.task = cron.schedule(this.opts.cron, () => void this.runOnce(), { name: `reconciler-${this.deps.instanceId}`, noOverlap: true });
  }

  /** Stops the schedule and waits for the sweep in flight to finish its checks. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.task?.destroy();
    this.task = undefined;
    await this.sweeping;
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

  private async sweep(): Promise<SweepResult> {
    const started = performance.now();
    const inFlight = new Set<Promise<void>>();
    const flushes = new Set<Promise<void>>();
    let claimed = 0;
    let checked = 0;
    try {
      while (!this.stopping) {
        const owner = `${this.deps.instanceId}:sweep:${randomUUID()}`;
        const now = this.deps.clock.now();
        const leaseUntil = new Date(now.getTime() + this.leaseMs);
        const batch = await this.deps.repo.claimDue(now, this.opts.batchSize, owner, leaseUntil);
        claimed += batch.length;
        const routine: Array<{ id: string; nextCheckAt: Date }> = [];
        const runs: Promise<void>[] = [];
        for (const task of batch) {
          while (inFlight.size >= this.opts.concurrency) await Promise.race(inFlight);
          const run = this.checkOne(task, owner, leaseUntil, routine).finally(() => inFlight.delete(run));
          inFlight.add(run);
          runs.push(run);
          checked++;
        }
        // Once every check of this claim is done, its routine results go in one statement (well within
        // the lease: a claim that lapsed first just gets checked again).
        const written: Promise<void> = Promise.all(runs)
          .then(() => this.writeRoutine(owner, routine))
          .finally(() => flushes.delete(written));
        flushes.add(written);
        if (batch.length < this.opts.batchSize) break;
      }
      await Promise.all(inFlight);
      await Promise.all(flushes);
    } catch (err) {
      await Promise.allSettled([...inFlight, ...flushes]);
      this.deps.logger.error({ err }, 'reconciler sweep failed');
    }
    const durationMs = performance.now() - started;
    this.deps.metrics.reconcilerSweepDuration.observe(durationMs / 1000);
    if (claimed > 0) this.deps.logger.debug({ claimed, checked, durationMs: Math.round(durationMs) }, 'reconciler sweep');
    return { claimed, checked, durationMs };
  }

  private async writeRoutine(owner: string, routine: Array<{ id: string; nextCheckAt: Date }>): Promise<void> {
    try {
      await this.deps.repo.recordRoutineChecks(owner, this.deps.clock.now(), routine);
    } catch (err) {
      // Not written: the claims lapse and these tasks are simply checked again.
      this.deps.logger.error({ err, count: routine.length }, 'could not record routine checks');
    }
  }

  private async checkOne(task: TaskRow, owner: string, leaseUntil: Date, routine: Array<{ id: string; nextCheckAt: Date }>): Promise<void> {
    // Waited too long for a slot: the claim could lapse mid-check, so leave the task for the next claim.
    const leftMs = leaseUntil.getTime() - this.deps.clock.now().getTime();
    if (leftMs < this.deps.worstCheckMs(task.partner) + LEASE_SAFETY_MARGIN_MS) return;
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
