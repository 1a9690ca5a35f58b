import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { sql } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import type { TaskRow } from '../../src/db/schema';
import { Batcher, BatcherSaturatedError, isDataError } from '../../src/db/batcher';
import { Dispatcher, DispatchNotSentError } from '../../src/dispatch/dispatcher';
import { createLogger } from '../../src/observability/logger';
import { Metrics } from '../../src/observability/metrics';
import type { PartnerRegistry } from '../../src/partners/partner-registry';
import { TaskChecker } from '../../src/reconciler/task-checker';
import type { TaskStatus } from '../../src/tasks/task';
import { TaskRepository, type LeaseConfirmation } from '../../src/tasks/task-repository';
import type { TaskTransitions } from '../../src/tasks/task-transitions';
import { systemClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * The batched fence before partner calls (the 'lease' batcher's statement): one statement answers many
 * "does `owner` still hold this task's lease for `minLeftMs` more?", each by the same rule as the single
 * confirmLease, in order, duplicates included; and a fence the batcher refuses never lets a call out.
 */

let db: TestDatabase;
let repo: TaskRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  // With the pool: the named prepared statements, as the service runs them.
  repo = new TaskRepository(db.handle.db, db.handle.pool);
});
afterAll(async () => {
  await db?.drop();
});

/**
 * A task in `status`, its lease held by `owner` until `leaseLeftMs` from the database's now (null: no
 * lease). Written directly, so a final task can still carry a lease (the rule must look at the status).
 */
async function task(status: TaskStatus, owner: string | null, leaseLeftMs: number | null): Promise<string> {
  const id = uuidv7();
  await sql`
    insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at,
                       created_at, updated_at, lease_owner, lease_expires_at)
    values (${id}::uuid, 'sim', ${`fence-${randomUUID()}`}, ${status}, '{}'::jsonb, 'h', 0,
            now() + interval '1 hour', now() + interval '1 day', now(), now(), ${owner},
            case when ${leaseLeftMs}::int is null then null else now() + ${leaseLeftMs}::int * interval '1 millisecond' end)`.execute(db.handle.db);
  return id;
}

