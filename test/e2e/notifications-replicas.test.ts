import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { postCallback, report, signCallback } from './callback-helpers';
import { createTask, uniqueRequestNo } from './helpers';
import { percentile, startReceiver, type TestReceiver } from './notification-helpers';
import { sql } from 'kysely';
import { NO_CALLBACK } from './helpers';

/**
 * Two replicas over one database: notifications are claimed like checks (SKIP LOCKED, leases), so each
 * is delivered exactly once with a healthy receiver; and a `waitSeconds` read on one replica wakes when the
 * task settles on the other, through the one LISTEN connection per process (no polling per waiter).
 */

let db: TestDatabase;
let a: TestService;
let b: TestService;
let receiver: TestReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await startReceiver();
  const env = { NOTIFY_ALLOWED_HOSTS: '127.0.0.1', NOTIFY_SCHEDULE_SECONDS: '0.5,0.5,0.5' };
  a = await startTestService({ notifications: true, db, env });
  b = await startTestService({ notifications: true, db, simulator: a.simulator, env });
});
afterAll(async () => {
  await b?.stop();
  await a?.stop();
  await receiver?.close();
  await db?.drop();
});

test('150 tasks created across two replicas: every one is notified exactly once', async () => {
  const N = 150;
  const tasks = await Promise.all(
    Array.from({ length: N }, (_, i) => {
      const requestNo = uniqueRequestNo('x1');
      return createTask(i % 2 === 0 ? a.api : b.api, { partner: 'sim', requestNo, payload: { simulate: {} }, notifyUrl: `${receiver.url}/once/${requestNo}` });
    }),
  );
  await eventually(
    async () => {
      const { rows } = await sql<{ n: number }>`select count(*)::int as n from notifications where status = 'delivered'`.execute(db.handle.db);
      return rows[0]!.n === N;
    },
    'all 150 notifications to be delivered',
    60_000,
    100,
  );
  // Anything still due would show up now.
  await Promise.all([a.runtime.deliveryWorker!.runOnce(), b.runtime.deliveryWorker!.runOnce()]);

  const perPath = new Map<string, number>();
  for (const x of receiver.arrivals.filter((r) => r.path.startsWith('/once/'))) perPath.set(x.path, (perPath.get(x.path) ?? 0) + 1);
  expect(perPath.size).toBe(N);
  expect([...perPath.values()].every((n) => n === 1)).toBe(true);
  const { rows } = await sql<{ attempts: number; n: number }>`select attempts, count(*)::int as n from notifications group by attempts`.execute(db.handle.db);
  expect(rows).toEqual([{ attempts: 1, n: N }]);
  // Both replicas took part in delivering.
  const delivered = (s: TestService) => s.runtime.metrics.notifications.get().then((m) => m.values.find((v) => v.labels.outcome === 'delivered')?.value ?? 0);
  const [da, dbb] = await Promise.all([delivered(a), delivered(b)]);
  expect(da + dbb).toBe(N);
  expect(tasks).toHaveLength(N);
});

test('cross-replica long-poll wake: a waitSeconds read on B answers right after the task settles on A', async () => {
  expect(a.runtime.wakeListener?.isLive).toBe(true);
  expect(b.runtime.wakeListener?.isLive).toBe(true);
  const latencies: number[] = [];
  for (let i = 0; i < 20; i++) {
    const requestNo = uniqueRequestNo('wake');
    const task = await createTask(a.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    await eventually(async () => (await a.api.get(`/v1/tasks/${task.id}`)).data.status === 'dispatched', 'the dispatch');
    const waiting = b.api.get(`/v1/tasks/${task.id}?waitSeconds=30`).then((res) => ({ res, at: performance.now() }));
    await eventually(async () => b.runtime.notifier.hasWatchers(task.id), 'the read to wait on B');
    const cb = await postCallback(a.url, 'sim', signCallback(report(requestNo, 'succeeded'), { secret: TEST_SECRET }));
    const committedAt = performance.now();
    expect(cb.data).toEqual({ outcome: 'applied' });
    const { res, at } = await waiting;
    expect(res.status).toBe(200);
    expect(res.data.status).toBe('succeeded');
    latencies.push(Math.max(0, at - committedAt));
  }
  const p50 = percentile(latencies, 50);
  const p90 = percentile(latencies, 90);
  // A latency figure, measured and printed; the contract's 100 ms / 250 ms is reported, only a bound that a
  // loaded machine cannot break is asserted (a waiter that polled or missed its wake would take 500 ms+ or 30 s).
  console.log(`cross-replica long-poll wake over 20 tasks: p50 ${p50.toFixed(1)} ms, p90 ${p90.toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms`);
  expect(p50).toBeLessThan(1000);
  expect(p90).toBeLessThan(3000);
});

test('with LONG_POLL_NOTIFY=false there is no LISTEN connection and a waiter falls back to re-reading', async () => {
  const c = await startTestService({ notifications: true, db, simulator: a.simulator, background: false, env: { LONG_POLL_NOTIFY: 'false' } });
  try {
    expect(c.runtime.wakeListener).toBeUndefined();
    const requestNo = uniqueRequestNo('nolisten');
    const task = await createTask(a.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    const waiting = c.api.get(`/v1/tasks/${task.id}?waitSeconds=30`);
    await eventually(async () => c.runtime.notifier.hasWatchers(task.id), 'the read to wait on C');
    expect((await postCallback(a.url, 'sim', signCallback(report(requestNo, 'succeeded'), { secret: TEST_SECRET }))).data).toEqual({ outcome: 'applied' });
    expect((await waiting).data.status).toBe('succeeded');
  } finally {
    await c.stop();
  }
});
