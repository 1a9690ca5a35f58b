import { sql } from 'kysely';
import { ManualClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { postCallback, report, signCallback } from './callback-helpers';
import { createTask, uniqueRequestNo } from './helpers';
import { getTask, simPartner } from './reconciler-helpers';

/**
 * Issue 7, "Leases and scheduling": a lease is the only thing that decides who may act on a task. An
 * on-demand check (POST .../reconcile, a poll hint) waits for the lease and runs when it ends; a replica
 * whose clock runs ahead cannot take a live lease (leases run by the database's clock); a definitive
 * report in a dispatch answer is applied whatever touched the task during the call.
 *
 * The partner (the simulator) takes DISPATCH_DELAY_MS to answer a dispatch and, scripted with
 * `status: ['404', 'normal']`, answers the first status query 404, as a partner that has not recorded a
 * request it is still accepting would: whoever asks during the dispatch is told "never received".
 */

const DISPATCH_DELAY_MS = 2000;
const SLOW_ACCEPT = { callback: { mode: 'never' }, dispatch: { delayMs: DISPATCH_DELAY_MS }, status: ['404', 'normal'] };

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    background: false,
    partner: { dispatch: { path: '/requests', timeoutMs: 5000, maxAttempts: 3 } },
    extraPartners: [simPartner('hinting', { callback: { verify: 'poll' }, dispatch: { path: '/requests', timeoutMs: 5000, maxAttempts: 3 } })],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const simStats = (requestNo: string) => svc.simulator.stats().byRequestNo[requestNo];
const kindsSeen = (requestNo: string) => svc.simulator.stats().requestLog.filter((e) => e.requestNo === requestNo).map((e) => e.kind);

interface LeaseRow {
  lease_owner: string | null;
  next_check_at: Date | null;
  check_requested_at: Date | null;
}
async function leaseOf(id: string): Promise<LeaseRow> {
  const { rows } = await sql<LeaseRow>`select lease_owner, next_check_at, check_requested_at from tasks where id = ${id}::uuid`.execute(db.handle.db);
  return rows[0]!;
}

test('POST /reconcile during a slow first dispatch waits for the lease: each task is sent once, and checked once the dispatch is recorded', async () => {
  const requestNos = Array.from({ length: 6 }, () => uniqueRequestNo('ondemand-lease'));
  const tasks = await Promise.all(requestNos.map((requestNo) => createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: SLOW_ACCEPT } })));
  await eventually(async () => requestNos.every((r) => (simStats(r)?.dispatches ?? 0) >= 1), 'every first dispatch to reach the partner');

  for (const t of tasks) {
    const before = await leaseOf(t.id);
    const res = await svc.api.post(`/v1/tasks/${t.id}/reconcile`);
    expect(res.status).toBe(202);
    const after = await leaseOf(t.id);
    if ((await getTask(svc.api, t.id)).dispatchAttempts === 0) {
      // Still in the dispatcher's hands: the lease is untouched and so is the schedule.
      expect(after.lease_owner).toBe(before.lease_owner);
      expect(after.lease_owner).toContain(':dispatch:');
      expect(after.next_check_at).toEqual(before.next_check_at);
    }
  }

  // The requested check runs once each dispatch is recorded: asked (404 from this partner), never re-sent.
  for (const [i, t] of tasks.entries()) {
    const checked = await eventually(async () => {
      const now = await getTask(svc.api, t.id);
      return now.checkAttempts >= 1 ? now : undefined;
    }, `the requested check of task ${i} after its dispatch`);
    expect(checked).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
  }
  for (const r of requestNos) {
    expect(simStats(r)?.dispatches).toBe(1);
    expect(kindsSeen(r)).toEqual(['dispatch', 'status']);
  }
});

