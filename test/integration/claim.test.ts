import { randomUUID } from 'node:crypto';
import { Kysely, PostgresDialect, sql } from 'kysely';
import type { Database } from '../../src/db/schema';
import { TaskRepository } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * The reconciler's claim, straight on TaskRepository and real Postgres: leases that fence a replica out
 * once another took the task over, SKIP LOCKED so replicas claim side by side, and the partial due index.
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

let seq = 0;
/** Inserts an open task due at `dueAt` (its creation lease ends then) under a partner of the test's own. */
async function insertDue(partner: string, dueAt: Date): Promise<string> {
  seq += 1;
  const id = randomUUID();
  const r = await repo.insert({
    id,
    partner,
    requestNo: `claim-${seq}`,
    kind: null,
    payload: { n: seq },
    notifyUrl: null,
    metadata: null,
    bodyHash: `h${seq}`,
    createdAt: new Date(dueAt.getTime() - 60_000),
    expiresAt: new Date(dueAt.getTime() + 86_400_000),
    leaseOwner: 'creator',
    // The creator's lease has lapsed already: the task is due and free at `dueAt`.
    leaseMs: 0,
    nextCheckAt: dueAt,
  });
  if (!r.inserted) throw new Error('insert did not insert');
  return id;
}

/** Partners the claims of these tests know. */
const KNOWN = ['fence', 'skip', 'explain', 'due-lease', 'gone'];

/** Moves `ids`' leases into the past, as if the database's clock had moved on past them. */
async function lapseLeases(ids: string[]): Promise<void> {
  await sql`update tasks set lease_expires_at = now() - interval '1 millisecond' where id = any(${ids}::uuid[])`.execute(db.handle.db);
}

/** Marks every open task of other tests as not due, so each test sees only its own. */
async function parkOthers(): Promise<void> {
  await sql`update tasks set next_check_at = '2999-01-01' where status in ('pending', 'dispatched')`.execute(db.handle.db);
}

test('fencing: a claim taken over after its lease lapses fences the old holder out; the new holder moves the task', async () => {
  await parkOthers();
  const t0 = new Date('2030-01-01T00:00:00Z');
  const id = await insertDue('fence', t0);

  const before = Date.now();
  const byA = await repo.claimDue(t0, 10, 'owner-A', 5000, KNOWN);
  expect(byA.map((t) => t.id)).toEqual([id]);
  expect(byA[0]).toMatchObject({ lease_owner: 'owner-A' });
  // The lease runs by the database's clock (now() + 5 s), whatever the caller's clock says.
  const leaseEnd = new Date(byA[0]!.lease_expires_at!).getTime();
  expect(leaseEnd).toBeGreaterThanOrEqual(before + 5000 - 1000);
  expect(leaseEnd).toBeLessThanOrEqual(Date.now() + 5000 + 1000);
  // While A's lease lasts, nobody else can claim it, however late the caller's clock says it is.
  expect(await repo.claimDue(new Date(t0.getTime() + 86_400_000), 10, 'owner-B', 5000, KNOWN)).toEqual([]);

  // A stalls past its lease; B claims the same task.
  await lapseLeases([id]);
  const tB = new Date(t0.getTime() + 6000);
  const byB = await repo.claimDue(tB, 10, 'owner-B', 5000, KNOWN);
  expect(byB.map((t) => t.id)).toEqual([id]);
  expect(byB[0]).toMatchObject({ lease_owner: 'owner-B' });

  // A wakes up and tries to record its outcome: not applied, and the row is exactly as B left it.
  const rowBefore = await repo.findById(id);
  const eventsBefore = await repo.listEvents(id);
  const asA = await repo.transition({
    taskId: id,
    to: 'succeeded',
    source: 'poll',
    now: new Date(tB.getTime() + 100),
    fence: 'owner-A',
    reported: 'succeeded',
    changes: { result: { from: 'A' }, settledBy: 'poll', nextCheckAt: null, incrementCheckAttempts: true },
  });
  expect(asA.outcome).not.toBe('applied');
  expect(asA.task).toBeUndefined();
  expect(await repo.findById(id)).toEqual(rowBefore);
  expect(await repo.listEvents(id)).toEqual(eventsBefore);
  // A cannot even put it back (defer) any more.
  expect(await repo.defer(id, 'owner-A', new Date(tB.getTime() + 1))).toBe(false);
  expect(await repo.findById(id)).toEqual(rowBefore);

  // B's move, fenced on B, applies.
  const asB = await repo.transition({
    taskId: id,
    to: 'succeeded',
    source: 'poll',
    now: new Date(tB.getTime() + 200),
    fence: 'owner-B',
    reported: 'succeeded',
    changes: { result: { from: 'B' }, settledBy: 'poll', nextCheckAt: null, incrementCheckAttempts: true },
  });
  expect(asB.outcome).toBe('applied');
  expect(asB.previousStatus).toBe('pending');
  const after = await repo.findById(id);
  expect(after).toMatchObject({ status: 'succeeded', result: { from: 'B' }, settled_by: 'poll', check_attempts: 1, lease_owner: null, next_check_at: null });
  expect((await repo.listEvents(id)).at(-1)).toMatchObject({ from_status: 'pending', to_status: 'succeeded', source: 'poll' });
});

