import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import pino from 'pino';
import { InboxRepository, MAX_REFUSED_PER_TASK } from '../../src/callbacks/inbox-repository';
import { ManualClock } from '../../src/clock';
import { Metrics } from '../../src/observability/metrics';
import { Housekeeping } from '../../src/reconciler/housekeeping';
import { PartnerCallLog } from '../../src/story/partner-call-log';
import { TaskRepository } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/** The records behind the task story, on real Postgres: the buffered call log, refused callbacks, retention. */

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

let seq = 0;
async function task(createdAt: number): Promise<{ id: string; requestNo: string }> {
  seq += 1;
  const id = randomUUID();
  const requestNo = `story-${seq}`;
  await repo.insert({ id, partner: 'p', requestNo, kind: null, payload: {}, notifyUrl: null, metadata: null, bodyHash: 'h', createdAt: new Date(createdAt), expiresAt: new Date(createdAt + DAY), leaseOwner: 'x', leaseMs: 10_000, nextCheckAt: new Date(createdAt + 10_000) });
  return { id, requestNo };
}

const calls = async (taskId: string) =>
  (await sql<{ outcome: string; error_message: string | null }>`select outcome, error_message from partner_calls where task_id = ${taskId}::uuid order by id`.execute(db.handle.db)).rows;

test('the call log writes buffered calls together, skips calls of absent tasks, and stores any partner text', async () => {
  const log = new PartnerCallLog(db.handle.db, pino({ level: 'silent' }));
  const t = await task(T0);
  for (let i = 0; i < 1200; i++) log.record({ taskId: t.id, startedAt: new Date(T0 + i), operation: 'status', outcome: 'found', reportedStatus: 'processing', durationMs: 3 });
  log.record({ taskId: randomUUID(), startedAt: new Date(T0), operation: 'dispatch', outcome: 'received', durationMs: 1 });
  log.record({ taskId: t.id, startedAt: new Date(T0 + 5000), operation: 'dispatch', outcome: 'transient', errorClass: 'http_5xx', errorMessage: 'bad\u0000text \ud800 and more'.repeat(100), durationMs: 9 });
  await log.flush();
  const rows = await calls(t.id);
  expect(rows).toHaveLength(1201);
  const last = rows.at(-1)!;
  expect(last.outcome).toBe('transient');
  expect(last.error_message!.length).toBeLessThanOrEqual(500);
  expect(last.error_message).not.toContain('\u0000');
  expect(last.error_message).toContain('\\u0000');
});

test('refused callbacks are noted only on an existing task, at most MAX_REFUSED_PER_TASK of them', async () => {
  const inbox = new InboxRepository(db.handle.db);
  const t = await task(T0);
  for (let i = 0; i < MAX_REFUSED_PER_TASK + 5; i++) await inbox.recordRefused('p', t.requestNo, `msg_${i}`, 'bad_signature', new Date(T0 + i));
  await inbox.recordRefused('p', 'nobody-has-this', 'msg_x', 'bad_signature', new Date(T0));
  await inbox.recordRefused('other-partner', t.requestNo, 'msg_y', 'bad_signature', new Date(T0));
  const { rows } = await sql<{ task_id: string; n: number }>`select task_id, count(*)::int as n from refused_callbacks group by task_id`.execute(db.handle.db);
  expect(rows).toEqual([{ task_id: t.id, n: MAX_REFUSED_PER_TASK }]);
});

test('retention removes old partner calls and refused callbacks, keeps recent ones', async () => {
  const later = T0 + 31 * DAY;
  const t = await task(later - 60_000);
  const log = new PartnerCallLog(db.handle.db, pino({ level: 'silent' }));
  log.record({ taskId: t.id, startedAt: new Date(later - 30_000), operation: 'status', outcome: 'found', durationMs: 1 });
  await log.flush();
  await new InboxRepository(db.handle.db).recordRefused('p', t.requestNo, 'msg_recent', 'stale_timestamp', new Date(later - 30_000));
  const hk = new Housekeeping({ db: db.handle.db, metrics: new Metrics(), clock: new ManualClock(later), logger: pino({ level: 'silent' }), instanceId: 'hk', retentionDays: 30 });
  await hk.applyRetention();
  const { rows } = await sql<{ calls: number; refused: number }>`
    select (select count(*)::int from partner_calls where started_at < ${new Date(later - DAY)}) as calls,
           (select count(*)::int from refused_callbacks where received_at < ${new Date(later - DAY)}) as refused`.execute(db.handle.db);
  expect(rows[0]).toEqual({ calls: 0, refused: 0 });
  expect(await calls(t.id)).toHaveLength(1);
  const { rows: recent } = await sql<{ n: number }>`select count(*)::int as n from refused_callbacks where task_id = ${t.id}::uuid`.execute(db.handle.db);
  expect(recent[0]!.n).toBe(1);
});
