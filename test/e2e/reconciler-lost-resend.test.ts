import { sql } from 'kysely';
import { ManualClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getTask, simPartner } from './reconciler-helpers';

/**
 * Found by the chaos suite: a re-send after a transient failure whose outcome is never recorded (the
 * replica is killed, or the database is unreachable, between the send and the write) must not leave
 * the task looking like "the last attempt failed before sending". Otherwise the next claim re-sends it
 * without asking, and a partner that received the lost attempt receives the request twice.
 *
 * The lost write is produced the way it happens across replicas: while the re-send is in flight the
 * claim passes to someone else (the test rewrites lease_owner), so the sender's write is fenced out.
 */

let db: TestDatabase;
let svc: TestService;
const clock = new ManualClock(Date.now());

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    clock,
    background: false,
    extraPartners: [simPartner('lost', { dispatch: { path: '/requests', timeoutMs: 5000, maxAttempts: 5 }, reconcile: { scheduleSeconds: [1] } })],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('after a re-send whose outcome was lost, the partner is asked before anything is sent again', async () => {
  const requestNo = uniqueRequestNo('lost');
  // Attempt 1: 503 (transient, never received). Attempt 2: received, answered after 1 s.
  const created = await createTask(svc.api, {
    partner: 'lost',
    requestNo,
    payload: { simulate: { callback: { mode: 'never' }, dispatch: [{ status: 503 }, { delayMs: 1000 }, {}] } },
  });
  const first = await waitForFirstDispatch(svc.api, created.id);
  expect(first).toMatchObject({ status: 'pending', dispatchAttempts: 1 });

  clock.advance(60_000);
  const resend = svc.runtime.reconciler.runOnce();
  await eventually(async () => (svc.simulator.stats().byRequestNo[requestNo]?.received ?? 0) >= 1, 'the re-send to reach the partner');
  // The claim moves on while the answer is on its way: the re-sender's write will be fenced out.
  await db.handle.db.updateTable('tasks').set({ lease_owner: 'another-replica:gone' }).where('id', '=', created.id).execute();
  await resend;
  expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'pending', dispatchAttempts: 1 });

  // The other holder dies too; its lease lapses (leases run by the database's clock: moved here as if
  // that time had passed) and the task is claimed again.
  await sql`update tasks set lease_expires_at = now() - interval '1 millisecond' where id = ${created.id}::uuid`.execute(db.handle.db);
  clock.advance(10 * 60_000);
  await svc.runtime.reconciler.runOnce();

  expect(svc.simulator.stats().byRequestNo[requestNo]).toMatchObject({ received: 1, statusQueries: 1 });
  expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'succeeded', settledBy: 'poll' });
});
