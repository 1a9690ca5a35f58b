import cron, { type RunCoordinator, type ScheduledTask } from 'node-cron';
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { Database } from '../db/schema';
import type { Metrics } from '../observability/metrics';

/** The open-task gauges are refreshed every 15 s by one replica (a count over the open tasks). */
export const GAUGES_CRON = '*/15 * * * * *';
/** Retention runs at the start of every tenth minute; one replica does it. */
export const RETENTION_CRON = '0 */10 * * * *';
/** Rows deleted per statement, so retention never holds long locks or a long transaction. */
const RETENTION_BATCH = 5000;
/** Election rows older than this are of no use to anyone. */
const CRON_RUNS_KEEP_MS = 24 * 60 * 60_000;

/**
 * node-cron's RunCoordinator backed by Postgres: for each tick of a distributed job, the replica whose
 * insert of `(job, tick)` wins runs it; the others are told to skip. A conditional insert, not a lock
 * that must be held and released, so a replica that dies mid-job blocks nothing.
 */
export class PostgresRunCoordinator implements RunCoordinator {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly owner: string,
    private readonly clock: Clock,
  ) {}

  async shouldRun(key: string): Promise<boolean> {
    const won = await this.db
      .insertInto('cron_runs')
      .values({ key, owner: this.owner, started_at: this.clock.now() })
      .onConflict((oc) => oc.column('key').doNothing())
      .returning('key')
      .executeTakeFirst();
    return won !== undefined;
  }
}

export interface HousekeepingDeps {
  db: Kysely<Database>;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  instanceId: string;
  retentionDays: number;
}

/**
 * Cluster-wide singleton jobs, each run by one replica per tick: refreshing the open-task gauges (the
 * replicas that are not elected clear theirs, so summing over replicas stays right) and retention of old
 * events, inbox rows and bookkeeping rows.
 */
export class Housekeeping {
  private readonly tasks: ScheduledTask[] = [];
  private readonly coordinator: PostgresRunCoordinator;

  constructor(private readonly deps: HousekeepingDeps) {
    this.coordinator = new PostgresRunCoordinator(deps.db, deps.instanceId, deps.clock);
  }

  start(): void {
    if (this.tasks.length > 0) return;
    const gauges = cron.schedule(GAUGES_CRON, () => this.refreshGauges(), {
      name: 'open-task-gauges',
      distributed: true,
      runCoordinator: this.coordinator,
      noOverlap: true,
    });
    gauges.on('execution:skipped', () => {
      this.deps.metrics.tasksOpen.reset();
      this.deps.metrics.oldestOpenTaskAge.reset();
      this.deps.metrics.notificationsPending.set(0);
    });
    const retention = cron.schedule(RETENTION_CRON, () => this.applyRetention(), {
      name: 'retention',
      distributed: true,
      runCoordinator: this.coordinator,
      noOverlap: true,
    });
    for (const t of [gauges, retention]) t.on('execution:failed', (ctx) => this.deps.logger.error({ err: ctx.execution?.error, job: t.name }, 'housekeeping job failed'));
    this.tasks.push(gauges, retention);
  }

  async stop(): Promise<void> {
    await Promise.all(this.tasks.splice(0).map((t) => t.destroy()));
  }

  /** Counts open tasks per partner and status, and the age of the oldest per partner. */
  async refreshGauges(): Promise<void> {
    const rows = await this.deps.db
      .selectFrom('tasks')
      .select(['partner', 'status', (eb) => eb.fn.countAll<number>().as('n'), (eb) => eb.fn.min('created_at').as('oldest')])
      .where('status', 'in', ['pending', 'dispatched'])
      .groupBy(['partner', 'status'])
      .execute();
    const now = this.deps.clock.now().getTime();
    const { tasksOpen, oldestOpenTaskAge } = this.deps.metrics;
    tasksOpen.reset();
    oldestOpenTaskAge.reset();
    const oldestByPartner = new Map<string, number>();
    for (const r of rows) {
      tasksOpen.set({ partner: r.partner, status: r.status }, Number(r.n));
      const oldest = new Date(r.oldest as Date).getTime();
      oldestByPartner.set(r.partner, Math.min(oldestByPartner.get(r.partner) ?? oldest, oldest));
    }
    for (const [partner, oldest] of oldestByPartner) oldestOpenTaskAge.set({ partner }, Math.max(0, (now - oldest) / 1000));
    const pending = await this.deps.db
      .selectFrom('notifications')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('status', '=', 'pending')
      .executeTakeFirstOrThrow();
    this.deps.metrics.notificationsPending.set(Number(pending.n));
  }

  /**
   * Deletes, in batches: events of final tasks older than the retention, notifications that are done
   * with (delivered, failed or gone) and older than the retention, inbox rows older than the retention
   * (a callback that never matched by then never will), recorded partner calls and unverified callbacks
   * older than the retention, old election rows and spent rate windows. A pending notification is never
   * deleted. Returns how many rows went.
   */
  async applyRetention(): Promise<number> {
    const now = this.deps.clock.now();
    const cutoff = new Date(now.getTime() - this.deps.retentionDays * 24 * 60 * 60_000);
    let deleted = 0;
    const inBatches = async (statement: () => Promise<number>) => {
      for (;;) {
        const n = await statement();
        deleted += n;
        if (n < RETENTION_BATCH) return;
      }
    };
    const count = (r: { numAffectedRows?: bigint }) => Number(r.numAffectedRows ?? 0);
    await inBatches(async () =>
      count(
        await sql`delete from task_events where id in (
          select e.id from task_events e join tasks t on t.id = e.task_id
          where e.at < ${cutoff} and t.status in ('succeeded', 'failed', 'rejected', 'expired')
          limit ${RETENTION_BATCH})`.execute(this.deps.db),
      ),
    );
    await inBatches(async () =>
      count(
        await sql`delete from notifications where id in (
          select id from notifications
          where created_at < ${cutoff} and status in ('delivered', 'failed', 'gone')
          limit ${RETENTION_BATCH})`.execute(this.deps.db),
      ),
    );
    await inBatches(async () =>
      count(
        await sql`delete from callback_inbox where id in (
          select id from callback_inbox where received_at < ${cutoff} limit ${RETENTION_BATCH})`.execute(this.deps.db),
      ),
    );
    // The task story's records of partner calls and unverified callbacks age out like the inbox.
    await inBatches(async () =>
      count(
        await sql`delete from partner_calls where id in (
          select id from partner_calls where started_at < ${cutoff} limit ${RETENTION_BATCH})`.execute(this.deps.db),
      ),
    );
    await inBatches(async () =>
      count(
        await sql`delete from refused_callbacks where id in (
          select id from refused_callbacks where received_at < ${cutoff} limit ${RETENTION_BATCH})`.execute(this.deps.db),
      ),
    );
    await sql`delete from cron_runs where started_at < ${new Date(now.getTime() - CRON_RUNS_KEEP_MS)}`.execute(this.deps.db);
    await sql`delete from partner_rate_limits where expire < ${now.getTime() - 60_000}`.execute(this.deps.db);
    if (deleted > 0) this.deps.logger.info({ deleted, cutoff }, 'retention applied');
    return deleted;
  }
}
