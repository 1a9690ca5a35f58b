import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { sql } from 'kysely';
import { ON_DEMAND_MIN_GAP_MS, TaskRepository } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * Property (issue 7): whatever the interleaving of on-demand checks, claims, hand-backs and leases
 * lapsing, (1) a claim never takes a task under a live lease, (2) an on-demand check never moves the
 * schedule or the holder of a leased task, and (3) once the lease is given up, an on-demand check asked
 * for under it is due no later than the coalescing allows.
 */

let db: TestDatabase;
let repo: TaskRepository;
const PARTNER = 'prop';
const T0 = new Date('2035-01-01T00:00:00Z').getTime();

beforeAll(async () => {
  db = await createTestDatabase();
  repo = new TaskRepository(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

type Op =
  | { kind: 'request'; at: number }
  | { kind: 'claim'; at: number; owner: string }
  | { kind: 'handBack' }
  | { kind: 'routine'; at: number; nextIn: number }
  | { kind: 'lapse' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('request' as const), at: fc.integer({ min: 0, max: 120_000 }) }),
  fc.record({ kind: fc.constant('claim' as const), at: fc.integer({ min: 0, max: 120_000 }), owner: fc.constantFrom('A', 'B', 'C') }),
  fc.record({ kind: fc.constant('handBack' as const) }),
  fc.record({ kind: fc.constant('routine' as const), at: fc.integer({ min: 0, max: 120_000 }), nextIn: fc.integer({ min: 1000, max: 60_000 }) }),
  fc.record({ kind: fc.constant('lapse' as const) }),
);

interface Row {
  next_check_at: Date;
  lease_owner: string | null;
  live: boolean;
  check_requested_at: Date | null;
  last_check_at: Date | null;
  status: string;
}
async function read(id: string): Promise<Row> {
  const { rows } = await sql<Row>`
    select next_check_at, lease_owner, coalesce(lease_expires_at > now(), false) as live, check_requested_at, last_check_at, status
    from tasks where id = ${id}::uuid`.execute(db.handle.db);
  return rows[0]!;
}

test('on-demand checks, claims, hand-backs and lapses never let two holders in nor move a held schedule', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 12 }), async (ops) => {
      const id = randomUUID();
      await sql`update tasks set next_check_at = '2999-01-01' where partner = ${PARTNER} and status in ('pending', 'dispatched')`.execute(db.handle.db);
      await sql`
        insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at, created_at, updated_at, dispatched_at)
        values (${id}::uuid, ${PARTNER}, ${id}, 'dispatched', '{}'::jsonb, 'h', 1, ${new Date(T0 + 30_000)}, ${new Date(T0 + 86_400_000)}, ${new Date(T0)}, ${new Date(T0)}, ${new Date(T0)})`.execute(db.handle.db);
      for (const op of ops) {
        const before = await read(id);
        switch (op.kind) {
          case 'request': {
            const r = await repo.requestCheck(id, new Date(T0 + op.at));
            const after = await read(id);
            if (before.live) {
              expect(r?.dueAt).toBeUndefined();
              expect(after.next_check_at).toEqual(before.next_check_at);
              expect(after.lease_owner).toBe(before.lease_owner);
              expect(after.check_requested_at).not.toBeNull();
            } else {
              const earliest = Math.max(T0 + op.at, before.last_check_at ? before.last_check_at.getTime() + ON_DEMAND_MIN_GAP_MS : 0);
              expect(after.next_check_at.getTime()).toBe(Math.min(before.next_check_at.getTime(), earliest));
            }
            break;
          }
          case 'claim': {
            const got = await repo.claimDue(new Date(T0 + op.at), 10, op.owner, 60_000, [PARTNER]);
            const mine = got.filter((t) => t.id === id);
            if (before.live) expect(mine).toEqual([]);
            if (!before.live && before.next_check_at.getTime() <= T0 + op.at) expect(mine).toHaveLength(1);
            if (mine.length > 0) expect((await read(id)).check_requested_at).toBeNull();
            break;
          }
          case 'handBack':
          case 'routine': {
            if (!before.lease_owner) break;
            if (op.kind === 'handBack') await repo.handBack([id], before.lease_owner);
            else await repo.recordRoutineChecks(before.lease_owner, new Date(T0 + op.at), [{ id, nextCheckAt: new Date(T0 + op.at + op.nextIn) }]);
            const after = await read(id);
            expect(after.lease_owner).toBeNull();
            if (before.check_requested_at) {
              const due = Math.max(before.check_requested_at.getTime(), before.last_check_at ? before.last_check_at.getTime() + ON_DEMAND_MIN_GAP_MS : 0);
              expect(after.next_check_at.getTime()).toBeLessThanOrEqual(due);
            }
            break;
          }
          case 'lapse':
            await sql`update tasks set lease_expires_at = now() - interval '1 millisecond' where id = ${id}::uuid and lease_owner is not null`.execute(db.handle.db);
            break;
        }
      }
    }),
    { numRuns: 40 },
  );
});
