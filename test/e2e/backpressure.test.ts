import type { PoolClient } from 'pg';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { newRequestNo, postCallback, report, signCallback, NEVER_CALLS_BACK } from './callback-helpers';
import { countRows, expectProblem } from './helpers';

/**
 * Back-pressure: when the connection pool or a group-commit batcher is saturated, creates and callbacks
 * are answered 503 with Retry-After after a bounded wait (never queued without limit, never a 500, no
 * database text), nothing of them is stored, and the queue depth shows in /metrics. Once the pressure is
 * gone, requests go through again.
 */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  // Pool of 3: each batcher may hold one connection at a time. Bounds long enough for a loaded machine to see the queue.
  svc = await startTestService({
    db,
    background: false,
    env: { DB_POOL_SIZE: '3', DB_CONNECT_TIMEOUT_MS: '2500', BATCH_MAX_WAIT_MS: '2000', CALLBACK_LOOKUP_TIMEOUT_MS: '0' },
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** Takes every connection of the service's pool, so nothing it sends can reach the database. */
async function holdPool(): Promise<PoolClient[]> {
  const pool = svc.runtime.database.pool;
  return Promise.all(Array.from({ length: 3 }, () => pool.connect()));
}

test('with the pool exhausted, creates and callbacks get 503 + Retry-After, store nothing, and go through once it frees', async () => {
  const before = await countRows(db);
  const held = await holdPool();
  let answers;
  try {
    const creates = Array.from({ length: 4 }, () => svc.api.post('/v1/tasks', { partner: 'sim', requestNo: newRequestNo('bp'), payload: NEVER_CALLS_BACK }));
    const callback = postCallback(svc.url, 'sim', signCallback(report(newRequestNo('bp-cb'), 'succeeded', { result: {} }), { secret: TEST_SECRET }));
    answers = await Promise.all([...creates, callback]);
  } finally {
    for (const c of held) c.release();
  }
  for (const res of answers) {
    const body = expectProblem(res, 503);
    expect(res.headers['retry-after']).toBe('1');
    expect(JSON.stringify(body)).not.toMatch(/timeout exceeded|pool|select|insert/i);
  }
  expect(await countRows(db)).toEqual(before);
  const { rows } = await db.handle.pool.query<{ n: number }>('select count(*)::int as n from callback_inbox');
  expect(rows[0]!.n).toBe(0);

  const metrics = (await svc.api.get('/metrics')).data as string;
  expect(metrics).toMatch(/callback_reconciler_batch_refused_total\{batcher="create"\} [1-9]/);
  expect(metrics).toMatch(/callback_reconciler_batch_refused_total\{batcher="callback"\} 1/);
  expect(metrics).toMatch(/callback_reconciler_batch_queue_depth\{batcher="create"\} 0/);

  // The pressure is gone: the same kind of request goes through.
  const ok = await svc.api.post('/v1/tasks', { partner: 'sim', requestNo: newRequestNo('bp-ok'), payload: NEVER_CALLS_BACK });
  expect(ok.status).toBe(201);
});

test('while requests wait for a batch, the queue depth metric shows them', async () => {
  const held = await holdPool();
  try {
    const post = () => svc.api.post('/v1/tasks', { partner: 'sim', requestNo: newRequestNo('bp-depth'), payload: NEVER_CALLS_BACK });
    // The first create's batch takes the create slot and waits for a connection...
    const first = post();
    await eventually(async () => svc.runtime.database.pool.waitingCount > 0, 'the first batch to wait for a connection');
    // ...so the next ones wait in the batcher's queue.
    const creates = [first, ...Array.from({ length: 4 }, post)];
    const seen = await eventually(async () => {
      const depth = svc.runtime.metrics.registry.getSingleMetric('callback_reconciler_batch_queue_depth');
      const value = (await depth?.get())?.values.find((v) => v.labels['batcher'] === 'create')?.value ?? 0;
      return value > 0 ? value : undefined;
    }, 'queued creates to show in the depth gauge');
    expect(seen).toBeGreaterThan(0);
    const answers = await Promise.all(creates);
    expect(answers.map((r) => r.status)).toEqual(answers.map(() => 503));
  } finally {
    for (const c of held) c.release();
  }
});
