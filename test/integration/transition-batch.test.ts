import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { sql } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import { TASK_STATUSES, type TaskStatus } from '../../src/tasks/task';
import { TaskRepository, type TaskChanges, type TransitionResult, type TransitionSpec } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * Batched status changes keep every rule of a lone change: a property runs the same moves once as one
 * batch (TaskRepository.transitionMany) and once one at a time on twin tasks, and demands the same
 * outcomes, the same rows and the same events.
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

const T0 = new Date('2030-01-01T00:00:00.000Z');
const at = (s: number) => new Date(T0.getTime() + s * 1000);

/** A task forced into `status` (straight SQL: the starting point, not what is under test). */
async function taskIn(status: TaskStatus, lease: string | null): Promise<string> {
  const id = uuidv7();
  await sql`
    insert into tasks (id, partner, request_no, kind, status, payload, body_hash, next_check_at, lease_owner, lease_expires_at, expires_at, created_at, updated_at)
    values (${id}, 'sim', ${`tb-${randomUUID()}`}, null, ${status}, '{}'::jsonb, 'h', ${at(10)}, ${lease}, ${lease ? at(10) : null}, ${at(86_400)}, ${T0}, ${T0})`.execute(db.handle.db);
  return id;
}

async function snapshot(id: string) {
  const row = await repo.findById(id);
  const { id: _i, request_no: _r, ...rest } = row!;
  const events = await repo.listEvents(id);
  return { row: rest, events: events.map((e) => ({ at: e.at, from: e.from_status, to: e.to_status, source: e.source, detail: e.detail })) };
}

const normalise = (r: TransitionResult) => ({
  outcome: r.outcome,
  previousStatus: r.previousStatus,
  status: r.task?.status,
  attempts: r.task ? [r.task.dispatch_attempts, r.task.check_attempts] : undefined,
});

const changesArb: fc.Arbitrary<TaskChanges> = fc.record(
  {
    result: fc.constantFrom(null, { ok: true }),
    error: fc.constantFrom(null, { code: 'E' }),
    settledBy: fc.constantFrom('callback' as const, 'poll' as const, 'dispatch' as const),
    nextCheckAt: fc.constantFrom(null, at(60)),
    markDispatched: fc.boolean(),
    incrementDispatchAttempts: fc.boolean(),
    incrementCheckAttempts: fc.boolean(),
    lastDispatchOutcome: fc.constantFrom('transient' as const, 'ambiguous' as const, null),
    keepLease: fc.boolean(),
  },
  { requiredKeys: [] },
);

const moveArb = fc.record({
  task: fc.nat({ max: 3 }),
  to: fc.constantFrom(...TASK_STATUSES),
  source: fc.constantFrom('dispatch' as const, 'callback' as const, 'poll' as const, 'expiry' as const),
  fence: fc.constantFrom(undefined, 'owner-A', 'owner-B'),
  reported: fc.constantFrom(undefined, 'processing' as const, 'succeeded' as const, 'failed' as const),
  quiet: fc.boolean(),
  second: fc.nat({ max: 5 }),
  changes: changesArb,
  detail: fc.constantFrom(undefined, { type: 'x' }),
});

test('property: a batch of moves gives the same outcomes, rows and events as the same moves one at a time', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ status: fc.constantFrom(...TASK_STATUSES), lease: fc.constantFrom(null, 'owner-A') }), { minLength: 4, maxLength: 4 }),
      fc.array(moveArb, { minLength: 1, maxLength: 12 }),
      async (starts, moves) => {
        const batched = await Promise.all(starts.map((s) => taskIn(s.status, s.lease)));
        const single = await Promise.all(starts.map((s) => taskIn(s.status, s.lease)));
        const spec = (ids: string[], m: (typeof moves)[number]): TransitionSpec => ({
          taskId: ids[m.task]!,
          to: m.to,
          source: m.source,
          now: at(m.second + 1),
          changes: m.changes,
          ...(m.fence ? { fence: m.fence } : {}),
          ...(m.reported ? { reported: m.reported } : {}),
          ...(m.detail ? { detail: m.detail } : {}),
          // A quiet move is only for a status that stays (the repository's contract).
          ...(m.quiet ? { quiet: true, from: [m.to] } : {}),
        });
        const got = await repo.transitionMany(moves.map((m) => spec(batched, m)));
        const want: TransitionResult[] = [];
        for (const m of moves) want.push(await repo.transition(spec(single, m)));
        expect(got.map(normalise)).toEqual(want.map(normalise));
        for (let i = 0; i < starts.length; i++) {
          expect(await snapshot(batched[i]!)).toEqual(await snapshot(single[i]!));
        }
      },
    ),
    { numRuns: 40 },
  );
});

test('moves of different tasks in one batch run as one statement; moves of one task keep their order', async () => {
  const a = await taskIn('pending', 'owner-A');
  const b = await taskIn('pending', null);
  const r = await repo.transitionMany([
    { taskId: a, to: 'dispatched', source: 'dispatch', now: at(1), fence: 'owner-A' },
    { taskId: b, to: 'rejected', source: 'dispatch', now: at(1) },
    { taskId: a, to: 'succeeded', source: 'callback', now: at(2), reported: 'succeeded' },
    { taskId: a, to: 'failed', source: 'callback', now: at(3), reported: 'failed' },
  ]);
  expect(r.map((x) => x.outcome)).toEqual(['applied', 'applied', 'applied', 'conflict']);
  expect((await repo.listEvents(a)).map((e) => [e.from_status, e.to_status, e.source])).toEqual([
    ['pending', 'dispatched', 'dispatch'],
    ['dispatched', 'succeeded', 'callback'],
    ['succeeded', 'succeeded', 'callback'],
  ]);
});
