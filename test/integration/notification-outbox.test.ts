import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import pino from 'pino';
import { ManualClock } from '../../src/clock';
import { NotificationRepository } from '../../src/notifications/notification-repository';
import { Metrics } from '../../src/observability/metrics';
import { Housekeeping } from '../../src/reconciler/housekeeping';
import { TaskRepository } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/** The outbox on real Postgres: written by the transition statement itself, claimed with leases, kept by retention. */

let db: TestDatabase;
let withOutbox: TaskRepository;
let withoutOutbox: TaskRepository;
let notifications: NotificationRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  withOutbox = new TaskRepository(db.handle.db, undefined, { outbox: true });
  withoutOutbox = new TaskRepository(db.handle.db, undefined, { outbox: false });
  notifications = new NotificationRepository(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

let seq = 0;
async function newTask(notifyUrl: string | null, repo = withOutbox): Promise<string> {
  seq += 1;
  const id = randomUUID();
  const now = new Date();
  await repo.insert({ id, partner: 'p', requestNo: `o-${seq}`, kind: null, payload: { n: seq }, notifyUrl, metadata: null, bodyHash: 'h', createdAt: now, expiresAt: new Date(now.getTime() + 86_400_000), leaseOwner: 'c', nextCheckAt: now });
  return id;
}
const rowsOf = async (taskId: string) =>
  (await sql<{ type: string; url: string; host: string; status: string; task_snapshot: Record<string, unknown> }>`
    select type, url, host, status, task_snapshot from notifications where task_id = ${taskId}::uuid order by created_at`.execute(db.handle.db)).rows;

test('the settling transition writes the notification in the same statement, with the task as it was', async () => {
  const id = await newTask('https://User:pw@Client.Example:8443/hook?x=1');
  expect((await withOutbox.transition({ taskId: id, to: 'dispatched', source: 'dispatch', now: new Date() })).notificationId).toBeUndefined();
  expect(await rowsOf(id)).toEqual([]);
  const r = await withOutbox.transition({ taskId: id, to: 'failed', source: 'callback', now: new Date(), changes: { error: { code: 'E' }, settledBy: 'callback', nextCheckAt: null } });
  expect(r.outcome).toBe('applied');
  expect(r.notificationId).toBeDefined();
  const rows = await rowsOf(id);
  expect(rows).toHaveLength(1);
  expect(rows[0]).toMatchObject({ type: 'task.failed', url: 'https://User:pw@Client.Example:8443/hook?x=1', host: 'client.example:8443', status: 'pending' });
  expect(rows[0]!.task_snapshot).toMatchObject({ id, status: 'failed', error: { code: 'E' }, settled_by: 'callback', payload: { n: expect.any(Number) } });
  expect(rows[0]!.task_snapshot).not.toHaveProperty('body_hash');
  // An ignored repeat writes nothing more.
  expect((await withOutbox.transition({ taskId: id, to: 'failed', source: 'callback', now: new Date() })).outcome).toBe('ignored');
  expect(await rowsOf(id)).toHaveLength(1);
});

test('no notification without a notifyUrl, or with the outbox off (NOTIFY_SECRET unset)', async () => {
  const plain = await newTask(null);
  await withOutbox.transition({ taskId: plain, to: 'succeeded', source: 'poll', now: new Date() });
  const off = await newTask('https://c.example/h', withoutOutbox);
  await withoutOutbox.transition({ taskId: off, to: 'rejected', source: 'dispatch', now: new Date() });
  expect(await rowsOf(plain)).toEqual([]);
  expect(await rowsOf(off)).toEqual([]);
});

test('claims never overlap, the lease is apart from the due time, and a lapsed claim is taken over and fenced', async () => {
  const ids: string[] = [];
  for (let i = 0; i < 30; i++) {
    const id = await newTask('https://c.example/h');
    await withOutbox.transition({ taskId: id, to: 'succeeded', source: 'poll', now: new Date() });
    ids.push(id);
  }
  const [x, y] = await Promise.all([notifications.claimDue(20, 'x', 60_000, []), notifications.claimDue(20, 'y', 60_000, [])]);
  const claimed = [...x, ...y].map((n) => n.id);
  expect(new Set(claimed).size).toBe(claimed.length);
  expect(claimed.length).toBeGreaterThanOrEqual(30);
  // Held: nobody else gets them, though they are still due.
  expect(await notifications.claimDue(100, 'z', 60_000, [])).toEqual([]);
  const victim = x[0]!;
  expect(new Date(victim.next_attempt_at!).getTime()).toBeLessThanOrEqual(Date.now() + 1000);

  // Its lease lapses (set in the past): claimed by another, and the first holder's late result is refused.
  await sql`update notifications set lease_expires_at = now() - interval '1 second' where id = ${victim.id}::uuid`.execute(db.handle.db);
  const [retaken] = await notifications.claimDue(1, 'w', 60_000, []);
  expect(retaken!.id).toBe(victim.id);
  expect(await notifications.recordAttempt({ id: victim.id, owner: victim.lease_owner!, status: 'delivered', statusCode: 200, error: null })).toBe(false);
  expect(await notifications.recordAttempt({ id: victim.id, owner: 'w', status: 'pending', statusCode: 500, error: 'HTTP 500', retryInMs: 60_000 })).toBe(true);
  // Skipped hosts are left out of claims.
  await sql`update notifications set lease_owner = null, lease_expires_at = null, next_attempt_at = now() where status = 'pending'`.execute(db.handle.db);
  const left = await notifications.claimDue(100, 'v', 60_000, ['c.example']);
  expect(left.length).toBeGreaterThan(0);
  expect(left.every((n) => n.host !== 'c.example')).toBe(true);
});

test('retention deletes done notifications past the retention with the events, never pending ones', async () => {
  const clock = new ManualClock(Date.now());
  const hk = new Housekeeping({ db: db.handle.db, metrics: new Metrics(), clock, logger: pino({ level: 'silent' }), instanceId: 'hk', retentionDays: 30 });
  const byStatus: Record<string, string> = {};
  for (const status of ['delivered', 'failed', 'gone', 'pending'] as const) {
    const id = await newTask('https://c.example/r');
    await withOutbox.transition({ taskId: id, to: 'succeeded', source: 'poll', now: new Date() });
    await sql`update notifications set status = ${status}, created_at = now() - interval '31 days' where task_id = ${id}::uuid`.execute(db.handle.db);
    byStatus[status] = id;
  }
  const recent = await newTask('https://c.example/r');
  await withOutbox.transition({ taskId: recent, to: 'succeeded', source: 'poll', now: new Date() });
  await sql`update notifications set status = 'delivered' where task_id = ${recent}::uuid`.execute(db.handle.db);

  await hk.applyRetention();
  expect(await rowsOf(byStatus.delivered!)).toEqual([]);
  expect(await rowsOf(byStatus.failed!)).toEqual([]);
  expect(await rowsOf(byStatus.gone!)).toEqual([]);
  expect(await rowsOf(byStatus.pending!)).toHaveLength(1);
  expect(await rowsOf(recent)).toHaveLength(1);
});
