import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { Client } from 'pg';
import pino from 'pino';
import { InboxRepository } from '../../src/callbacks/inbox-repository';
import { ManualClock } from '../../src/clock';
import type { NotificationRow } from '../../src/db/schema';
import { NotificationRepository } from '../../src/notifications/notification-repository';
import { Metrics } from '../../src/observability/metrics';
import { Housekeeping } from '../../src/reconciler/housekeeping';
import { TaskRepository } from '../../src/tasks/task-repository';
import { IDS_PER_PAYLOAD, SettledWakeSender, TASK_SETTLED_CHANNEL, TaskWakeListener } from '../../src/tasks/task-wake-listener';
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
  await repo.insert({ id, partner: 'p', requestNo: `o-${seq}`, kind: null, payload: { n: seq }, notifyUrl, metadata: null, bodyHash: 'h', createdAt: now, expiresAt: new Date(now.getTime() + 86_400_000), leaseOwner: 'c', leaseMs: 60_000, nextCheckAt: now });
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

test('recordAttempts: many outcomes in one statement, each fenced on its own claim, answered in order', async () => {
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    const id = await newTask('https://rec.example/h');
    await withOutbox.transition({ taskId: id, to: 'succeeded', source: 'poll', now: new Date() });
    ids.push(id);
  }
  const claimed = (await notifications.claimDue(100, 'rec', 60_000, [])).filter((n) => n.host === 'rec.example');
  expect(claimed).toHaveLength(4);
  const [a, b, c, d] = claimed as [NotificationRow, NotificationRow, NotificationRow, NotificationRow];
  const written = await notifications.recordAttempts([
    { id: a.id, owner: 'rec', status: 'delivered', statusCode: 204, error: null },
    { id: b.id, owner: 'not-the-holder', status: 'delivered', statusCode: 200, error: null },
    { id: c.id, owner: 'rec', status: 'pending', statusCode: 503, error: 'HTTP 503', retryInMs: 36_000_000 },
    { id: d.id, owner: 'rec', status: 'gone', statusCode: 410, error: 'HTTP 410' },
  ]);
  expect(written).toEqual([true, false, true, true]);
  const { rows } = await sql<{ id: string; status: string; attempts: number; last_status_code: number | null; lease_owner: string | null; delivered: boolean; wait_s: number | null }>`
    select id, status, attempts, last_status_code, lease_owner, delivered_at is not null as delivered,
           round(extract(epoch from next_attempt_at - now()))::int as wait_s
    from notifications where id = any(${[a.id, b.id, c.id, d.id]}::uuid[])`.execute(db.handle.db);
  const byId = new Map(rows.map((r) => [r.id, r]));
  expect(byId.get(a.id)).toMatchObject({ status: 'delivered', attempts: 1, last_status_code: 204, lease_owner: null, delivered: true, wait_s: null });
  // The fenced-out record changed nothing: still claimed by its holder, no attempt counted.
  expect(byId.get(b.id)).toMatchObject({ status: 'pending', attempts: 0, last_status_code: null, lease_owner: 'rec', delivered: false });
  expect(byId.get(c.id)).toMatchObject({ status: 'pending', attempts: 1, last_status_code: 503, lease_owner: null, delivered: false });
  expect(byId.get(c.id)!.wait_s).toBeGreaterThanOrEqual(35_990);
  expect(byId.get(d.id)).toMatchObject({ status: 'gone', attempts: 1, last_status_code: 410, lease_owner: null, wait_s: null });
  expect(await notifications.recordAttempts([])).toEqual([]);
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

describe('the outbox in the shared multi-row transition block (TRANSITION_CORE_SQL)', () => {
  test('transitionMany: one notification per settled task, written by the one statement', async () => {
    const effects = { outbox: true };
    const repo = new TaskRepository(db.handle.db, db.handle.pool, effects);
    const a = await newTask('https://a.example/h');
    const b = await newTask('https://b.example/h');
    const plain = await newTask(null);
    const moving = await newTask('https://m.example/h');
    const now = new Date();
    const results = await repo.transitionMany([
      { taskId: a, to: 'succeeded', source: 'poll', now, changes: { result: { v: 1 }, settledBy: 'poll', nextCheckAt: null } },
      { taskId: b, to: 'failed', source: 'poll', now, changes: { error: { v: 2 }, settledBy: 'poll', nextCheckAt: null } },
      { taskId: plain, to: 'succeeded', source: 'poll', now },
      { taskId: moving, to: 'dispatched', source: 'dispatch', now },
    ]);
    expect(results.map((r) => r.outcome)).toEqual(['applied', 'applied', 'applied', 'applied']);
    expect(results[0]!.notificationId).toBeDefined();
    expect(results[1]!.notificationId).toBeDefined();
    expect(results[0]!.notificationId).not.toBe(results[1]!.notificationId);
    expect(results[2]!.notificationId).toBeUndefined();
    expect(results[3]!.notificationId).toBeUndefined();
    expect((await rowsOf(a)).map((r) => r.type)).toEqual(['task.succeeded']);
    expect((await rowsOf(b)).map((r) => r.type)).toEqual(['task.failed']);
    expect(await rowsOf(plain)).toEqual([]);
    expect(await rowsOf(moving)).toEqual([]);
    // The snapshot is the task only: none of the statement's bookkeeping columns.
    const snap = (await rowsOf(a))[0]!.task_snapshot;
    expect(snap).toMatchObject({ id: a, status: 'succeeded', result: { v: 1 } });
    for (const k of ['moved_ord', 'from_status', 'settled_at', 'write_outbox', 'lease_owner', 'body_hash']) expect(snap).not.toHaveProperty(k);

    // An expired task that later settles notifies again (one more row), in a batch too.
    const exp = await newTask('https://e.example/h');
    expect((await repo.transitionMany([{ taskId: exp, to: 'expired', source: 'expiry', now }]))[0]!.notificationId).toBeDefined();
    const late = await repo.transitionMany([{ taskId: exp, to: 'succeeded', source: 'poll', now: new Date(), changes: { settledBy: 'poll' } }]);
    expect(late[0]!.outcome).toBe('applied');
    expect(late[0]!.notificationId).toBeDefined();
    expect((await rowsOf(exp)).map((r) => r.type)).toEqual(['task.expired', 'task.succeeded']);
  });

  test('storeAndApply: a callback stored and applied in one statement writes the outbox too', async () => {
    const inbox = new InboxRepository(db.handle.db, db.handle.pool, { outbox: true });
    const id = await newTask('https://cb.example/h');
    const requestNo = (await withOutbox.findById(id))!.request_no;
    const now = new Date();
    const [r] = await inbox.storeAndApply([
      {
        row: { partner: 'p', webhookId: `w-${id}`, requestNo, reportedStatus: 'succeeded', result: { ok: 1 }, error: undefined, rawBody: '{}', receivedAt: now, outcome: 'queued' },
        spec: { taskId: randomUUID(), to: 'succeeded', source: 'callback', now, reported: 'succeeded', changes: { result: { ok: 1 }, settledBy: 'callback', nextCheckAt: null }, detail: { type: 'callback' } },
      },
    ]);
    expect(r).toMatchObject({ stored: true, taskId: id, applied: { outcome: 'applied', notificationId: expect.any(String) } });
    expect((await rowsOf(id)).map((x) => x.type)).toEqual(['task.succeeded']);

    // With the outbox off (NOTIFY_SECRET unset): no row.
    const off = new InboxRepository(db.handle.db, db.handle.pool);
    const quiet = await newTask('https://cb.example/h');
    const [q] = await off.storeAndApply([
      {
        row: { partner: 'p', webhookId: `w-${quiet}`, requestNo: (await withOutbox.findById(quiet))!.request_no, reportedStatus: 'failed', result: undefined, error: { e: 1 }, rawBody: '{}', receivedAt: now, outcome: 'queued' },
        spec: { taskId: randomUUID(), to: 'failed', source: 'callback', now, reported: 'failed', changes: { error: { e: 1 }, settledBy: 'callback', nextCheckAt: null } },
      },
    ]);
    expect(q).toMatchObject({ stored: true, applied: { outcome: 'applied' } });
    expect(q!.stored && q!.applied?.notificationId).toBeUndefined();
    expect(await rowsOf(quiet)).toEqual([]);
  });
});

describe('the settled-task wake, sent after the commit (SettledWakeSender → TaskWakeListener)', () => {
  test('ids settled together share a NOTIFY (at most 200 per payload); each arrives once, split back into ids', async () => {
    const raw: string[] = [];
    const rawListener = new Client({ connectionString: db.url });
    await rawListener.connect();
    rawListener.on('notification', (m) => {
      if (m.channel === TASK_SETTLED_CHANNEL) raw.push(m.payload ?? '');
    });
    await rawListener.query(`listen ${TASK_SETTLED_CHANNEL}`);
    const heard: string[] = [];
    const listener = new TaskWakeListener({ url: db.url, logger: pino({ level: 'silent' }), connectTimeoutMs: 5000, onSettled: (id) => heard.push(id), onResync: () => undefined });
    await listener.start();
    const sender = new SettledWakeSender(db.handle.pool, pino({ level: 'silent' }));
    try {
      expect(listener.isLive).toBe(true);
      const ids = Array.from({ length: 450 }, () => randomUUID());
      for (const id of ids) sender.settled(id); // one I/O turn: one NOTIFY statement, three payloads
      await sender.flush();
      const later = randomUUID();
      sender.settled(later);
      await sender.flush();

      const deadline = Date.now() + 20_000;
      // Two connections listen: each gets the NOTIFYs on its own schedule, so wait for both.
      while ((heard.length < ids.length + 1 || raw.length < 4) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      expect([...heard].sort()).toEqual([...ids, later].sort());
      expect(raw).toHaveLength(4);
      expect(raw.slice(0, 3).map((p) => p.split(',').length)).toEqual([IDS_PER_PAYLOAD, IDS_PER_PAYLOAD, 50]);
      for (const p of raw) expect(Buffer.byteLength(p)).toBeLessThan(8000);
    } finally {
      await listener.stop();
      await rawListener.end();
    }
  });
});
