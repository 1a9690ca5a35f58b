import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, type TestService } from '../support/service';
import { metricValue, scrapeMetrics } from './helpers';

/**
 * The pool gauges the soak suite samples: busy/idle connections and queries waiting for one. With a
 * pool of one connection held by the test, a query issued meanwhile shows up as one waiter.
 */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db, background: false, env: { DB_POOL_SIZE: '1', DB_CONNECT_TIMEOUT_MS: '60000' } });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('db_pool_connections and db_pool_waiting report the pool as it is at scrape time', async () => {
  const pool = svc.runtime.database.pool;
  const held = await pool.connect();
  let waiter: Promise<unknown> | undefined;
  try {
    const busy = (await scrapeMetrics(svc.api)).samples;
    expect(metricValue(busy, 'callback_reconciler_db_pool_connections', { state: 'busy' })).toBe(1);
    expect(metricValue(busy, 'callback_reconciler_db_pool_connections', { state: 'idle' })).toBe(0);
    expect(metricValue(busy, 'callback_reconciler_db_pool_waiting', {})).toBe(0);

    waiter = pool.query('select 1');
    const waiting = (await scrapeMetrics(svc.api)).samples;
    expect(metricValue(waiting, 'callback_reconciler_db_pool_waiting', {})).toBe(1);
  } finally {
    held.release();
    await waiter;
  }
  const after = (await scrapeMetrics(svc.api)).samples;
  expect(metricValue(after, 'callback_reconciler_db_pool_waiting', {})).toBe(0);
  expect(metricValue(after, 'callback_reconciler_db_pool_connections', { state: 'idle' })).toBe(1);
});
