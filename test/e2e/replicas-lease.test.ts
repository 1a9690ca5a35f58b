import { sql } from 'kysely';
import { ManualClock } from '../../src/clock';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { uniqueRequestNo } from './helpers';

/**
 * A reconciler claim must cover the partner call made under it. Two replicas (in-process services on one
 * database and one ManualClock) with RECONCILE_LEASE_MS=5000, the smallest allowed, and a partner whose
 * dispatch timeout (8 s, allowed up to 120 s) is longer than that lease. Replica A re-sends a task after
 * a transient failure; the partner takes 6 s to answer. While A's dispatch is still in flight, A's
 * reconciler lease (5 s) runs out and replica B sweeps. Nothing may be sent a second time: the partner
 * must see exactly one dispatch, and the task still settles.
 */

const LEASE_MS = 5000;

let db: TestDatabase;
let simulator: Simulator;
let a: TestService;
let b: TestService;
const clock = new ManualClock(Date.now());

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET] });
  const common = {
    db,
    simulator,
    clock,
    background: false,
    env: { RECONCILE_LEASE_MS: String(LEASE_MS) },
    partner: { dispatch: { path: '/requests', timeoutMs: 8000, maxAttempts: 5 }, reconcile: { scheduleSeconds: [1] } },
  };
  a = await startTestService(common);
  b = await startTestService(common);
});
afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await simulator?.close();
  await db?.drop();
});

test('a re-dispatch that outlives the reconciler lease is not sent again by another replica', async () => {
  const requestNo = uniqueRequestNo('lease');
  const simulate = { callback: { mode: 'never' }, dispatch: { delayMs: 6000 } };
  // A task whose first dispatch failed transiently (never got in): pending, due now, no claim.
  const now = clock.now();
  const { rows } = await sql<{ id: string }>`
    insert into tasks (id, partner, request_no, kind, status, payload, body_hash, dispatch_attempts, last_dispatch_outcome,
                       next_check_at, expires_at, created_at, updated_at)
    values (gen_random_uuid(), 'sim', ${requestNo}, null, 'pending', ${JSON.stringify({ simulate })}::jsonb, 'h', 1, 'transient',
            ${now}, ${new Date(now.getTime() + 86_400_000)}, ${now}, ${now})
    returning id::text`.execute(db.handle.db);
  const id = rows[0]!.id;
  const dispatches = () => simulator.stats().byRequestNo[requestNo]?.dispatches ?? 0;

  // Replica A claims it and re-sends; the partner holds the answer for 6 s (within the 8 s timeout).
  let aDone = false;
  const sweepA = a.runtime.reconciler.runOnce().finally(() => (aDone = true));
  await eventually(async () => dispatches() > 0 || aDone, "replica A's sweep to send or finish");

  // A's 5 s reconciler lease runs out while its call is still in flight; replica B sweeps.
  clock.advance(LEASE_MS);
  await b.runtime.reconciler.runOnce();
  await sweepA;
  expect(dispatches()).toBeLessThanOrEqual(1);

  // From here on, both replicas keep sweeping until the task settles: still one dispatch in total.
  await eventually(
    async () => {
      clock.advance(10_000);
      await Promise.all([a.runtime.reconciler.runOnce(), b.runtime.reconciler.runOnce()]);
      const t = await a.api.get(`/v1/tasks/${id}`);
      return t.data.status === 'succeeded' ? true : undefined;
    },
    'the task to settle',
    20_000,
    50,
  );
  expect(dispatches()).toBe(1);
  expect(simulator.stats().byRequestNo[requestNo]?.lastIdempotencyKey).toBe(requestNo);
});
