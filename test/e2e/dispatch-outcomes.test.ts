import type { ApiTask } from '../../src/tasks/task-schemas';
import { freePort } from '../../src/db/embedded-postgres';
import { BREAKER_CONSECUTIVE_FAILURES } from '../../src/partners/partner-guard';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import {
  createTask,
  metricValue,
  quiesce,
  scrapeMetrics,
  uniqueRequestNo,
  UUID_RE,
  waitForFirstDispatch,
} from './helpers';

/**
 * What the first dispatch makes of a task, for every way a partner can answer (or not). The simulator is
 * scripted never to call back, so the state asserted is the dispatch's own. Partner `sim` has dispatch
 * timeoutMs 1000 and maxAttempts 3.
 */

interface ApiEvent {
  at: string;
  from: string | null;
  to: string;
  source: string;
  detail: Record<string, unknown> | null;
}

let db: TestDatabase;
let svc: TestService;

/**
 * Partners served by the simulator, one per failure scenario: a partner's circuit breaker opens after a few
 * consecutive transient or ambiguous failures on this replica, so scenarios must not share one.
 */
const FAILING = ['t408', 't429', 't425', 't500', 't502', 't503', 't503ra', 'hang', 'reset', 'metrics', 'breaker'] as const;
type FailingPartner = (typeof FAILING)[number];

beforeAll(async () => {
  db = await createTestDatabase();
  const closedPort = await freePort();
  svc = await startTestService({
    db,
    // Keep the reconciler out of the way: these tests assert the state right after the first dispatch.
    env: { RECONCILE_CRON: '0 0 1 1 *' },
    extraPartners: [
      ...FAILING.map((id) => ({
        id,
        baseUrl: '{simulator}',
        dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 3 },
        status: { path: '/requests/{requestNo}', timeoutMs: 1000 },
        callback: { secret: TEST_SECRET, verify: 'signature' },
      })),
      { id: 'closed', baseUrl: `http://127.0.0.1:${closedPort}`, dispatch: { timeoutMs: 1000, maxAttempts: 3 }, callback: { verify: 'poll' } },
      { id: 'closed-once', baseUrl: `http://127.0.0.1:${closedPort}`, dispatch: { timeoutMs: 1000, maxAttempts: 1 }, callback: { verify: 'poll' } },
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** Creates a `sim` task with the given dispatch directive(s) and no callback; returns it after its first dispatch. */
async function dispatchWith(simulate: Record<string, unknown>, partner: 'sim' | FailingPartner = 'sim'): Promise<{ task: ApiTask; events: ApiEvent[]; requestNo: string }> {
  const requestNo = uniqueRequestNo('out');
  const created = await createTask(svc.api, { partner, requestNo, payload: { simulate: { callback: { mode: 'never' }, ...simulate } } });
  const task = await waitForFirstDispatch(svc.api, created.id);
  const events = (await svc.api.get(`/v1/tasks/${created.id}/events`)).data.items as ApiEvent[];
  return { task, events, requestNo };
}

const ms = (iso: string | null) => Date.parse(iso ?? 'invalid');

describe('2xx: received', () => {
  test('processing in the body → dispatched, waiting for the outcome with a future check', async () => {
    const { task, events } = await dispatchWith({ dispatch: { status: 202, bodyStatus: 'processing' } });
    expect(task).toMatchObject({ status: 'dispatched', dispatchAttempts: 1, checkAttempts: 0, error: null, result: null, settledBy: null, completedAt: null });
    expect(task.dispatchedAt).not.toBeNull();
    expect(ms(task.dispatchedAt)).toBeGreaterThanOrEqual(ms(task.createdAt));
    expect(ms(task.nextCheckAt)).toBeGreaterThan(Date.now());
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'dispatched', 'dispatch'],
    ]);
    expect(events[1]!.detail).toMatchObject({ outcome: 'received', httpStatus: 202 });
    // The first check is scheduled by the partner's reconcile schedule (default first step 30 s).
    const delay = ms(task.nextCheckAt) - ms(events[1]!.at);
    expect(delay).toBeGreaterThanOrEqual(29_900);
    expect(delay).toBeLessThanOrEqual(30_100);
  });

  test.each([[200], [201], [204]])('HTTP %d without a status → dispatched', async (status) => {
    const { task } = await dispatchWith({ dispatch: { status, bodyStatus: 'none' } });
    expect(task).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
  });

  test('succeeded in the body → settled at once by the dispatch, with the result', async () => {
    const { task, events } = await dispatchWith({ dispatch: { status: 200, bodyStatus: 'succeeded' }, result: { grade: 'A', points: 97 } });
    expect(task).toMatchObject({
      status: 'succeeded',
      settledBy: 'dispatch',
      result: { grade: 'A', points: 97 },
      error: null,
      dispatchAttempts: 1,
      nextCheckAt: null,
    });
    expect(task.completedAt).not.toBeNull();
    expect(task.dispatchedAt).not.toBeNull();
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'succeeded', 'dispatch'],
    ]);
  });

  test('failed in the body → settled at once by the dispatch, with the error', async () => {
    const { task, events } = await dispatchWith({ dispatch: { status: 200, bodyStatus: 'failed' }, error: { code: 'E_UNREADABLE', message: 'scan too blurry' } });
    expect(task).toMatchObject({
      status: 'failed',
      settledBy: 'dispatch',
      error: { code: 'E_UNREADABLE', message: 'scan too blurry' },
      result: null,
      dispatchAttempts: 1,
      nextCheckAt: null,
    });
    expect(task.completedAt).not.toBeNull();
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'failed', 'dispatch'],
    ]);
  });
});