describe('confirmLeases', () => {
  test('a held lease with time to spare is confirmed', async () => {
    const id = await task('pending', 'owner-A', 60_000);
    expect(await repo.confirmLeases([{ id, owner: 'owner-A', minLeftMs: 5000 }])).toEqual([true]);
    expect(await repo.confirmLease(id, 'owner-A', 5000)).toBe(true);
  });

  test('another owner is refused', async () => {
    const id = await task('dispatched', 'owner-A', 60_000);
    expect(await repo.confirmLeases([{ id, owner: 'owner-B', minLeftMs: 5000 }])).toEqual([false]);
  });

  test('a lease that would not last minLeftMs more (by the database clock) is refused; a lapsed one too', async () => {
    const short = await task('dispatched', 'owner-A', 3000);
    const lapsed = await task('pending', 'owner-A', -1000);
    expect(await repo.confirmLeases([
      { id: short, owner: 'owner-A', minLeftMs: 10_000 },
      { id: short, owner: 'owner-A', minLeftMs: 0 },
      { id: lapsed, owner: 'owner-A', minLeftMs: 0 },
    ])).toEqual([false, true, false]);
  });

  test.each<TaskStatus>(['succeeded', 'failed', 'rejected', 'expired'])('a task that is %s is refused even with its lease still set', async (status) => {
    const id = await task(status, 'owner-A', 60_000);
    expect(await repo.confirmLeases([{ id, owner: 'owner-A', minLeftMs: 0 }])).toEqual([false]);
  });

  test('an unknown id is refused; a task without a lease too', async () => {
    const free = await task('pending', null, null);
    expect(await repo.confirmLeases([
      { id: randomUUID(), owner: 'owner-A', minLeftMs: 0 },
      { id: free, owner: 'owner-A', minLeftMs: 0 },
    ])).toEqual([false, false]);
  });

  test('an empty batch asks nothing', async () => {
    expect(await repo.confirmLeases([])).toEqual([]);
  });

  test('a mixed batch, one id twice with different answers, is answered item by item in order', async () => {
    const held = await task('dispatched', 'owner-A', 60_000);
    const other = await task('pending', 'owner-B', 60_000);
    const short = await task('pending', 'owner-A', 2000);
    const settled = await task('succeeded', 'owner-A', 60_000);
    const unknown = randomUUID();
    const items: LeaseConfirmation[] = [
      { id: held, owner: 'owner-A', minLeftMs: 5000 }, // true
      { id: other, owner: 'owner-A', minLeftMs: 5000 }, // wrong owner
      { id: short, owner: 'owner-A', minLeftMs: 30_000 }, // too short
      { id: settled, owner: 'owner-A', minLeftMs: 0 }, // final
      { id: unknown, owner: 'owner-A', minLeftMs: 0 }, // unknown
      { id: held, owner: 'owner-B', minLeftMs: 0 }, // the same id again, another owner
      { id: held, owner: 'owner-A', minLeftMs: 120_000 }, // again, asking for more than is left
      { id: held, owner: 'owner-A', minLeftMs: 0 }, // again, plainly held
      { id: other, owner: 'owner-B', minLeftMs: 5000 }, // its own owner
    ];
    expect(await repo.confirmLeases(items)).toEqual([true, false, false, false, false, false, false, true, true]);
  });

  test('a malformed id fails the statement with a data error (the batcher then runs the items alone)', async () => {
    const id = await task('pending', 'owner-A', 60_000);
    const err = await repo.confirmLeases([{ id, owner: 'owner-A', minLeftMs: 0 }, { id: 'not-a-uuid', owner: 'owner-A', minLeftMs: 0 }]).catch((e: unknown) => e);
    expect(isDataError(err)).toBe(true);
    const batcher = new Batcher<LeaseConfirmation, boolean>({ name: 'lease', run: (items) => repo.confirmLeases(items), isolate: isDataError });
    const [good, bad] = await Promise.allSettled([
      batcher.submit({ id, owner: 'owner-A', minLeftMs: 0 }),
      batcher.submit({ id: 'not-a-uuid', owner: 'owner-A', minLeftMs: 0 }),
    ]);
    expect(good).toEqual({ status: 'fulfilled', value: true });
    expect(bad.status).toBe('rejected');
  });

  test('concurrent fences through a Batcher share statements, each answered on its own', async () => {
    const held = await task('dispatched', 'owner-A', 60_000);
    const other = await task('dispatched', 'owner-B', 60_000);
    const batcher = new Batcher<LeaseConfirmation, boolean>({ name: 'lease', run: (items) => repo.confirmLeases(items), isolate: isDataError });
    const items = Array.from({ length: 40 }, (_, i): LeaseConfirmation => ({ id: i % 2 ? held : other, owner: i % 3 ? 'owner-A' : 'owner-B', minLeftMs: 1000 }));
    const answers = await Promise.all(items.map((item) => batcher.submit(item)));
    expect(answers).toEqual(items.map((item) => (item.id === held) === (item.owner === 'owner-A')));
    expect(batcher.stats.batches).toBeLessThan(items.length);
    await batcher.drain();
  });

  /**
   * Against the single fence, on the same rows: random tasks (status, owner, lease) and random batches
   * over them (ids repeated, unknown ids, other owners). Leases end on multiples of 10 s from their
   * insert and minLeftMs is 5 s off a multiple of 10 s, so the few milliseconds between the statements'
   * now() can never tip an answer.
   */
  test('property: a batch answers every item as confirmLease does, one by one', async () => {
    const rowArb = fc.record({
      status: fc.constantFrom<TaskStatus>('pending', 'dispatched', 'succeeded', 'failed', 'rejected', 'expired'),
      owner: fc.constantFrom('A', 'B', null),
      leaseLeftMs: fc.option(fc.integer({ min: -2, max: 6 }).map((k) => k * 10_000), { nil: null }),
    });
    const itemArb = fc.record({
      row: fc.nat(),
      unknown: fc.integer({ min: 0, max: 9 }).map((k) => k < 2),
      owner: fc.constantFrom('A', 'B', 'C'),
      minLeftMs: fc.integer({ min: 0, max: 6 }).map((k) => k * 10_000 + 5000),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(rowArb, { minLength: 1, maxLength: 6 }), fc.array(itemArb, { minLength: 1, maxLength: 24 }), async (rows, picks) => {
        const ids = await Promise.all(rows.map((r) => task(r.status, r.owner, r.leaseLeftMs)));
        const items = picks.map((p): LeaseConfirmation => ({ id: p.unknown ? randomUUID() : ids[p.row % ids.length]!, owner: p.owner, minLeftMs: p.minLeftMs }));
        const batch = await repo.confirmLeases(items);
        const single: boolean[] = [];
        for (const item of items) single.push(await repo.confirmLease(item.id, item.owner, item.minLeftMs));
        expect(batch).toEqual(single);
      }),
      { numRuns: 60 },
    );
  });
});

/** A partner that records every call; nothing may reach it when the fence is refused. */
function fakePartners() {
  const client = {
    config: { id: 'sim', dispatch: { timeoutMs: 1000, maxAttempts: 3 }, status: { timeoutMs: 1000 } },
    dispatch: jest.fn(async () => ({ kind: 'received' as const, durationMs: 1 })),
    status: jest.fn(async () => ({ kind: 'not_found' as const, durationMs: 1 })),
  };
  return { client, partners: { get: (id: string) => (id === 'sim' ? client : undefined) } as unknown as PartnerRegistry };
}

