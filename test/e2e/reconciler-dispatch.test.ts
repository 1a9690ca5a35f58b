import { ManualClock } from '../../src/clock';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, type TestService } from '../support/service';
import { createTask, uniqueRequestNo, waitForFirstDispatch } from './helpers';
import { getEvents, getTask, ms, simPartner, trail } from './reconciler-helpers';

/**
 * What the reconciler does with a task whose dispatch did not go cleanly: an ambiguous one (timeout after
 * the request left) is never re-sent blindly, the partner is asked first; a transient one (the request
 * never got in) is re-sent with backoff, within the attempt budget. ManualClock + `runOnce()`; each test
 * has a partner of its own so breakers do not interact. Every partner: dispatch timeoutMs 1000,
 * maxAttempts 3, first check 1 s after a receipt; the simulator never calls back.
 */

let db: TestDatabase;
let svc: TestService;
const clock = new ManualClock(Date.now());

const PARTNERS = ['amb', 'amb404', 'transient', 'exhaust'] as const;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    clock,
    background: false,
    extraPartners: PARTNERS.map((id) => simPartner(id, { reconcile: { scheduleSeconds: [1] } })),
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const sweep = () => svc.runtime.reconciler.runOnce();
const simStats = (requestNo: string) => svc.simulator.stats().byRequestNo[requestNo];
const kindsSeen = (requestNo: string) =>
  svc.simulator
    .stats()
    .requestLog.filter((e) => e.requestNo === requestNo)
    .map((e) => e.kind);

describe('ambiguous dispatch (the partner got it, the answer timed out)', () => {
  test('the partner is asked first; it knows the request, so exactly ONE dispatch reaches it and the task settles by poll', async () => {
    const requestNo = uniqueRequestNo('amb');
    const created = await createTask(svc.api, {
      partner: 'amb',
      requestNo,
      payload: { simulate: { callback: { mode: 'never' }, dispatch: { delayMs: 3000 } } },
    });
    const afterFirst = await waitForFirstDispatch(svc.api, created.id);
    const t0 = clock.now().getTime();
    expect(afterFirst).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null });
    expect(afterFirst.error).toMatchObject({ class: 'timeout' });
    expect(ms(afterFirst.nextCheckAt)).toBe(t0 + 2000);
    expect((await getEvents(svc.api, created.id)).at(-1)).toMatchObject({ from: 'pending', to: 'pending', source: 'dispatch', detail: { outcome: 'ambiguous' } });

    clock.set(t0 + 1999);
    await sweep();
    expect(simStats(requestNo)).toMatchObject({ dispatches: 1, statusQueries: 0 });

    clock.set(t0 + 2000);
    await sweep();
    const settled = await getTask(svc.api, created.id);
    expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'poll', dispatchAttempts: 1, checkAttempts: 1, error: null });
    expect(simStats(requestNo)).toMatchObject({ dispatches: 1, statusQueries: 1 });
    expect(kindsSeen(requestNo)).toEqual(['dispatch', 'status']);

    // Nothing further is sent for a settled task, however much later the reconciler runs.
    clock.set(t0 + 3_600_000);
    await sweep();
    expect(simStats(requestNo)).toMatchObject({ dispatches: 1, statusQueries: 1 });
  });

  test('status 404 after an ambiguous dispatch means never received: exactly TWO dispatches, asked in between, then it settles', async () => {
    const requestNo = uniqueRequestNo('amb404');
    const created = await createTask(svc.api, {
      partner: 'amb404',
      requestNo,
      payload: { simulate: { callback: { mode: 'never' }, dispatch: [{ delayMs: 3000 }, {}], status: ['404', 'normal'] } },
    });
    const afterFirst = await waitForFirstDispatch(svc.api, created.id);
    const t0 = clock.now().getTime();
    expect(afterFirst).toMatchObject({ status: 'pending', dispatchAttempts: 1 });
    expect(ms(afterFirst.nextCheckAt)).toBe(t0 + 2000);

    clock.set(t0 + 2000);
    await sweep();
    const resent = await getTask(svc.api, created.id);
    expect(resent).toMatchObject({ status: 'dispatched', dispatchAttempts: 2, error: null });
    expect(ms(resent.nextCheckAt)).toBe(t0 + 3000);
    expect(kindsSeen(requestNo)).toEqual(['dispatch', 'status', 'dispatch']);

    clock.set(t0 + 3000);
    await sweep();
    const settled = await getTask(svc.api, created.id);
    expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'poll', dispatchAttempts: 2 });
    expect(simStats(requestNo)).toMatchObject({ dispatches: 2, statusQueries: 2 });
    expect(kindsSeen(requestNo)).toEqual(['dispatch', 'status', 'dispatch', 'status']);
    expect(trail(await getEvents(svc.api, created.id))).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
      ['pending', 'dispatched', 'dispatch'],
      ['dispatched', 'succeeded', 'poll'],
    ]);
  });
});