describe('4xx: refused for good', () => {
  test.each([[400], [404], [409], [422]])('HTTP %d → rejected with an http_4xx error', async (status) => {
    const { task, events } = await dispatchWith({ dispatch: { status } });
    expect(task).toMatchObject({ status: 'rejected', dispatchAttempts: 1, nextCheckAt: null, result: null, dispatchedAt: null });
    expect(task.error).toMatchObject({ class: 'http_4xx', httpStatus: status });
    expect(task.completedAt).not.toBeNull();
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'rejected', 'dispatch'],
    ]);
    expect(events[1]!.detail).toMatchObject({ outcome: 'refused', httpStatus: status });
  });
});

describe('transient: stays pending for a retry', () => {
  test.each([[408], [429]] as const)('HTTP %d with Retry-After: 7 → pending, http_4xx, next check 7 s later', async (status) => {
    const { task, events, requestNo } = await dispatchWith({ dispatch: { status, retryAfter: 7 } }, `t${status}`);
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null, completedAt: null, settledBy: null });
    expect(task.error).toMatchObject({ class: 'http_4xx', httpStatus: status });
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
    ]);
    const delay = ms(task.nextCheckAt) - ms(events[1]!.at);
    expect(delay).toBeGreaterThanOrEqual(6_900);
    expect(delay).toBeLessThanOrEqual(7_100);
    expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches).toBe(1);
  });

  test('HTTP 425 is transient too', async () => {
    const { task } = await dispatchWith({ dispatch: { status: 425 } }, 't425');
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1 });
    expect(task.error).toMatchObject({ class: 'http_4xx', httpStatus: 425 });
  });

  test.each([[500], [502], [503]] as const)('HTTP %d → pending, http_5xx, one attempt, a backed-off future check', async (status) => {
    const { task, events, requestNo } = await dispatchWith({ dispatch: { status } }, `t${status}`);
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null, completedAt: null, result: null });
    expect(task.error).toMatchObject({ class: 'http_5xx', httpStatus: status });
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
    ]);
    expect(events[1]!.detail).toMatchObject({ outcome: 'transient', httpStatus: status });
    // First retry ~1 s later (±20% jitter), after the moment the outcome was recorded.
    const delay = ms(task.nextCheckAt) - ms(events[1]!.at);
    expect(delay).toBeGreaterThanOrEqual(800);
    expect(delay).toBeLessThanOrEqual(1_200);
    expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches).toBe(1);
  });

  test('503 with Retry-After is honoured', async () => {
    const { task, events } = await dispatchWith({ dispatch: { status: 503, retryAfter: 9 } }, 't503ra');
    expect(task.status).toBe('pending');
    const delay = ms(task.nextCheckAt) - ms(events[1]!.at);
    expect(delay).toBeGreaterThanOrEqual(8_900);
    expect(delay).toBeLessThanOrEqual(9_100);
  });

  test('connection refused → pending, connect error (never reached the partner)', async () => {
    const created = await createTask(svc.api, { partner: 'closed', requestNo: uniqueRequestNo('refused'), payload: { a: 1 } });
    const task = await waitForFirstDispatch(svc.api, created.id);
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null, completedAt: null });
    expect(task.error).toMatchObject({ class: 'connect' });
    const events = (await svc.api.get(`/v1/tasks/${created.id}/events`)).data.items as ApiEvent[];
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
    ]);
    expect(events[1]!.detail).toMatchObject({ outcome: 'transient' });
    expect(ms(task.nextCheckAt)).toBeGreaterThan(ms(events[1]!.at));
  });

  test('connection refused with no attempts left → rejected (provably never received)', async () => {
    const created = await createTask(svc.api, { partner: 'closed-once', requestNo: uniqueRequestNo('exhausted'), payload: { a: 1 } });
    const task = await waitForFirstDispatch(svc.api, created.id);
    expect(task).toMatchObject({ status: 'rejected', dispatchAttempts: 1, nextCheckAt: null });
    expect(task.error).toMatchObject({ class: 'connect' });
    expect(task.completedAt).not.toBeNull();
  });
});

