import { randomUUID } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import type { TaskRow } from '../../src/db/schema';
import type { TaskStatus } from '../../src/tasks/task';
import { TaskRepository, type NewTask, type TransitionSpec } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * TaskRepository against a real database: conditional, fenced, single-statement transitions that write
 * exactly one event when applied, conflicts recorded but never applied, and races decided by the row lock.
 */

let db: TestDatabase;
let repo: TaskRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  repo = new TaskRepository(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

const T0 = new Date('2030-01-01T00:00:00.000Z');
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

function newTask(overrides: Partial<NewTask> = {}): NewTask {
  return {
    id: uuidv7(),
    partner: 'sim',
    requestNo: `repo-${randomUUID()}`,
    kind: null,
    payload: { a: 1 },
    notifyUrl: null,
    metadata: null,
    bodyHash: 'hash',
    createdAt: T0,
    expiresAt: at(86_400),
    leaseOwner: 'owner-A',
    leaseMs: 11_000,
    nextCheckAt: at(11),
    ...overrides,
  };
}

async function inserted(overrides: Partial<NewTask> = {}): Promise<TaskRow> {
  const r = await repo.insert(newTask(overrides));
  if (!r.inserted) throw new Error('expected a fresh insert');
  return r.task;
}

const events = async (id: string) =>
  (await repo.listEvents(id)).map((e) => ({ from: e.from_status, to: e.to_status, source: e.source, detail: e.detail }));

/** Puts a fresh task into `status` through the repository itself (each step applied). */
async function taskIn(status: TaskStatus): Promise<TaskRow> {
  const t = await inserted();
  const path: Record<TaskStatus, TaskStatus[]> = {
    pending: [],
    dispatched: ['dispatched'],
    succeeded: ['dispatched', 'succeeded'],
    failed: ['dispatched', 'failed'],
    rejected: ['rejected'],
    expired: ['dispatched', 'expired'],
  };
  let row = t;
  for (const [i, to] of path[status].entries()) {
    const r = await repo.transition({ taskId: t.id, to, source: to === 'expired' ? 'expiry' : 'dispatch', now: at(i + 1) });
    expect(r.outcome).toBe('applied');
    row = r.task!;
  }
  return row;
}

describe('insert', () => {
  test('stores the task pending, leased to its creator, with one creation event', async () => {
    const t = await inserted({ kind: 'k', payload: { nested: { x: [1, 2] } }, metadata: { m: true }, notifyUrl: 'https://n.example/x' });
    expect(t).toMatchObject({
      status: 'pending',
      kind: 'k',
      payload: { nested: { x: [1, 2] } },
      metadata: { m: true },
      notify_url: 'https://n.example/x',
      dispatch_attempts: 0,
      check_attempts: 0,
      lease_owner: 'owner-A',
      settled_by: null,
      completed_at: null,
      dispatched_at: null,
    });
    expect(new Date(t.next_check_at!).toISOString()).toBe(at(11).toISOString());
    expect(await events(t.id)).toEqual([{ from: null, to: 'pending', source: 'api', detail: null }]);
  });

  test('a second insert of the same partner and requestNo returns the existing row and writes nothing', async () => {
    const first = newTask();
    const a = await repo.insert(first);
    const b = await repo.insert({ ...first, id: uuidv7(), bodyHash: 'other', payload: { b: 2 } });
    expect(a.inserted).toBe(true);
    expect(b.inserted).toBe(false);
    if (b.inserted) return;
    expect(b.existing.id).toBe(first.id);
    expect(b.existing.body_hash).toBe('hash');
    expect(b.existing.payload).toEqual({ a: 1 });
    expect(await events(first.id)).toHaveLength(1);
    const count = await db.handle.db.selectFrom('tasks').select((eb) => eb.fn.countAll<number>().as('n')).where('request_no', '=', first.requestNo).executeTakeFirstOrThrow();
    expect(Number(count.n)).toBe(1);
  });

  test('20 concurrent inserts of one requestNo: exactly one inserts, all see the same row', async () => {
    const base = newTask();
    const results = await Promise.all(Array.from({ length: 20 }, () => repo.insert({ ...base, id: uuidv7() })));
    expect(results.filter((r) => r.inserted)).toHaveLength(1);
    const ids = new Set(results.map((r) => (r.inserted ? r.task.id : r.existing.id)));
    expect(ids.size).toBe(1);
    const [id] = [...ids];
    expect(await events(id!)).toHaveLength(1);
  });
});

describe('transition', () => {
  test('applied: moves the row, returns the new row and the previous status, writes one event', async () => {
    const t = await inserted();
    const r = await repo.transition({
      taskId: t.id,
      to: 'dispatched',
      source: 'dispatch',
      now: at(1),
      fence: 'owner-A',
      detail: { type: 'dispatch', outcome: 'received' },
      changes: { markDispatched: true, incrementDispatchAttempts: true, nextCheckAt: at(31), error: null },
    });
    expect(r.outcome).toBe('applied');
    expect(r.previousStatus).toBe('pending');
    expect(r.task).toMatchObject({ id: t.id, status: 'dispatched', dispatch_attempts: 1, lease_owner: null, lease_expires_at: null });
    expect(new Date(r.task!.dispatched_at!).toISOString()).toBe(at(1).toISOString());
    expect(new Date(r.task!.updated_at).toISOString()).toBe(at(1).toISOString());
    expect(new Date(r.task!.next_check_at!).toISOString()).toBe(at(31).toISOString());
    expect(r.task!.completed_at).toBeNull();

    const stored = await repo.findById(t.id);
    expect(stored).toMatchObject({ status: 'dispatched', dispatch_attempts: 1 });
    expect(await events(t.id)).toEqual([
      { from: null, to: 'pending', source: 'api', detail: null },
      { from: 'pending', to: 'dispatched', source: 'dispatch', detail: { type: 'dispatch', outcome: 'received' } },
    ]);
  });

  test('ignored: the task is not in an allowed source status; nothing changes, no event', async () => {
    const t = await taskIn('dispatched');
    const before = await repo.findById(t.id);
    const evBefore = await events(t.id);
    // dispatched → dispatched is not a move the lifecycle allows from 'dispatched'.
    const r = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'poll', now: at(50), changes: { incrementCheckAttempts: true } });
    expect(r.outcome).toBe('ignored');
    expect(r.previousStatus).toBe('dispatched');
    expect(r.task).toBeUndefined();
    expect(await repo.findById(t.id)).toEqual(before);
    expect(await events(t.id)).toEqual(evBefore);
  });

  test('ignored: an explicit `from` that does not include the current status', async () => {
    const t = await inserted();
    const r = await repo.transition({ taskId: t.id, to: 'rejected', from: ['dispatched'], source: 'dispatch', now: at(1) });
    expect(r.outcome).toBe('ignored');
    expect((await repo.findById(t.id))?.status).toBe('pending');
    expect(await events(t.id)).toHaveLength(1);
  });

  test('fenced out: a wrong lease owner cannot move the task; the holder can, once', async () => {
    const t = await inserted({ leaseOwner: 'owner-A' });
    const before = await repo.findById(t.id);
    const stranger = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'dispatch', now: at(1), fence: 'owner-B' });
    expect(stranger.outcome).toBe('ignored');
    expect(stranger.previousStatus).toBe('pending');
    expect(await repo.findById(t.id)).toEqual(before);
    expect(await events(t.id)).toHaveLength(1);

    const holder = await repo.transition({ taskId: t.id, to: 'pending', from: ['pending'], source: 'dispatch', now: at(2), fence: 'owner-A', changes: { incrementDispatchAttempts: true } });
    expect(holder.outcome).toBe('applied');
    // A move releases the lease by default: the old holder is fenced out afterwards.
    expect(holder.task?.lease_owner).toBeNull();
    const again = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'dispatch', now: at(3), fence: 'owner-A' });
    expect(again.outcome).toBe('ignored');
    expect((await repo.findById(t.id))?.status).toBe('pending');
  });

  test('keepLease keeps the holder fenced in', async () => {
    const t = await inserted({ leaseOwner: 'owner-K' });
    const r = await repo.transition({ taskId: t.id, to: 'pending', from: ['pending'], source: 'dispatch', now: at(1), fence: 'owner-K', changes: { keepLease: true } });
    expect(r.outcome).toBe('applied');
    expect(r.task?.lease_owner).toBe('owner-K');
    const next = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'dispatch', now: at(2), fence: 'owner-K' });
    expect(next.outcome).toBe('applied');
  });

  test('not_found: an unknown id changes nothing and writes no event', async () => {
    const before = await db.handle.db.selectFrom('task_events').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
    const r = await repo.transition({ taskId: randomUUID(), to: 'succeeded', source: 'callback', now: at(1), reported: 'succeeded' });
    expect(r).toEqual({ outcome: 'not_found' });
    const after = await db.handle.db.selectFrom('task_events').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
    expect(Number(after.n)).toBe(Number(before.n));
  });

  test.each<[TaskStatus, 'succeeded' | 'failed']>([
    ['succeeded', 'failed'],
    ['failed', 'succeeded'],
    ['rejected', 'succeeded'],
    ['rejected', 'failed'],
  ])('conflict: a %s task reported %s keeps its status; a conflict event is written', async (current, reported) => {
    const t = await taskIn(current);
    const before = await repo.findById(t.id);
    const evBefore = await events(t.id);
    const r = await repo.transition({
      taskId: t.id,
      to: reported,
      source: 'callback',
      now: at(100),
      reported,
      detail: { webhookId: 'msg_1' },
      changes: { result: { late: true }, settledBy: 'callback', nextCheckAt: null },
    });
    expect(r.outcome).toBe('conflict');
    expect(r.previousStatus).toBe(current);
    expect(r.task).toBeUndefined();
    expect(await repo.findById(t.id)).toEqual(before);
    const evAfter = await events(t.id);
    expect(evAfter.slice(0, evBefore.length)).toEqual(evBefore);
    expect(evAfter.slice(evBefore.length)).toEqual([
      { from: current, to: current, source: 'callback', detail: { type: 'conflict', reported, webhookId: 'msg_1' } },
    ]);
  });

  test('a conflict reported without a detail still records an object detail naming the report', async () => {
    const t = await taskIn('succeeded');
    const r = await repo.transition({ taskId: t.id, to: 'failed', source: 'callback', now: at(100), reported: 'failed' });
    expect(r.outcome).toBe('conflict');
    expect((await events(t.id)).at(-1)).toEqual({ from: 'succeeded', to: 'succeeded', source: 'callback', detail: { type: 'conflict', reported: 'failed' } });
  });

  test('a report agreeing with the final status is ignored without a conflict event', async () => {
    const t = await taskIn('succeeded');
    const evBefore = await events(t.id);
    const r = await repo.transition({ taskId: t.id, to: 'succeeded', source: 'poll', now: at(100), reported: 'succeeded' });
    expect(r.outcome).toBe('ignored');
    expect(await events(t.id)).toEqual(evBefore);
  });

  test('a processing report on a final task is ignored, not a conflict', async () => {
    const t = await taskIn('failed');
    const evBefore = await events(t.id);
    const r = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'callback', now: at(100), reported: 'processing' });
    expect(r.outcome).toBe('ignored');
    expect(await events(t.id)).toEqual(evBefore);
  });

  test('expired → succeeded is allowed: a late definitive report wins', async () => {
    const t = await taskIn('expired');
    const expired = await repo.findById(t.id);
    expect(expired?.status).toBe('expired');
    expect(expired?.completed_at).not.toBeNull();
    const r = await repo.transition({
      taskId: t.id,
      to: 'succeeded',
      source: 'callback',
      now: at(200),
      reported: 'succeeded',
      changes: { result: { ok: 1 }, settledBy: 'callback', nextCheckAt: null },
    });
    expect(r.outcome).toBe('applied');
    expect(r.previousStatus).toBe('expired');
    expect(r.task).toMatchObject({ status: 'succeeded', result: { ok: 1 }, settled_by: 'callback', next_check_at: null });
    expect(new Date(r.task!.completed_at!).toISOString()).toBe(at(200).toISOString());
    expect((await events(t.id)).at(-1)).toEqual({ from: 'expired', to: 'succeeded', source: 'callback', detail: null });
  });

  test('expired → failed is allowed too; expired → dispatched is not', async () => {
    const t = await taskIn('expired');
    expect((await repo.transition({ taskId: t.id, to: 'dispatched', source: 'poll', now: at(200), reported: 'processing' })).outcome).toBe('ignored');
    expect((await repo.transition({ taskId: t.id, to: 'failed', source: 'poll', now: at(201), reported: 'failed' })).outcome).toBe('applied');
  });

  test('every applied transition writes exactly one event with its from, to and source', async () => {
    const t = await inserted();
    const steps: Omit<TransitionSpec, 'taskId' | 'now'>[] = [
      { to: 'pending', from: ['pending'], source: 'dispatch', changes: { incrementDispatchAttempts: true, lastDispatchOutcome: 'transient', error: { class: 'http_5xx' } } },
      { to: 'pending', from: ['pending'], source: 'poll', changes: { incrementCheckAttempts: true } },
      { to: 'dispatched', source: 'dispatch', changes: { incrementDispatchAttempts: true, markDispatched: true, error: null } },
      { to: 'expired', source: 'expiry', changes: { nextCheckAt: null } },
      { to: 'failed', source: 'manual', reported: 'failed', changes: { error: { code: 'X' } } },
    ];
    let expected: { from: string | null; to: string; source: string }[] = [{ from: null, to: 'pending', source: 'api' }];
    let previous: TaskStatus = 'pending';
    for (const [i, step] of steps.entries()) {
      const r = await repo.transition({ ...step, taskId: t.id, now: at(i + 1) });
      expect(r.outcome).toBe('applied');
      expected = [...expected, { from: previous, to: step.to, source: step.source }];
      expect((await events(t.id)).map(({ from, to, source }) => ({ from, to, source }))).toEqual(expected);
      previous = step.to;
    }
    const final = await repo.findById(t.id);
    expect(final).toMatchObject({ status: 'failed', dispatch_attempts: 2, check_attempts: 1, error: { code: 'X' } });
    // A final task accepts no further move of any kind.
    for (const to of ['pending', 'dispatched', 'succeeded', 'rejected', 'expired'] as const) {
      const r = await repo.transition({ taskId: t.id, to, source: 'manual', now: at(99) });
      expect(r.outcome).toBe('ignored');
    }
    expect(await events(t.id)).toHaveLength(expected.length);
  });

  test('20 concurrent pending → dispatched moves of one task: exactly one applies', async () => {
    const t = await inserted({ leaseOwner: 'owner-A' });
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        repo.transition({
          taskId: t.id,
          to: 'dispatched',
          from: ['pending'],
          source: 'dispatch',
          now: at(1 + i / 1000),
          changes: { incrementDispatchAttempts: true, markDispatched: true },
        }),
      ),
    );
    expect(results.filter((r) => r.outcome === 'applied')).toHaveLength(1);
    expect(results.filter((r) => r.outcome === 'ignored')).toHaveLength(19);
    for (const r of results.filter((x) => x.outcome === 'ignored')) expect(r.previousStatus).toBe('dispatched');
    const row = await repo.findById(t.id);
    expect(row).toMatchObject({ status: 'dispatched', dispatch_attempts: 1 });
    expect((await events(t.id)).map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'dispatched', 'dispatch'],
    ]);
  });

  test('concurrent contradicting settlements: exactly one wins, the other is a recorded conflict', async () => {
    const t = await taskIn('dispatched');
    const [a, b] = await Promise.all([
      repo.transition({ taskId: t.id, to: 'succeeded', source: 'callback', now: at(10), reported: 'succeeded', changes: { settledBy: 'callback' } }),
      repo.transition({ taskId: t.id, to: 'failed', source: 'poll', now: at(10), reported: 'failed', changes: { settledBy: 'poll' } }),
    ]);
    const outcomes = [a.outcome, b.outcome].sort();
    expect(outcomes).toEqual(['applied', 'conflict']);
    const winner = a.outcome === 'applied' ? 'succeeded' : 'failed';
    const loser = winner === 'succeeded' ? 'failed' : 'succeeded';
    expect((await repo.findById(t.id))?.status).toBe(winner);
    const ev = await events(t.id);
    expect(ev.filter((e) => e.from === 'dispatched' && e.to === winner)).toHaveLength(1);
    expect(ev.filter((e) => e.from === winner && e.to === winner)).toEqual([
      expect.objectContaining({ detail: { type: 'conflict', reported: loser } }),
    ]);
  });
});

