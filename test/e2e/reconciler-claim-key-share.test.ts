import { sql } from 'kysely';
import { ManualClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, quiesce, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getTask, ms } from './reconciler-helpers';

/**
 * A sweep must not skip a due, lease-free task just because a row that references it is being inserted
 * at that moment. Every insert into a table with a foreign key to `tasks` (partner_calls, written by the
 * call log ~50 ms after each partner call; task_events; notifications; callback_inbox) takes a FOR KEY
 * SHARE lock on the task row until it commits. A claim by `FOR UPDATE SKIP LOCKED` conflicts with that
 * lock and silently skipped the task (found as intermittent "0 status queries" in reconciler-poll and
 * reconciler-lost-resend on a loaded machine). The claim changes no key, so `FOR NO KEY UPDATE` is the
 * lock it needs: it still excludes other claims and transitions, not foreign-key checks.
 */

let db: TestDatabase;
let svc: TestService;
const clock = new ManualClock(Date.now());

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db, clock, background: false, partner: { reconcile: { scheduleSeconds: [1] } } });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('a due task is claimed while another transaction inserts a row referencing it', async () => {
  const requestNo = uniqueRequestNo('keyshare');
  const created = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: { callback: { mode: 'never' } } } });
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  expect(dispatched).toMatchObject({ status: 'dispatched', checkAttempts: 0 });
  await quiesce(svc);
  await svc.runtime.callLog.flush();

  clock.set(ms(dispatched.nextCheckAt));
  // The open transaction holds the FOR KEY SHARE lock its foreign-key check took, as the call log's
  // insert does while it runs; the sweep starts meanwhile on the service's own pool. (The check's write
  // waits for that lock, as it would for the real, brief insert, so the transaction ends once the
  // partner has been asked.)
  const swept = await db.handle.db.transaction().execute(async (trx) => {
    await sql`insert into partner_calls (task_id, started_at, operation, outcome, duration_ms)
              values (${created.id}::uuid, now(), 'status', 'found', 1)`.execute(trx);
    const sweep = svc.runtime.reconciler.runOnce();
    await Promise.race([
      sweep,
      eventually(async () => (svc.simulator.stats().byRequestNo[requestNo]?.statusQueries ?? 0) >= 1, 'the status query', 30_000),
    ]);
    return { sweep };
  }).then(({ sweep }) => sweep);

  expect(swept).toMatchObject({ claimed: 1, checked: 1 });
  expect(svc.simulator.stats().byRequestNo[requestNo]).toMatchObject({ statusQueries: 1 });
  expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'succeeded', settledBy: 'poll', checkAttempts: 1 });
});