describe('ambiguous: maybe received, never blindly re-sent', () => {
  test('a partner hanging past the timeout → pending, timeout error, exactly one dispatch', async () => {
    const { task, events, requestNo } = await dispatchWith({ dispatch: { delayMs: 3000 } }, 'hang');
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null, completedAt: null });
    expect(task.error).toMatchObject({ class: 'timeout' });
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([
      [null, 'pending', 'api'],
      ['pending', 'pending', 'dispatch'],
    ]);
    expect(events[1]!.detail).toMatchObject({ outcome: 'ambiguous' });
    expect(ms(task.nextCheckAt)).toBeGreaterThan(ms(events[1]!.at));
    await quiesce(svc);
    expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches).toBe(1);
  });

  test('a connection reset after receipt → pending, ambiguous (unknown), exactly one dispatch', async () => {
    const { task, events, requestNo } = await dispatchWith({ dispatch: { reset: true } }, 'reset');
    expect(task).toMatchObject({ status: 'pending', dispatchAttempts: 1, dispatchedAt: null, completedAt: null });
    expect(task.error).toMatchObject({ class: 'unknown' });
    expect(events[1]).toMatchObject({ from: 'pending', to: 'pending', source: 'dispatch' });
    expect(events[1]!.detail).toMatchObject({ outcome: 'ambiguous' });
    expect(ms(task.nextCheckAt)).toBeGreaterThan(ms(events[1]!.at));
    await quiesce(svc);
    expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches).toBe(1);
  });
});

