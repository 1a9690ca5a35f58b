import { ManualClock } from '../../src/clock';
import { BREAKER_CONSECUTIVE_FAILURES, BREAKER_HALF_OPEN_AFTER_MS } from '../../src/partners/partner-guard';
import type { ApiTask } from '../../src/tasks/task-schemas';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, metricValue, scrapeMetrics, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getTask, ms, statusCounts, sumOf } from './reconciler-helpers';

/**
 * A partner that is down: after BREAKER_CONSECUTIVE_FAILURES transient failures its breaker opens (the
 * gauge says so), calls stop and no attempt is burned while it is open, and once the partner is back the
 * breaker lets a trial call through after BREAKER_HALF_OPEN_AFTER_MS (real time, 5 s) and the backlog
 * drains. The service's own schedule runs on a ManualClock driven by `runOnce()`.
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
    partner: { dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 8 }, reconcile: { scheduleSeconds: [1] } },
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const sweep = () => svc.runtime.reconciler.runOnce();
const BREAKER_GAUGE = 'callback_reconciler_partner_breaker_open';

test('the breaker opens on a down partner, burns no attempts while open, and the backlog drains once the partner is back', async () => {
  expect(BREAKER_CONSECUTIVE_FAILURES).toBe(5);
  svc.simulator.setDown(true);
  const payload = { simulate: { callback: { mode: 'never' } } };

  // Five tasks whose first dispatch fails transiently (503): the fifth failure opens the breaker.
  const failed: ApiTask[] = [];
  for (let i = 0; i < BREAKER_CONSECUTIVE_FAILURES; i++) {
    const created = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('down'), payload });
    const t = await waitForFirstDispatch(svc.api, created.id);
    expect(t).toMatchObject({ status: 'pending', dispatchAttempts: 1 });
    expect(t.error).toMatchObject({ class: 'http_5xx', httpStatus: 503 });
    failed.push(t);
  }
  const openedBy = Date.now();
  const { samples } = await scrapeMetrics(svc.api);
  expect(metricValue(samples, BREAKER_GAUGE, { partner: 'sim' })).toBe(1);
  expect(svc.simulator.stats().totals.rejectedWhileDown).toBe(BREAKER_CONSECUTIVE_FAILURES);

  // A sixth task is not even sent while the breaker is open: put back for later, no attempt counted.
  const sixth = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('down'), payload });
  // Deferred: the dispatcher's claim is given back and the task is due again within the open period.
  await eventually(async () => {
    const row = await db.handle.db.selectFrom('tasks').select(['lease_owner']).where('id', '=', sixth.id).executeTakeFirstOrThrow();
    return row.lease_owner === null ? true : undefined;
  }, 'the sixth task to be deferred by the open breaker');
  const deferred = await getTask(svc.api, sixth.id);
  expect(deferred).toMatchObject({ status: 'pending', dispatchAttempts: 0, checkAttempts: 0 });
  expect(ms(deferred.nextCheckAt)).toBeGreaterThan(clock.now().getTime());
  expect(ms(deferred.nextCheckAt)).toBeLessThanOrEqual(clock.now().getTime() + BREAKER_HALF_OPEN_AFTER_MS);
  expect(svc.simulator.stats().totals.rejectedWhileDown).toBe(BREAKER_CONSECUTIVE_FAILURES);
  const all = [...failed, sixth];

  // Sweeps while the breaker is open: every task is due and claimed, none is sent, no attempt is burned.
  const deferredChecks = async () => sumOf((await scrapeMetrics(svc.api)).samples, 'callback_reconciler_reconciler_checks_total', { partner: 'sim', outcome: 'deferred' });
  // (Rounds run only well inside the open period, which is real time; normally all three fit easily.)
  const insideOpenPeriod = () => Date.now() - openedBy < BREAKER_HALF_OPEN_AFTER_MS - 1000;
  const before = await deferredChecks();
  let rounds = 0;
  while (rounds < 3 && insideOpenPeriod()) {
    rounds++;
    clock.advance(BREAKER_HALF_OPEN_AFTER_MS + 1000);
    const r = await sweep();
    expect(r.claimed).toBe(all.length);
    for (const t of all) {
      const now = await getTask(svc.api, t.id);
      expect(now).toMatchObject({ status: 'pending', dispatchAttempts: t.id === sixth.id ? 0 : 1, checkAttempts: 0 });
    }
    expect(await deferredChecks()).toBe(before + rounds * all.length);
  }
  expect(rounds).toBeGreaterThan(0);
  expect(svc.simulator.stats().totals).toMatchObject({ rejectedWhileDown: BREAKER_CONSECUTIVE_FAILURES, dispatches: 0, statusQueries: 0 });

  // The partner comes back. After the half-open delay (real time) a trial call goes through and closes it.
  svc.simulator.setDown(false);
  await eventually(async () => Date.now() > openedBy + BREAKER_HALF_OPEN_AFTER_MS + 100, 'the half-open delay', BREAKER_HALF_OPEN_AFTER_MS + 2000, 100);
  await eventually(
    async () => {
      clock.advance(BREAKER_HALF_OPEN_AFTER_MS + 1000);
      await sweep();
      const counts = await statusCounts(db, 'sim');
      return counts.succeeded === all.length ? true : undefined;
    },
    'the backlog to drain after the partner came back',
    15_000,
    200,
  );
  for (const t of all) {
    // One 503 for the first five (none for the sixth), then one accepted dispatch each, settled by poll.
    expect(await getTask(svc.api, t.id)).toMatchObject({ status: 'succeeded', settledBy: 'poll', dispatchAttempts: t.id === sixth.id ? 1 : 2 });
  }
  expect(svc.simulator.stats().totals).toMatchObject({ rejectedWhileDown: BREAKER_CONSECUTIVE_FAILURES, dispatches: all.length });
  expect(metricValue((await scrapeMetrics(svc.api)).samples, BREAKER_GAUGE, { partner: 'sim' })).toBe(0);
});
