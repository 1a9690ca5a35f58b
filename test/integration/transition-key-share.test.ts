import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import { TaskRepository, type NewTask } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * A status change must not wait on, or deadlock with, an insert of a row that references the task.
 * Every insert into a table with a foreign key to `tasks` (partner_calls from the call log, task_events,
 * notifications, callback_inbox) takes FOR KEY SHARE on the task row until it commits. The transition
 * statement locked its rows FOR UPDATE, which conflicts with that lock: the call log's batched insert
 * (rows in arrival order) and a batched transition (rows in id order) deadlocked under load (seen in
 * `npm run bench -- create`: "deadlock detected" on both, the dispatch outcome lost until the reconciler
 * asked). A transition changes no key, so FOR NO KEY UPDATE is the lock it needs: it still excludes
 * claims and other transitions, never foreign-key checks.
 */

let db: TestDatabase;
let repo: TaskRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  repo = new TaskRepository(db.handle.db, db.handle.pool);
});
afterAll(async () => {
  await db?.drop();
});

function newTask(): NewTask {
  const now = new Date();
  return {
    id: uuidv7(), partner: 'sim', requestNo: `keyshare-${randomUUID()}`, kind: null, payload: {}, notifyUrl: null,
    metadata: null, bodyHash: 'h', createdAt: now, expiresAt: new Date(now.getTime() + 86_400_000),
    leaseOwner: `owner-${randomUUID()}`, leaseMs: 60_000, nextCheckAt: new Date(now.getTime() + 60_000),
  };
}

test('a batched transition completes while another transaction holds a foreign-key lock on one of its tasks', async () => {
  const tasks = [newTask(), newTask()].sort((a, b) => a.id.localeCompare(b.id));
  const inserted = await repo.insertMany(tasks);
  expect(inserted.every((r) => r.inserted)).toBe(true);

  const client = await db.handle.pool.connect();
  try {
    await client.query('begin');
    // The call log's insert for the second task (in id order): its foreign-key check holds FOR KEY SHARE.
    await client.query(`insert into partner_calls (task_id, started_at, operation, outcome, duration_ms) values ($1, now(), 'dispatch', 'received', 1)`, [tasks[1]!.id]);

    const moving = repo.transitionMany(
      tasks.map((t) => ({ taskId: t.id, to: 'dispatched' as const, source: 'dispatch' as const, now: new Date(), fence: t.leaseOwner })),
    );
    // Before the fix the transition locked the first task, then waited on the second; the insert for
    // the first task below then waited on the transition: a deadlock, one side failing with 40P01.
    let timer: NodeJS.Timeout | undefined;
    const settledInTime = await Promise.race([
      moving.then(() => 'done' as const, () => 'failed' as const),
      new Promise<'waiting'>((resolve) => (timer = setTimeout(() => resolve('waiting'), 10_000))),
    ]);
    clearTimeout(timer);
    await client.query(`insert into partner_calls (task_id, started_at, operation, outcome, duration_ms) values ($1, now(), 'dispatch', 'received', 1)`, [tasks[0]!.id]);
    await client.query('commit');

    expect(settledInTime).toBe('done');
    const results = await moving;
    expect(results.map((r) => r.outcome)).toEqual(['applied', 'applied']);
  } finally {
    await client.query('rollback').catch(() => undefined);
    client.release();
  }
  const rows = await sql<{ status: string; calls: number }>`
    select t.status, (select count(*)::int from partner_calls c where c.task_id = t.id) as calls
    from tasks t where t.id = any(${tasks.map((t) => t.id)}::uuid[]) order by t.id`.execute(db.handle.db);
  expect(rows.rows).toEqual([{ status: 'dispatched', calls: 1 }, { status: 'dispatched', calls: 1 }]);
});