test('a replica whose clock runs 10 minutes ahead cannot take a live dispatch lease (leases run by the database clock)', async () => {
  const ahead = new ManualClock(Date.now() + 10 * 60_000);
  const other = await startTestService({ db, simulator: svc.simulator, clock: ahead, background: false, partner: { dispatch: { path: '/requests', timeoutMs: 5000, maxAttempts: 3 } } });
  try {
    const requestNo = uniqueRequestNo('skew');
    const task = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: SLOW_ACCEPT } });
    await eventually(async () => (simStats(requestNo)?.dispatches ?? 0) >= 1, 'the dispatch to reach the partner');
    let sweeps = 0;
    while ((await getTask(svc.api, task.id)).dispatchAttempts === 0) {
      await other.runtime.reconciler.runOnce();
      const lease = await leaseOf(task.id);
      // Still the dispatcher's (or given up by it once recorded): never the other replica's sweep.
      if (lease.lease_owner !== null) expect(lease.lease_owner).toContain(`${svc.runtime.instanceId}:dispatch:`);
      sweeps++;
      ahead.advance(1000);
    }
    expect(sweeps).toBeGreaterThan(0);
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
    expect(simStats(requestNo)?.dispatches).toBe(1);
    // Nobody asked the partner while the dispatch was in flight (once recorded, the task is anyone's to check).
    const log = svc.simulator.stats().requestLog.filter((e) => e.requestNo === requestNo);
    const answeredAt = log.find((e) => e.kind === 'dispatch')!.at + DISPATCH_DELAY_MS;
    expect(log.filter((e) => e.kind === 'status' && e.at < answeredAt)).toEqual([]);
  } finally {
    await other.stop();
  }
});

test('a final status in the dispatch answer is applied although a "processing" callback moved the task during the call', async () => {
  const requestNo = uniqueRequestNo('answer-wins');
  const task = await createTask(svc.api, {
    partner: 'sim',
    requestNo,
    payload: { simulate: { callback: { mode: 'never' }, dispatch: { delayMs: DISPATCH_DELAY_MS, bodyStatus: 'succeeded' }, result: { via: 'answer' } } },
  });
  await eventually(async () => (simStats(requestNo)?.dispatches ?? 0) >= 1, 'the dispatch to reach the partner');
  const cb = await postCallback(svc.url, 'sim', signCallback(report(requestNo, 'processing'), { secret: TEST_SECRET }));
  expect(cb.data).toEqual({ outcome: 'applied' });
  expect((await getTask(svc.api, task.id)).status).toBe('dispatched');

  const settled = await eventually(async () => {
    const t = await getTask(svc.api, task.id);
    return t.status !== 'dispatched' ? t : undefined;
  }, 'the dispatch answer to be recorded');
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'dispatch', result: { via: 'answer' }, nextCheckAt: null });
  expect(simStats(requestNo)?.dispatches).toBe(1);
});

test('a poll hint under a live lease does not move the schedule; the check it asked for runs once the lease is given up', async () => {
  const requestNo = uniqueRequestNo('hint-lease');
  const task = await createTask(svc.api, { partner: 'hinting', requestNo, payload: { simulate: SLOW_ACCEPT } });
  await eventually(async () => (simStats(requestNo)?.dispatches ?? 0) >= 1, 'the dispatch to reach the partner');
  const before = await leaseOf(task.id);
  const hint = await svc.api.post('/v1/callbacks/hinting', report(requestNo, 'succeeded'));
  expect(hint.status).toBe(202);
  const after = await leaseOf(task.id);
  if ((await getTask(svc.api, task.id)).dispatchAttempts === 0) {
    expect(after.lease_owner).toBe(before.lease_owner);
    expect(after.next_check_at).toEqual(before.next_check_at);
    expect(after.check_requested_at).not.toBeNull();
  }
  const checked = await eventually(async () => {
    const t = await getTask(svc.api, task.id);
    return t.checkAttempts >= 1 ? t : undefined;
  }, 'the hinted check after the dispatch');
  expect(checked).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
  expect(kindsSeen(requestNo)).toEqual(['dispatch', 'status']);
});