async function row(id: string): Promise<TaskRow> {
  return (await repo.findById(id))!;
}

describe('a fence the lease batcher refuses sends nothing', () => {
  const logger = createLogger('silent');
  const transitions = {} as TaskTransitions; // never reached: nothing is sent, so there is no outcome to record

  test('a first dispatch with the batcher stopped: no call, the claim is handed back (due now, unleased)', async () => {
    const id = await task('pending', 'owner-D', 60_000);
    const leases = new Batcher<LeaseConfirmation, boolean>({ name: 'lease', run: (items) => repo.confirmLeases(items) });
    await leases.drain();
    const { client, partners } = fakePartners();
    const dispatcher = new Dispatcher({
      partners,
      transitions,
      repo,
      metrics: new Metrics(),
      clock: systemClock,
      logger,
      publicBaseUrl: 'http://localhost',
      concurrency: 2,
      confirmLease: (i, owner, minLeftMs) => leases.submit({ id: i, owner, minLeftMs }),
    });
    const before = Date.now();
    dispatcher.enqueue(await row(id), 'owner-D');
    // The job runs on a later turn; poll until its claim is handed back, then drain awaits the statement.
    for (let waited = 0; (await row(id)).lease_owner !== null && waited < 10_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    await dispatcher.drain();
    const after = await row(id);
    expect(client.dispatch).not.toHaveBeenCalled();
    expect(after.lease_owner).toBeNull();
    expect(after.status).toBe('pending');
    expect(after.dispatch_attempts).toBe(0);
    expect(new Date(after.next_check_at!).getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(new Date(after.next_check_at!).getTime()).toBeLessThanOrEqual(Date.now() + 1000);
  });

  test('dispatchNow (a re-send by the reconciler) with the batcher saturated throws before the call; the claim is left to lapse', async () => {
    const id = await task('pending', 'owner-E', 60_000);
    const refuse = jest.fn(async (): Promise<boolean> => {
      throw new BatcherSaturatedError('lease', 'queue_full');
    });
    const { client, partners } = fakePartners();
    const dispatcher = new Dispatcher({ partners, transitions, repo, metrics: new Metrics(), clock: systemClock, logger, publicBaseUrl: 'http://localhost', concurrency: 1, confirmLease: refuse });
    const err = await dispatcher.dispatchNow(await row(id), 'owner-E').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DispatchNotSentError);
    expect((err as DispatchNotSentError).cause).toBeInstanceOf(BatcherSaturatedError);
    expect(refuse).toHaveBeenCalledWith(id, 'owner-E', 2000);
    expect(client.dispatch).not.toHaveBeenCalled();
    expect((await row(id)).lease_owner).toBe('owner-E');
  });

  test('a status check with the batcher saturated throws before the query (the sweep counts it failed; the claim lapses)', async () => {
    const id = await task('dispatched', 'owner-F', 60_000);
    const leases = new Batcher<LeaseConfirmation, boolean>({ name: 'lease', run: (items) => repo.confirmLeases(items), maxQueued: 0 });
    const { client, partners } = fakePartners();
    const dispatcher = new Dispatcher({ partners, transitions, repo, metrics: new Metrics(), clock: systemClock, logger, publicBaseUrl: 'http://localhost', concurrency: 1 });
    const checker = new TaskChecker({
      partners,
      dispatcher,
      transitions,
      repo,
      metrics: new Metrics(),
      clock: systemClock,
      logger,
      confirmLease: (i, owner, minLeftMs) => leases.submit({ id: i, owner, minLeftMs }),
    });
    await expect(checker.check(await row(id), 'owner-F')).rejects.toBeInstanceOf(BatcherSaturatedError);
    expect(client.status).not.toHaveBeenCalled();
    expect(client.dispatch).not.toHaveBeenCalled();
    expect((await row(id)).lease_owner).toBe('owner-F');
  });

  test('without a confirmLease the dispatcher and checker fence with repo.confirmLease', async () => {
    const id = await task('dispatched', 'owner-G', 60_000);
    const { client, partners } = fakePartners();
    const dispatcher = new Dispatcher({ partners, transitions, repo, metrics: new Metrics(), clock: systemClock, logger, publicBaseUrl: 'http://localhost', concurrency: 1 });
    const checker = new TaskChecker({ partners, dispatcher, transitions, repo, metrics: new Metrics(), clock: systemClock, logger });
    // Another owner: fenced out by the single statement, nothing asked or sent.
    expect(await checker.check(await row(id), 'owner-X')).toBe('fenced_out');
    expect(await dispatcher.dispatchNow(await row(id), 'owner-X')).toBe('not_held');
    expect(client.status).not.toHaveBeenCalled();
    expect(client.dispatch).not.toHaveBeenCalled();
  });
});
