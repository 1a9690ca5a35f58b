import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import pino from 'pino';
import { InboxRepository } from '../../src/callbacks/inbox-repository';
import { ManualClock } from '../../src/clock';
import { Metrics } from '../../src/observability/metrics';
import { Housekeeping, PostgresRunCoordinator } from '../../src/reconciler/housekeeping';
import { TaskRepository } from '../../src/tasks/task-repository';
import type { TaskStatus } from '../../src/tasks/task';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * Cluster-wide housekeeping on real Postgres: the per-tick election on `cron_runs`, the open-task gauges,
 * and retention (driven by a ManualClock).
 */

const DAY = 24 * 60 * 60_000;
const T0 = new Date('2030-06-01T00:00:00Z').getTime();

let db: TestDatabase;
let repo: TaskRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  repo = new TaskRepository(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

function housekeeping(clock: ManualClock, metrics = new Metrics()): { hk: Housekeeping; metrics: Metrics } {
  const hk = new Housekeeping({
    db: db.handle.db,
    metrics,
    clock,
    logger: pino({ level: 'silent' }),
    instanceId: `hk-${randomUUID()}`,
    retentionDays: 30,
  });
  return { hk, metrics };
}

let seq = 0;
/** A task created at `createdAt` and moved through `moves` (unfenced), each move at `createdAt`. */
async function task(partner: string, createdAt: number, moves: TaskStatus[] = []): Promise<string> {
  seq += 1;
  const id = randomUUID();
  await repo.insert({
    id,
    partner,
    requestNo: `hk-${seq}`,
    kind: null,
    payload: {},
    notifyUrl: null,
    metadata: null,
    bodyHash: 'h',
    createdAt: new Date(createdAt),
    expiresAt: new Date(createdAt + DAY),
    leaseOwner: 'creator',
    leaseMs: 10_000,
    nextCheckAt: new Date(createdAt + 10_000),
  });
  for (const to of moves) {
    const r = await repo.transition({ taskId: id, to, source: 'poll', now: new Date(createdAt), changes: to === 'dispatched' ? { markDispatched: true } : { nextCheckAt: null } });
    expect(r.outcome).toBe('applied');
  }
  return id;
}

const eventCount = async (taskId: string) =>
  (await sql<{ n: number }>`select count(*)::int as n from task_events where task_id = ${taskId}::uuid`.execute(db.handle.db)).rows[0]!.n;

test('PostgresRunCoordinator: for each key exactly one of two replicas runs the job', async () => {
  const clock = new ManualClock(T0);
  const a = new PostgresRunCoordinator(db.handle.db, 'replica-a', clock);
  const b = new PostgresRunCoordinator(db.handle.db, 'replica-b', clock);
  const winners: string[] = [];
  for (let tick = 0; tick < 20; tick++) {
    const key = `open-task-gauges:${T0 + tick * 1000}`;
    const [ra, rb] = await Promise.all([a.shouldRun(key), b.shouldRun(key)]);
    expect([ra, rb].filter(Boolean)).toHaveLength(1);
    winners.push(ra ? 'replica-a' : 'replica-b');
    // Asking again for a decided tick never yields a second run, not even for the winner.
    expect(await a.shouldRun(key)).toBe(false);
    expect(await b.shouldRun(key)).toBe(false);
  }
  const { rows } = await sql<{ key: string; owner: string }>`
    select key, owner from cron_runs where key like 'open-task-gauges:%' order by key`.execute(db.handle.db);
  expect(rows.map((r) => r.owner)).toEqual(winners);
  // A different job on the same tick is a separate election.
  const other = `retention:${T0}`;
  const [oa, ob] = await Promise.all([a.shouldRun(other), b.shouldRun(other)]);
  expect(Number(oa) + Number(ob)).toBe(1);
});

test('refreshGauges sets tasks_open{partner,status} and oldest_open_task_age_seconds{partner} from the open tasks', async () => {
  const now = T0 + 1000 * 1000;
  await task('gauge-a', now - 100_000);
  await task('gauge-a', now - 50_000);
  await task('gauge-a', now - 10_000, ['dispatched']);
  await task('gauge-a', now - 900_000, ['succeeded']); // final: neither counted nor the oldest
  const b = await task('gauge-b', now - 30_000, ['dispatched']);

  const { hk, metrics } = housekeeping(new ManualClock(now));
  await hk.refreshGauges();
  const open = (await metrics.tasksOpen.get()).values.filter((v) => String(v.labels.partner).startsWith('gauge-'));
  expect(open.map((v) => [v.labels.partner, v.labels.status, v.value]).sort()).toEqual([
    ['gauge-a', 'dispatched', 1],
    ['gauge-a', 'pending', 2],
    ['gauge-b', 'dispatched', 1],
  ]);
  const age = (await metrics.oldestOpenTaskAge.get()).values.filter((v) => String(v.labels.partner).startsWith('gauge-'));
  expect(Object.fromEntries(age.map((v) => [v.labels.partner, v.value]))).toEqual({ 'gauge-a': 100, 'gauge-b': 30 });

  // The exposition carries them under the contract's names.
  const text = await metrics.registry.metrics();
  expect(text).toContain('callback_reconciler_tasks_open{partner="gauge-a",status="pending"} 2');
  expect(text).toContain('callback_reconciler_oldest_open_task_age_seconds{partner="gauge-b"} 30');

  // Once gauge-b has nothing open, its series disappear at the next refresh instead of going stale.
  await repo.transition({ taskId: b, to: 'failed', source: 'poll', now: new Date(now), changes: { nextCheckAt: null } });
  await hk.refreshGauges();
  expect((await metrics.tasksOpen.get()).values.filter((v) => v.labels.partner === 'gauge-b')).toEqual([]);
  expect((await metrics.oldestOpenTaskAge.get()).values.filter((v) => v.labels.partner === 'gauge-b')).toEqual([]);
  expect((await metrics.tasksOpen.get()).values.find((v) => v.labels.partner === 'gauge-a' && v.labels.status === 'pending')?.value).toBe(2);
});

test('applyRetention 31 days later: deletes old events of final tasks and old inbox rows, keeps open tasks\' events and recent rows', async () => {
  const later = T0 + 31 * DAY;
  // Only this test's rows in play, so the count of deleted rows is exact.
  await sql`delete from tasks where partner <> 'ret'`.execute(db.handle.db);
  const finalOld = await task('ret', T0, ['dispatched', 'succeeded']);
  const openOld = await task('ret', T0, ['dispatched']);
  const finalRecent = await task('ret', later - 60 * 60_000, ['succeeded']);
  expect(await eventCount(finalOld)).toBe(3);
  expect(await eventCount(openOld)).toBe(2);
  expect(await eventCount(finalRecent)).toBe(2);

  const inbox = new InboxRepository(db.handle.db);
  const stored = async (webhookId: string, receivedAt: number) => {
    const r = await inbox.store({ partner: 'ret', webhookId, requestNo: 'nobody', reportedStatus: 'succeeded', result: null, error: null, rawBody: '{}', receivedAt: new Date(receivedAt), outcome: 'queued' });
    expect(r.stored).toBe(true);
  };
  await stored('msg_old', T0);
  await stored('msg_recent', later - 60 * 60_000);

  // Bookkeeping rows: an old and a fresh election, a spent and a live rate-limit window.
  await new PostgresRunCoordinator(db.handle.db, 'r', new ManualClock(T0)).shouldRun('retention-test:old');
  await new PostgresRunCoordinator(db.handle.db, 'r', new ManualClock(later - 60_000)).shouldRun('retention-test:fresh');
  await sql`insert into partner_rate_limits (key, points, expire) values ('partner:spent', 2, ${T0}), ('partner:live', 1, ${later + 60_000})`.execute(db.handle.db);

  const { hk } = housekeeping(new ManualClock(later));
  const deleted = await hk.applyRetention();
  // The three events of the old final task and the old inbox row.
  expect(deleted).toBe(4);

  expect(await eventCount(finalOld)).toBe(0);
  expect(await repo.findById(finalOld)).toMatchObject({ status: 'succeeded' }); // the task itself stays
  expect(await eventCount(openOld)).toBe(2);
  expect(await eventCount(finalRecent)).toBe(2);
  const { rows: inboxLeft } = await sql<{ webhook_id: string }>`select webhook_id from callback_inbox where partner = 'ret' order by id`.execute(db.handle.db);
  expect(inboxLeft.map((r) => r.webhook_id)).toEqual(['msg_recent']);
  const { rows: runsLeft } = await sql<{ key: string }>`select key from cron_runs where key like 'retention-test:%'`.execute(db.handle.db);
  expect(runsLeft.map((r) => r.key)).toEqual(['retention-test:fresh']);
  const { rows: limitsLeft } = await sql<{ key: string }>`select key from partner_rate_limits order by key`.execute(db.handle.db);
  expect(limitsLeft.map((r) => r.key)).toEqual(['partner:live']);

  // Running it again finds nothing more to delete.
  expect(await hk.applyRetention()).toBe(0);
});