describe('transient dispatch failures (the request never got in)', () => {
  test('503, 503, then accepted: re-sent with growing backoff without asking first, then settles', async () => {
    const requestNo = uniqueRequestNo('transient');
    const created = await createTask(svc.api, {
      partner: 'transient',
      requestNo,
      payload: { simulate: { callback: { mode: 'never' }, dispatch: [{ status: 503 }, { status: 503 }, {}] } },
    });
    const first = await waitForFirstDispatch(svc.api, created.id);
    let now = clock.now().getTime();
    expect(first).toMatchObject({ status: 'pending', dispatchAttempts: 1 });
    expect(first.error).toMatchObject({ class: 'http_5xx', httpStatus: 503 });
    // Backoff 1 s ±20% after the first failure.
    let due = ms(first.nextCheckAt);
    expect(due - now).toBeGreaterThanOrEqual(800);
    expect(due - now).toBeLessThanOrEqual(1200);

    clock.set(due - 1);
    await sweep();
    expect(simStats(requestNo)?.dispatches).toBe(1);

    clock.set(due);
    now = due;
    await sweep();
    const second = await getTask(svc.api, created.id);
    expect(second).toMatchObject({ status: 'pending', dispatchAttempts: 2 });
    // Backoff 2 s ±20% after the second.
    due = ms(second.nextCheckAt);
    expect(due - now).toBeGreaterThanOrEqual(1600);
    expect(due - now).toBeLessThanOrEqual(2400);
    expect(simStats(requestNo)).toMatchObject({ dispatches: 2, statusQueries: 0 });

    clock.set(due - 1);
    await sweep();
    expect(simStats(requestNo)?.dispatches).toBe(2);

    clock.set(due);
    await sweep();
    const third = await getTask(svc.api, created.id);
    expect(third).toMatchObject({ status: 'dispatched', dispatchAttempts: 3, error: null });
    expect(ms(third.nextCheckAt)).toBe(due + 1000);

    clock.set(due + 1000);
    await sweep();
    expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'succeeded', settledBy: 'poll', dispatchAttempts: 3 });
    // A transient failure means the request never got in: re-sent directly, the partner asked only once it was received.
    expect(kindsSeen(requestNo)).toEqual(['dispatch', 'dispatch', 'dispatch', 'status']);
  });

  test('503 every time with maxAttempts 3: after exactly 3 dispatches the partner is asked, and its 404 rejects the task, the error recorded', async () => {
    const requestNo = uniqueRequestNo('exhaust');
    const created = await createTask(svc.api, {
      partner: 'exhaust',
      requestNo,
      payload: { simulate: { callback: { mode: 'never' }, dispatch: { status: 503 } } },
    });
    let task = await waitForFirstDispatch(svc.api, created.id);
    for (const attempts of [2, 3]) {
      expect(task.status).toBe('pending');
      clock.set(ms(task.nextCheckAt));
      await sweep();
      task = await getTask(svc.api, created.id);
      expect(task.dispatchAttempts).toBe(attempts);
    }
    // Attempts spent on 503s: not proof that the partner never got it (issue 7), so it is asked first.
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 3 });
    expect(simStats(requestNo)).toMatchObject({ dispatches: 3, statusQueries: 0 });
    clock.set(ms(task.nextCheckAt));
    await sweep();
    task = await getTask(svc.api, created.id);
    expect(task).toMatchObject({ status: 'rejected', dispatchAttempts: 3, nextCheckAt: null, dispatchedAt: null, settledBy: null });
    expect(task.error).toMatchObject({ class: 'http_5xx', httpStatus: 503 });
    expect(task.completedAt).not.toBeNull();
    const events = await getEvents(svc.api, created.id);
    expect(trail(events)).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
      ['pending', 'pending', 'dispatch'],
      ['pending', 'pending', 'dispatch'],
      ['pending', 'rejected', 'poll'],
    ]);
    expect(events.at(-2)!.detail).toMatchObject({ outcome: 'transient', httpStatus: 503, attempts: 3 });
    expect(events.at(-1)!.detail).toMatchObject({ outcome: 'not_found', attempts: 3 });

    // Final: later sweeps send nothing more.
    clock.advance(3_600_000);
    await sweep();
    expect(simStats(requestNo)).toMatchObject({ dispatches: 3, statusQueries: 1 });
  });

});
