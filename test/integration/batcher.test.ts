import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { sql } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import { Batcher, BatcherSaturatedError, isDataError } from '../../src/db/batcher';
import { TaskRepository, type InsertResult, type NewTask } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * The group-commit batcher against a real Postgres: each caller gets its own answer in order, a bad item
 * fails only itself, a broken batch fails every caller with the error, an idle batcher runs a lone item
 * at once, and saturation refuses instead of queueing without limit. Then batched creates: any mix of
 * duplicates and conflicts in one batch answers exactly as the same creates one after another.
 */

let db: TestDatabase;
let repo: TaskRepository;

beforeAll(async () => {
  db = await createTestDatabase();
  repo = new TaskRepository(db.handle.db, db.handle.pool);
  await sql`create table batch_probe (n integer primary key check (n >= 0))`.execute(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

/** A batch statement over the probe table: inserts every n, answers n × 10 per item in order. */
async function insertProbe(ns: number[]): Promise<number[]> {
  const r = await db.handle.pool.query<{ n: number }>(
    'with ins as (insert into batch_probe (n) select n from unnest($1::int[]) as v(n) returning n) select v.n * 10 as n from unnest($1::int[]) with ordinality as v(n, i) order by i',
    [ns],
  );
  return r.rows.map((row) => row.n);
}

let nextN = 1;
const freshNs = (count: number) => Array.from({ length: count }, () => nextN++);

/** A gate a test opens by hand, to hold a batch in flight. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

async function probeRows(ns: number[]): Promise<number[]> {
  const r = await db.handle.pool.query<{ n: number }>('select n from batch_probe where n = any($1::int[]) order by n', [ns]);
  return r.rows.map((row) => row.n);
}

test('each caller gets its own answer, and items run in arrival order across batches', async () => {
  const batches: number[][] = [];
  const b = new Batcher<number, number>({
    name: 'probe',
    maxBatch: 16,
    maxConcurrent: 1,
    run: async (ns) => {
      batches.push([...ns]);
      return insertProbe(ns);
    },
  });
  const ns = freshNs(200);
  const answers = await Promise.all(ns.map((n) => b.submit(n)));
  expect(answers).toEqual(ns.map((n) => n * 10));
  expect(batches.flat()).toEqual(ns);
  expect(Math.max(...batches.map((x) => x.length))).toBeLessThanOrEqual(16);
  expect(batches.length).toBeLessThan(200); // they were grouped
  expect(await probeRows(ns)).toEqual(ns);
});

test('an idle batcher runs a lone item at once, without waiting for its window', async () => {
  const b = new Batcher<number, number>({ name: 'probe', windowMs: 60_000, run: insertProbe });
  const [n] = freshNs(1);
  const first = await Promise.race([b.submit(n!), new Promise<'waited'>((r) => setTimeout(() => r('waited'), 30_000).unref())]);
  expect(first).toBe(n! * 10);
  expect(b.stats).toMatchObject({ batches: 1, items: 1 });
});

test('a data error fails only the item that caused it; the rest of its batch is stored', async () => {
  const b = new Batcher<number, number>({ name: 'probe', isolate: isDataError, run: insertProbe });
  const good = freshNs(5);
  const items = [good[0]!, good[1]!, -1, good[2]!, good[3]!, good[4]!];
  const settled = await Promise.allSettled(items.map((n) => b.submit(n)));
  expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
  expect((settled[2] as PromiseRejectedResult).reason).toMatchObject({ code: '23514' }); // the check constraint
  expect(await probeRows(good)).toEqual(good);
  expect(b.stats.batches).toBe(1 + items.length); // the failed batch, then each item alone
});

test('a batch that fails for a reason other than its data fails every caller with that error, without splitting', async () => {
  const b = new Batcher<number, number>({
    name: 'probe',
    isolate: isDataError,
    run: async (ns) => {
      await db.handle.pool.query('insert into batch_probe (n) select n from unnest($1::int[]) as v(n)', [ns]);
      await db.handle.pool.query('select * from no_such_table');
      return ns;
    },
  });
  const ns = freshNs(4);
  const settled = await Promise.allSettled(ns.map((n) => b.submit(n)));
  for (const s of settled) {
    expect(s.status).toBe('rejected');
    expect((s as PromiseRejectedResult).reason).toMatchObject({ code: '42P01', message: expect.stringContaining('no_such_table') });
  }
  expect(b.stats.batches).toBe(1); // not split: retrying alone would not help
});

test('a failing statement in one batch fails each of its callers clearly; nothing of it is stored', async () => {
  const b = new Batcher<number, number>({
    name: 'probe',
    run: async (ns) => {
      const r = await db.handle.pool.query<{ n: number }>('insert into batch_probe (n) select n / 0 from unnest($1::int[]) as v(n) returning n', [ns]);
      return r.rows.map((x) => x.n);
    },
  });
  const ns = freshNs(3);
  const settled = await Promise.allSettled(ns.map((n) => b.submit(n)));
  expect(settled.map((s) => s.status)).toEqual(['rejected', 'rejected', 'rejected']);
  for (const s of settled) expect((s as PromiseRejectedResult).reason).toMatchObject({ code: '22012' });
  expect(await probeRows(ns)).toEqual([]);
});

test('items with the same key never share a batch', async () => {
  const batches: string[][] = [];
  const b = new Batcher<string, string>({
    name: 'keys',
    keyOf: (s) => s.split(':')[0]!,
    run: async (items) => {
      batches.push(items);
      await db.handle.pool.query('select 1');
      return items;
    },
  });
  const items = ['a:1', 'b:1', 'a:2', 'c:1', 'a:3', 'b:2'];
  expect(await Promise.all(items.map((i) => b.submit(i)))).toEqual(items);
  for (const batch of batches) {
    const keys = batch.map((s) => s.split(':')[0]);
    expect(new Set(keys).size).toBe(keys.length);
  }
  // Same-key items keep their order.
  expect(batches.flat().filter((s) => s.startsWith('a:'))).toEqual(['a:1', 'a:2', 'a:3']);
});

test('saturation: beyond maxQueued, or past maxWaitMs, callers are refused and their items never run', async () => {
  const held = gate();
  const ran: number[] = [];
  const b = new Batcher<number, number>({
    name: 'probe',
    maxConcurrent: 1,
    maxQueued: 3,
    maxWaitMs: 200,
    run: async (ns) => {
      ran.push(...ns);
      await held.opened;
      return insertProbe(ns);
    },
  });
  const [first, ...rest] = freshNs(6);
  const inFlight = b.submit(first!);
  // Let the first batch start and hold its slot.
  for (let i = 0; i < 100 && ran.length === 0; i++) await new Promise((r) => setImmediate(r));
  expect(ran).toEqual([first]);
  const waiting = rest.map((n) => b.submit(n));
  const settled = await Promise.allSettled(waiting);
  // Three were queued and then waited too long; two found the queue full.
  const reasons = settled.map((s) => (s.status === 'rejected' ? (s.reason as BatcherSaturatedError).reason : 'fulfilled'));
  expect(reasons).toEqual(['wait_exceeded', 'wait_exceeded', 'wait_exceeded', 'queue_full', 'queue_full']);
  for (const s of settled) expect((s as PromiseRejectedResult).reason).toBeInstanceOf(BatcherSaturatedError);
  held.open();
  expect(await inFlight).toBe(first! * 10);
  expect(ran).toEqual([first]);
  expect(await probeRows(rest)).toEqual([]);
  expect(b.depth).toBe(0);
});

test('drain waits for batches in flight and refuses new items', async () => {
  const held = gate();
  const b = new Batcher<number, number>({
    name: 'probe',
    run: async (ns) => {
      await held.opened;
      return insertProbe(ns);
    },
  });
  const ns = freshNs(3);
  const answers = Promise.all(ns.map((n) => b.submit(n)));
  await new Promise((r) => setImmediate(r));
  const drained = b.drain();
  await expect(b.submit(nextN++)).rejects.toMatchObject({ reason: 'stopped' });
  held.open();
  await drained;
  expect(await answers).toEqual(ns.map((n) => n * 10));
});

// ---------------------------------------------------------------------------------------------------------
// Batched creates ≡ sequential creates

const T0 = new Date('2030-01-01T00:00:00.000Z');

function newTask(requestNo: string, body: string): NewTask {
  return {
    id: uuidv7(),
    partner: 'sim',
    requestNo,
    kind: null,
    payload: { body },
    notifyUrl: null,
    metadata: null,
    bodyHash: body,
    createdAt: T0,
    expiresAt: new Date(T0.getTime() + 86_400_000),
    leaseOwner: `owner-${randomUUID()}`,
    leaseMs: 11_000,
    nextCheckAt: new Date(T0.getTime() + 11_000),
  };
}

type Answer = { kind: 'created' } | { kind: 'replay'; of: number | 'pre' } | { kind: 'conflict' };

/** What the service answers for a create result (TaskService.create's rule) and which item's row it names. */
function answerOf(r: InsertResult, t: NewTask, ids: Map<string, number | 'pre'>): Answer {
  if (r.inserted) return { kind: 'created' };
  if (r.existing.body_hash !== t.bodyHash) return { kind: 'conflict' };
  return { kind: 'replay', of: ids.get(r.existing.id) ?? -1 };
}

test('property: any mix of duplicates and conflicts in one batch answers as the same creates in sequence', async () => {
  const keyArb = fc.constantFrom('k0', 'k1', 'k2', 'k3');
  const bodyArb = fc.constantFrom('A', 'B', 'C');
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ key: keyArb, body: bodyArb }), { minLength: 1, maxLength: 40 }),
      fc.array(fc.record({ key: keyArb, body: bodyArb }), { maxLength: 3 }),
      async (items, existing) => {
        const run = randomUUID().slice(0, 8);
        const rn = (key: string) => `prop-${run}-${key}`;
        // Rows that exist before the batch (an earlier create).
        const ids = new Map<string, number | 'pre'>();
        const model = new Map<string, { body: string; of: number | 'pre' }>();
        for (const e of existing) {
          const r = await repo.insert(newTask(rn(e.key), e.body));
          if (r.inserted) {
            ids.set(r.task.id, 'pre');
            model.set(e.key, { body: e.body, of: 'pre' });
          }
        }
        // Expected: one at a time, the first of a key is created and later ones replay or conflict.
        const expected: Answer[] = items.map((it, i) => {
          const m = model.get(it.key);
          if (!m) {
            model.set(it.key, { body: it.body, of: i });
            return { kind: 'created' };
          }
          return m.body === it.body ? { kind: 'replay', of: m.of } : { kind: 'conflict' };
        });
        // Actual: every item submitted in the same turn, so they share one batch.
        const batches: number[] = [];
        const b = new Batcher<NewTask, InsertResult>({
          name: 'create',
          run: (ts) => {
            batches.push(ts.length);
            return repo.insertMany(ts);
          },
        });
        const tasks = items.map((it) => newTask(rn(it.key), it.body));
        tasks.forEach((t, i) => ids.set(t.id, i));
        const results = await Promise.all(tasks.map((t) => b.submit(t)));
        expect(batches).toEqual([items.length]);
        expect(results.map((r, i) => answerOf(r, tasks[i]!, ids))).toEqual(expected);

        // One row per key, one creation event per row.
        const { rows } = await sql<{ request_no: string; n: number; events: number }>`
          select t.request_no, count(distinct t.id)::int as n, count(e.id)::int as events
          from tasks t left join task_events e on e.task_id = t.id and e.source = 'api'
          where t.request_no like ${`prop-${run}-%`} group by t.request_no`.execute(db.handle.db);
        expect(rows.map((r) => [r.n, r.events])).toEqual(rows.map(() => [1, 1]));
        expect(rows.length).toBe(model.size);
      },
    ),
    { numRuns: 60 },
  );
});

test('concurrent batches over the same keys in different orders neither deadlock nor double-insert', async () => {
  for (let round = 0; round < 20; round++) {
    const keys = Array.from({ length: 60 }, (_, i) => `dl-${randomUUID().slice(0, 8)}-${i}`);
    const forward = keys.map((k) => newTask(k, 'A'));
    const backward = [...keys].reverse().map((k) => newTask(k, 'A'));
    const [r1, r2] = await Promise.all([repo.insertMany(forward), repo.insertMany(backward)]);
    expect([...r1, ...r2].filter((r) => r.inserted)).toHaveLength(keys.length);
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from tasks where request_no = any(${keys}::text[])`.execute(db.handle.db);
    expect(rows[0]!.n).toBe(keys.length);
  }
});