test('SKIP LOCKED: a claim skips rows another claim holds, without waiting; concurrent claims split 100 due tasks disjointly', async () => {
  await parkOthers();
  const t0 = new Date('2031-01-01T00:00:00Z');
  const ids = new Set<string>();
  for (let i = 0; i < 100; i++) ids.add(await insertDue('skip', new Date(t0.getTime() - 1000 + i)));
  const lease = 60_000;

  // A claim held open in a transaction (its row locks held): a second claim meanwhile gets the other rows.
  let held: string[] = [];
  let meanwhile: string[] = [];
  await db.handle.db.transaction().execute(async (trx) => {
    held = (await new TaskRepository(trx).claimDue(t0, 60, 'holder', lease, KNOWN)).map((t) => t.id);
    // Would block until commit without SKIP LOCKED (and then this test would never finish).
    meanwhile = (await repo.claimDue(t0, 100, 'other', lease, KNOWN)).map((t) => t.id);
  });
  expect(held).toHaveLength(60);
  expect(meanwhile).toHaveLength(40);
  expect(new Set([...held, ...meanwhile])).toEqual(ids);

  // Release and race two claims for real.
  await sql`update tasks set lease_owner = null, lease_expires_at = null, next_check_at = ${t0} where partner = 'skip'`.execute(db.handle.db);
  const [a, b] = await Promise.all([repo.claimDue(t0, 50, 'racer-A', lease, KNOWN), repo.claimDue(t0, 50, 'racer-B', lease, KNOWN)]);
  const aIds = a.map((t) => t.id);
  const bIds = b.map((t) => t.id);
  expect(aIds.filter((id) => bIds.includes(id))).toEqual([]);
  expect(new Set([...aIds, ...bIds])).toEqual(ids);
  expect(a.every((t) => t.lease_owner === 'racer-A')).toBe(true);
  expect(b.every((t) => t.lease_owner === 'racer-B')).toBe(true);
  // Everything is leased now: nothing left to claim until the lease runs out.
  expect(await repo.claimDue(t0, 100, 'late', lease, KNOWN)).toEqual([]);
});

