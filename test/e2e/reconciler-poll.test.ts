import { ManualClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { postCallback, signCallback } from './callback-helpers';
import { createTask, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getEvents, getTask, ms, simPartner, trail } from './reconciler-helpers';

/**
 * Settling by poll: the service asks the partner on the partner's schedule until the task is final. The
 * service runs without background loops on a ManualClock, so each sweep is `runOnce()` at a chosen instant;
 * the simulator runs on real time (its `processingForMs`), so the test waits for real where the simulator
 * must change its answer.
 *
 * Partners: `sim` (schedule 1 s, 2 s, 5 s), `sim-expiry` (maxAgeSeconds 60, schedule 30 s), and
 * `sim-poll` (`verify: "poll"`: its callbacks are only hints).
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
    partner: { reconcile: { scheduleSeconds: [1, 2, 5] } },
    extraPartners: [
      simPartner('sim-expiry', { reconcile: { scheduleSeconds: [30], maxAgeSeconds: 60 } }),
      simPartner('sim-poll', { callback: { verify: 'poll' }, reconcile: { scheduleSeconds: [30] } }),
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const sweep = () => svc.runtime.reconciler.runOnce();
const simStats = (requestNo: string) => svc.simulator.stats().byRequestNo[requestNo];

test('a partner that never calls back: the task settles by poll once its first check is due, not before', async () => {
  const requestNo = uniqueRequestNo('never');
  const created = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: { callback: { mode: 'never' } } } });
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  const t0 = clock.now().getTime();
  expect(dispatched).toMatchObject({ status: 'dispatched', checkAttempts: 0, settledBy: null });
  // First check: scheduleSeconds[0] after the dispatch was recorded.
  expect(ms(dispatched.nextCheckAt)).toBe(t0 + 1000);

  clock.set(t0 + 999);
  await sweep();
  expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'dispatched', checkAttempts: 0 });
  expect(simStats(requestNo)?.statusQueries ?? 0).toBe(0);

  clock.set(t0 + 1000);
  await sweep();
  const settled = await getTask(svc.api, created.id);
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'poll', checkAttempts: 1, dispatchAttempts: 1, nextCheckAt: null, result: { simulated: true } });
  expect(ms(settled.completedAt)).toBe(t0 + 1000);
  expect(simStats(requestNo)).toMatchObject({ dispatches: 1, statusQueries: 1, callbacksSent: 0 });
  expect(trail(await getEvents(svc.api, created.id))).toEqual([
    [null, 'pending', 'api'],
    ['pending', 'dispatched', 'dispatch'],
    ['dispatched', 'succeeded', 'poll'],
  ]);
});

test('processing for a while, then succeeded: checks follow the schedule (the last step repeats), then it settles by poll', async () => {
  const PROCESSING_MS = 4000;
  const requestNo = uniqueRequestNo('slow');
  const created = await createTask(svc.api, {
    partner: 'sim',
    requestNo,
    payload: { simulate: { callback: { mode: 'never' }, processingForMs: PROCESSING_MS } },
  });
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  const receivedAt = svc.simulator.stats().requestLog.find((e) => e.requestNo === requestNo && e.kind === 'dispatch')!.at;
  let due = ms(dispatched.nextCheckAt);
  expect(due).toBe(clock.now().getTime() + 1000);

  // scheduleSeconds [1, 2, 5]: after the dispatch 1 s; after check n the delay is step n (the last repeats).
  const expectedDelays = [2000, 5000, 5000];
  for (const [i, delay] of expectedDelays.entries()) {
    clock.set(due - 1);
    await sweep();
    expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'dispatched', checkAttempts: i });

    clock.set(due);
    await sweep();
    const t = await getTask(svc.api, created.id);
    expect(t).toMatchObject({ status: 'dispatched', checkAttempts: i + 1, settledBy: null });
    expect(ms(t.nextCheckAt)).toBe(due + delay);
    expect(simStats(requestNo)?.statusQueries).toBe(i + 1);
    due += delay;
  }
  // Let the simulator finish for real, then the next scheduled check settles it.
  await eventually(async () => Date.now() > receivedAt + PROCESSING_MS + 50, 'the simulated processing to end', PROCESSING_MS + 2000, 50);
  clock.set(due);
  await sweep();
  const settled = await getTask(svc.api, created.id);
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'poll', checkAttempts: 4, nextCheckAt: null });
  expect(simStats(requestNo)).toMatchObject({ dispatches: 1, statusQueries: 4, callbacksSent: 0 });
  // Routine "processing" answers leave no event rows; the trail shows only the moves.
  expect(trail(await getEvents(svc.api, created.id))).toEqual([
    [null, 'pending', 'api'],
    ['pending', 'dispatched', 'dispatch'],
    ['dispatched', 'succeeded', 'poll'],
  ]);
});

test('no outcome within maxAgeSeconds: expired by the reconciler; a late definitive callback still settles it', async () => {
  const requestNo = uniqueRequestNo('expiry');
  const created = await createTask(svc.api, {
    partner: 'sim-expiry',
    requestNo,
    payload: { simulate: { callback: { mode: 'never' }, processingForMs: 600_000 } },
  });
  const t0 = ms(created.createdAt);
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  expect(dispatched.status).toBe('dispatched');

  clock.set(t0 + 30_000);
  await sweep();
  const checked = await getTask(svc.api, created.id);
  expect(checked).toMatchObject({ status: 'dispatched', checkAttempts: 1 });
  // The next check would be 30 s later, but never past the expiry: the check at expiry is what expires it.
  expect(ms(checked.nextCheckAt)).toBe(t0 + 60_000);

  clock.set(t0 + 60_001);
  await sweep();
  const expired = await getTask(svc.api, created.id);
  expect(expired).toMatchObject({ status: 'expired', nextCheckAt: null, settledBy: null, result: null });
  expect(ms(expired.completedAt)).toBe(t0 + 60_001);
  const events = await getEvents(svc.api, created.id);
  expect(events.at(-1)).toMatchObject({ from: 'dispatched', to: 'expired', source: 'expiry' });
  // The partner is asked once more at the expiring check (issue 7: a final answer would have won); it
  // still said "processing", so the task expired, and the event says what the partner last answered.
  expect(simStats(requestNo)?.statusQueries).toBe(2);
  expect(events.at(-1)!.detail).toMatchObject({ type: 'expiry', lastAnswer: 'processing' });

  // The partner finally reports success: a definitive report still wins over expiry.
  const cb = signCallback({ requestNo, status: 'succeeded', result: { late: true } }, { secret: TEST_SECRET });
  const res = await postCallback(svc.url, 'sim-expiry', cb);
  expect(res.status).toBe(200);
  expect(res.data).toEqual({ outcome: 'applied' });
  const settled = await getTask(svc.api, created.id);
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { late: true } });
  expect(trail(await getEvents(svc.api, created.id))).toEqual([
    [null, 'pending', 'api'],
    ['pending', 'dispatched', 'dispatch'],
    ['dispatched', 'expired', 'expiry'],
    ['expired', 'succeeded', 'callback'],
  ]);
});

test('POST /v1/tasks/{id}/reconcile checks a dispatched task right away, without waiting for a tick', async () => {
  const requestNo = uniqueRequestNo('ondemand');
  const created = await createTask(svc.api, {
    partner: 'sim',
    requestNo,
    payload: { simulate: { callback: { mode: 'never' }, processingForMs: 600_000 } },
  });
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  const now = clock.now().getTime();
  // Not due for a while by the schedule, and no loop runs at all here: only the request can trigger a check.
  expect(ms(dispatched.nextCheckAt)).toBe(now + 1000);
  expect(simStats(requestNo)?.statusQueries ?? 0).toBe(0);

  const res = await svc.api.post(`/v1/tasks/${created.id}/reconcile`);
  expect(res.status).toBe(202);
  await eventually(async () => simStats(requestNo)?.statusQueries === 1, 'the on-demand status query', 2000);
  const checked = await eventually(async () => {
    const t = await getTask(svc.api, created.id);
    return t.checkAttempts === 1 ? t : undefined;
  }, 'the on-demand check to be recorded', 2000);
  // Still processing at the partner: next check by the schedule's second step from now.
  expect(checked).toMatchObject({ status: 'dispatched', checkAttempts: 1 });
  expect(ms(checked.nextCheckAt)).toBe(now + 2000);
});

test('a "verify": "poll" partner\'s callback is only a hint: it triggers an immediate status query, whose answer settles the task', async () => {
  const requestNo = uniqueRequestNo('pollhint');
  const created = await createTask(svc.api, { partner: 'sim-poll', requestNo, payload: { simulate: { callback: { mode: 'never' } } } });
  const dispatched = await waitForFirstDispatch(svc.api, created.id);
  expect(dispatched.status).toBe('dispatched');
  expect(ms(dispatched.nextCheckAt)).toBe(clock.now().getTime() + 30_000);
  expect(simStats(requestNo)?.statusQueries ?? 0).toBe(0);

  // Unsigned and even wrong ("failed"): nothing in it is trusted; the partner's status endpoint says succeeded.
  const res = await svc.api.post('/v1/callbacks/sim-poll', { requestNo, status: 'failed' });
  expect(res.status).toBe(202);
  expect(res.data).toEqual({ outcome: 'poll' });
  await eventually(async () => simStats(requestNo)?.statusQueries === 1, 'the status query the callback triggered', 2000);
  const settled = await eventually(async () => {
    const t = await getTask(svc.api, created.id);
    return t.status !== 'dispatched' ? t : undefined;
  }, 'the task to settle', 2000);
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'poll', checkAttempts: 1, result: { simulated: true } });
});