describe('reads', () => {
  test('requestCheck makes an open, unleased task due now and leaves a final one alone', async () => {
    const open = await taskIn('dispatched');
    // Due at 11 s by its schedule; asked at 5 s: due then.
    const due = await repo.requestCheck(open.id, at(5));
    expect(new Date(due!.task.next_check_at!).toISOString()).toBe(at(5).toISOString());
    expect(due!.dueAt?.toISOString()).toBe(at(5).toISOString());
    // Asked again later: it is due already, nothing moves it back.
    expect((await repo.requestCheck(open.id, at(8)))?.dueAt?.toISOString()).toBe(at(5).toISOString());
    const final = await taskIn('succeeded');
    const before = await repo.findById(final.id);
    const untouched = await repo.requestCheck(final.id, at(500));
    expect(untouched?.task).toEqual(before);
    expect(untouched?.dueAt).toBeUndefined();
    expect(untouched?.task.status).toBe('succeeded');
    expect(await repo.requestCheck(randomUUID(), at(500))).toBeUndefined();
  });

  test('requestCheck under a live lease leaves the schedule alone; giving the lease up makes the task due then', async () => {
    const t = await inserted({ leaseOwner: 'owner-L', leaseMs: 60_000, nextCheckAt: at(300) });
    const r = await repo.requestCheck(t.id, at(100));
    expect(r?.dueAt).toBeUndefined();
    const held = await repo.findById(t.id);
    expect(new Date(held!.next_check_at!).toISOString()).toBe(at(300).toISOString());
    expect(held!.lease_owner).toBe('owner-L');
    expect(new Date(held!.check_requested_at!).toISOString()).toBe(at(100).toISOString());
    // The holder records its outcome with a later next check: the request asked meanwhile wins.
    const moved = await repo.transition({ taskId: t.id, to: 'dispatched', source: 'dispatch', now: at(101), fence: 'owner-L', changes: { nextCheckAt: at(130), markDispatched: true } });
    expect(moved.outcome).toBe('applied');
    expect(new Date(moved.task!.next_check_at!).toISOString()).toBe(at(100).toISOString());
    expect(moved.task).toMatchObject({ lease_owner: null, check_requested_at: null });
  });

  test('releaseLease only releases the holder\'s lease and makes the task due', async () => {
    const t = await inserted({ leaseOwner: 'owner-R' });
    await repo.releaseLease(t.id, 'owner-X', at(5));
    expect((await repo.findById(t.id))?.lease_owner).toBe('owner-R');
    await repo.releaseLease(t.id, 'owner-R', at(5));
    const row = await repo.findById(t.id);
    expect(row?.lease_owner).toBeNull();
    expect(new Date(row!.next_check_at!).toISOString()).toBe(at(5).toISOString());
  });

  test('list is newest first and keyset pages never repeat or skip, even with equal created_at', async () => {
    const partner = `list-${randomUUID().slice(0, 8)}`;
    const ids: string[] = [];
    for (let i = 0; i < 12; i += 1) {
      // Pairs share a created_at, so ties are broken by id.
      const t = await inserted({ partner, createdAt: at(Math.floor(i / 2)) });
      ids.push(t.id);
    }
    const seen: TaskRow[] = [];
    let after: { createdAt: Date; id: string } | undefined;
    for (;;) {
      const { rows, hasMore } = await repo.list({ partner, limit: 5, ...(after ? { after } : {}) });
      seen.push(...rows);
      if (!hasMore) break;
      const last = rows.at(-1)!;
      after = { createdAt: new Date(last.created_at), id: last.id };
    }
    expect(seen).toHaveLength(12);
    expect(new Set(seen.map((r) => r.id))).toEqual(new Set(ids));
    for (let i = 1; i < seen.length; i += 1) {
      const a = seen[i - 1]!;
      const b = seen[i]!;
      const d = new Date(a.created_at).getTime() - new Date(b.created_at).getTime();
      expect(d > 0 || (d === 0 && a.id > b.id)).toBe(true);
    }
  });
});
