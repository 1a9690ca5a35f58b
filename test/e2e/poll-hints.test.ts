import { ON_DEMAND_MIN_GAP_MS } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { Limiter, report } from './callback-helpers';
import { createTask, sleep, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getTask, maxInSlidingWindow, simPartner } from './reconciler-helpers';

/**
 * Issue 7 item 12: unauthenticated poll hints (`verify: "poll"`) are coalesced per task: however many
 * arrive, the partner sees at most one status query per task per second. The service runs its background
 * loops on the real clock; the hints come as fast as one client sends them.
 */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    partner: { callback: { verify: 'poll' }, reconcile: { scheduleSeconds: [3600] } },
    extraPartners: [simPartner('other', {})],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('300 hints in about 5 s: at most one status query per task per second, and the hints do get checks', async () => {
  const requestNo = uniqueRequestNo('hints');
  const created = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: { callback: { mode: 'never' }, processingForMs: 600_000 } } });
  expect((await waitForFirstDispatch(svc.api, created.id)).status).toBe('dispatched');

  const started = Date.now();
  const limiter = new Limiter(8);
  const answers: Promise<number>[] = [];
  for (let i = 0; i < 300; i++) {
    answers.push(limiter.run(async () => (await svc.api.post('/v1/callbacks/sim', report(requestNo, 'succeeded'))).status));
    // Spread over ~5 s (a pace, not a wait for anything).
    const ahead = started + ((i + 1) * 5000) / 300 - Date.now();
    if (ahead > 0) await sleep(ahead);
  }
  const codes = await Promise.all(answers);
  expect(codes.filter((c) => c !== 202)).toEqual([]);
  const hintsEnded = Date.now();
  // The last hint's check comes at most ON_DEMAND_MIN_GAP_MS after the one before it.
  await eventually(async () => Date.now() > hintsEnded + ON_DEMAND_MIN_GAP_MS + 500, 'the last coalesced check to be due', 5000, 50);
  await eventually(async () => (await getTask(svc.api, created.id)).checkAttempts > 0 && svc.runtime.dispatcher.activeCount === 0, 'the checks to be recorded');

  const times = svc.simulator.stats().requestLog.filter((e) => e.requestNo === requestNo && e.kind === 'status').map((e) => e.at);
  const elapsedS = (Date.now() - started) / 1000;
  expect(times.length).toBeGreaterThanOrEqual(2);
  expect(times.length).toBeLessThanOrEqual(Math.ceil(elapsedS));
  // Never two within any one second, as the partner saw them.
  expect(maxInSlidingWindow(times, 1000).count).toBe(1);
  expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
});