test("the claim's select uses the partial due index tasks_due_idx", async () => {
  // ~10k rows, most of them final: the partial index holds only the open ones.
  await sql`
    insert into tasks (id, partner, request_no, status, payload, body_hash, next_check_at, expires_at, created_at, updated_at)
    select gen_random_uuid(), 'explain', 'x-' || g,
           case when g % 20 = 0 then 'dispatched' else 'succeeded' end,
           '{}'::jsonb, 'h',
           case when g % 20 = 0 then now() + (g || ' seconds')::interval else null end,
           now() + interval '1 day', now(), now()
    from generate_series(1, 10000) as g`.execute(db.handle.db);
  await sql`analyze tasks`.execute(db.handle.db);

  // Capture the exact statement TaskRepository.claimDue sends (through a logging Kysely on the same pool) …
  let captured: { sql: string; parameters: readonly unknown[] } | undefined;
  const logging = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: db.handle.pool }),
    log: (e) => {
      if (e.level === 'query' && /for (no key )?update skip locked/i.test(e.query.sql)) captured = { sql: e.query.sql, parameters: e.query.parameters };
    },
  });
  const now = new Date();
  await new TaskRepository(logging).claimDue(now, 200, 'explainer', 0, KNOWN);
  expect(captured).toBeDefined();
  // … and explain it (not run) with the same parameters.
  const { rows } = await db.handle.pool.query<{ 'QUERY PLAN': string }>(`explain ${captured!.sql}`, [...captured!.parameters]);
  const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
  expect(plan).toMatch(/Index Scan using tasks_due_idx on tasks/);
  expect(plan).not.toMatch(/Seq Scan on tasks/);

  // And the statement itself still claims exactly the due open rows.
  const later = Date.now() + 3 * 3_600_000; // past every seeded next_check_at (now + up to 10,000 s)
  const claimed = await repo.claimDue(new Date(later), 10_000, 'explainer', 60_000, KNOWN);
  expect(claimed.filter((t) => t.partner === 'explain').length).toBe(500);
  expect(claimed.filter((t) => t.status !== 'pending' && t.status !== 'dispatched').length).toBe(0);
});

test('a due time moved under a live lease (an on-demand check) never hands the task to a second holder', async () => {
  await parkOthers();
  const t0 = new Date('2032-01-01T00:00:00Z');
  const id = await insertDue('due-lease', t0);
  expect((await repo.claimDue(t0, 10, 'holder', 60_000, KNOWN)).map((t) => t.id)).toEqual([id]);
  // Someone makes it due "now" by hand, as the on-demand check used to do.
  await sql`update tasks set next_check_at = ${t0} where id = ${id}::uuid`.execute(db.handle.db);
  expect(await repo.claimDue(new Date(t0.getTime() + 1), 10, 'intruder', 60_000, KNOWN)).toEqual([]);
  expect((await repo.findById(id))?.lease_owner).toBe('holder');
  // The on-demand check itself does not even move it: it is noted for when the lease is given up.
  const r = await repo.requestCheck(id, new Date(t0.getTime() + 2));
  expect(r?.dueAt).toBeUndefined();
  expect(new Date((await repo.findById(id))!.check_requested_at!).getTime()).toBe(t0.getTime() + 2);
  // Handed back: due at once for the next claim, the request folded in.
  expect(await repo.handBack([id], 'holder')).toBe(1);
  expect((await repo.claimDue(new Date(t0.getTime() + 3), 10, 'next', 60_000, KNOWN)).map((t) => t.id)).toEqual([id]);
});

test('tasks of a partner that is not configured are not claimed, get one event when parked, and are claimed at their expiry', async () => {
  await parkOthers();
  const t0 = new Date('2033-01-01T00:00:00Z');
  const id = await insertDue('gone', t0);
  const known = KNOWN.filter((p) => p !== 'gone');
  expect(await repo.claimDue(t0, 10, 'c', 60_000, known)).toEqual([]);
  const parked = await repo.parkUnknownPartners(known, t0);
  expect(parked.get('gone')).toBe(1);
  const row = await repo.findById(id);
  expect(new Date(row!.next_check_at!).getTime()).toBe(new Date(row!.expires_at).getTime());
  expect((await repo.listEvents(id)).at(-1)).toMatchObject({ from_status: 'pending', to_status: 'pending', source: 'poll', detail: { type: 'partner_unknown' } });
  // Parked once: a second pass writes nothing.
  expect((await repo.parkUnknownPartners(known, t0)).get('gone')).toBeUndefined();
  expect(await repo.listEvents(id)).toHaveLength(2);
  // At its expiry it is claimed (to be expired).
  const atExpiry = new Date(row!.expires_at);
  expect((await repo.claimDue(atExpiry, 10, 'c', 60_000, known)).map((t) => t.id)).toEqual([id]);
});