describe('metrics follow the outcomes', () => {
  test('created, transitions, dispatch durations and partner errors are counted, with no id in any label', async () => {
    await quiesce(svc);
    const before = (await scrapeMetrics(svc.api)).samples;

    const ok = await dispatchWith({ dispatch: { status: 202 } }, 'metrics');
    const broken = await dispatchWith({ dispatch: { status: 500 } }, 'metrics');
    const refused = await dispatchWith({ dispatch: { status: 400 } }, 'metrics');
    const timedOut = await dispatchWith({ dispatch: { delayMs: 3000 } }, 'metrics');
    const closed = await createTask(svc.api, { partner: 'closed', payload: { a: 1 } });
    await waitForFirstDispatch(svc.api, closed.id);
    await quiesce(svc);

    const { text, samples: after } = await scrapeMetrics(svc.api);
    const delta = (name: string, labels: Record<string, string>) => metricValue(after, name, labels) - metricValue(before, name, labels);
    const P = 'callback_reconciler_';
    const m = { partner: 'metrics' };

    expect(delta(`${P}tasks_created_total`, m)).toBe(4);
    expect(delta(`${P}tasks_created_total`, { partner: 'closed' })).toBe(1);
    expect(delta(`${P}task_transitions_total`, { ...m, from: 'pending', to: 'dispatched', source: 'dispatch' })).toBe(1);
    expect(delta(`${P}task_transitions_total`, { ...m, from: 'pending', to: 'rejected', source: 'dispatch' })).toBe(1);
    expect(delta(`${P}dispatch_duration_seconds_count`, { ...m, outcome: 'received' })).toBe(1);
    expect(delta(`${P}dispatch_duration_seconds_bucket`, { ...m, outcome: 'received', le: '+Inf' })).toBe(1);
    expect(delta(`${P}dispatch_duration_seconds_count`, { ...m, outcome: 'transient' })).toBe(1);
    expect(delta(`${P}dispatch_duration_seconds_count`, { ...m, outcome: 'refused' })).toBe(1);
    expect(delta(`${P}dispatch_duration_seconds_count`, { ...m, outcome: 'ambiguous' })).toBe(1);
    // The hung dispatch took about the 1 s timeout: it is not in the buckets below 1 s.
    expect(delta(`${P}dispatch_duration_seconds_bucket`, { ...m, outcome: 'ambiguous', le: '0.5' })).toBe(0);
    expect(delta(`${P}dispatch_duration_seconds_sum`, { ...m, outcome: 'ambiguous' })).toBeGreaterThanOrEqual(0.9);
    expect(delta(`${P}partner_errors_total`, { ...m, operation: 'dispatch', class: 'http_5xx' })).toBe(1);
    expect(delta(`${P}partner_errors_total`, { ...m, operation: 'dispatch', class: 'http_4xx' })).toBe(1);
    expect(delta(`${P}partner_errors_total`, { ...m, operation: 'dispatch', class: 'timeout' })).toBe(1);
    expect(delta(`${P}partner_errors_total`, { partner: 'closed', operation: 'dispatch', class: 'connect' })).toBe(1);

    // No label value carries a task id or a request number.
    const ids = [ok, broken, refused, timedOut].flatMap((o) => [o.task.id, o.requestNo]).concat(closed.id, closed.requestNo);
    for (const id of ids) expect(text).not.toContain(id);
    for (const s of after.filter((x) => x.name.startsWith(P))) {
      for (const v of Object.values(s.labels)) expect(v).not.toMatch(UUID_RE);
    }
  });
});

describe('a partner failing again and again is protected', () => {
  test('after repeated transient failures a new task is not sent at all: no attempt burnt, still pending, due later', async () => {
    // Fail until the breaker opens (it opens after a handful of consecutive transient failures).
    const failures: string[] = [];
    let deferred: { id: string; requestNo: string } | undefined;
    for (let i = 0; i < 10 && !deferred; i += 1) {
      const requestNo = uniqueRequestNo('brk');
      const created = await createTask(svc.api, { partner: 'breaker', requestNo, payload: { simulate: { dispatch: { status: 503 }, callback: { mode: 'never' } } } });
      // Either the dispatch is recorded (an attempt), or it is deferred (the claim released, no attempt).
      const t = await eventually(
        async () => {
          const r = (await svc.api.get(`/v1/tasks/${created.id}`)).data as ApiTask;
          return r.dispatchAttempts >= 1 || Date.parse(r.nextCheckAt ?? '0') < Date.parse(created.nextCheckAt ?? '0') ? r : undefined;
        },
        'the dispatch to be recorded or deferred',
      );
      if (t.dispatchAttempts === 0) deferred = { id: created.id, requestNo };
      else failures.push(requestNo);
    }
    expect(deferred).toBeDefined();
    expect(failures).toHaveLength(BREAKER_CONSECUTIVE_FAILURES);
    await quiesce(svc);
    const t = (await svc.api.get(`/v1/tasks/${deferred!.id}`)).data as ApiTask;
    expect(t).toMatchObject({ status: 'pending', dispatchAttempts: 0, error: null });
    expect(Date.parse(t.nextCheckAt!)).toBeGreaterThan(Date.now());
    // Nothing reached the partner for it.
    expect(svc.simulator.stats().byRequestNo[deferred!.requestNo]).toBeUndefined();
    // Every failure before it reached the partner exactly once.
    for (const n of failures) expect(svc.simulator.stats().byRequestNo[n]?.dispatches).toBe(1);
    // Only the creation event: a deferral is not a status change.
    const events = (await svc.api.get(`/v1/tasks/${deferred!.id}/events`)).data.items as ApiEvent[];
    expect(events.map((e) => [e.from, e.to, e.source])).toEqual([[null, 'pending', 'api']]);
  });
});
