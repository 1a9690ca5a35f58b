import { sql } from 'kysely';
import { loadConfig } from '../../src/config/config';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, uniqueRequestNo } from './helpers';
import { startReceiver, type TestReceiver } from './notification-helpers';

/**
 * NOTIFY_CONCURRENCY=0 makes an API-only replica: it writes the outbox row with every final transition
 * but runs no delivery worker; a replica that runs one delivers what it wrote (claims are per row, not
 * per replica), redeliveries asked of the API-only replica included.
 */

let db: TestDatabase;
let apiOnly: TestService;
let deliverer: TestService;
let receiver: TestReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await startReceiver();
  const env = { NOTIFY_ALLOWED_HOSTS: '127.0.0.1', NOTIFY_SCHEDULE_SECONDS: '0.5,0.5,0.5' };
  apiOnly = await startTestService({ notifications: true, db, env: { ...env, NOTIFY_CONCURRENCY: '0' } });
  deliverer = await startTestService({ notifications: true, db, simulator: apiOnly.simulator, env });
});
afterAll(async () => {
  await deliverer?.stop();
  await apiOnly?.stop();
  await receiver?.close();
  await db?.drop();
});

const deliveredBy = async (s: TestService): Promise<number> =>
  (await s.runtime.metrics.notifications.get()).values.find((v) => v.labels.outcome === 'delivered')?.value ?? 0;

test('NOTIFY_CONCURRENCY accepts 0 (deliver nothing here) and refuses negatives', () => {
  const base = { DATABASE_URL: 'postgres://x@127.0.0.1/db', NOTIFY_SECRET: 'whsec_' + Buffer.from('0123456789abcdef0123456789').toString('base64') };
  expect(loadConfig({ ...base, NOTIFY_CONCURRENCY: '0' }).notifyConcurrency).toBe(0);
  expect(() => loadConfig({ ...base, NOTIFY_CONCURRENCY: '-1' })).toThrow(/NOTIFY_CONCURRENCY/);
});

test('tasks created on the API-only replica are notified once each, by the replica that delivers', async () => {
  expect(apiOnly.runtime.deliveryWorker).toBeUndefined();
  expect(deliverer.runtime.deliveryWorker).toBeDefined();
  const N = 30;
  const tasks = await Promise.all(
    Array.from({ length: N }, () => {
      const requestNo = uniqueRequestNo('api-only');
      return createTask(apiOnly.api, { partner: 'sim', requestNo, payload: { simulate: {} }, notifyUrl: `${receiver.url}/api-only/${requestNo}` });
    }),
  );
  await eventually(
    async () => {
      const { rows } = await sql<{ n: number }>`select count(*)::int as n from notifications where status = 'delivered'`.execute(db.handle.db);
      return rows[0]!.n === N;
    },
    `all ${N} notifications to be delivered`,
    60_000,
    100,
  );
  const paths = receiver.arrivals.filter((r) => r.path.startsWith('/api-only/')).map((r) => r.path);
  expect(new Set(paths).size).toBe(N);
  expect(paths).toHaveLength(N);
  expect(await deliveredBy(apiOnly)).toBe(0);
  expect(await deliveredBy(deliverer)).toBe(N);

  // A redelivery asked of the API-only replica is sent by the other one (its poll finds it due).
  const task = tasks[0]!;
  const { data: list } = await apiOnly.api.get(`/v1/tasks/${task.id}/notifications`);
  const nid = list.items[0].id as string;
  const before = receiver.arrivals.filter((r) => r.headers['webhook-id'] === nid).length;
  expect(before).toBe(1);
  expect((await apiOnly.api.post(`/v1/tasks/${task.id}/notifications/${nid}/redeliver`)).status).toBe(202);
  await eventually(async () => receiver.arrivals.filter((r) => r.headers['webhook-id'] === nid).length === 2, 'the redelivery', 30_000);
  expect(await deliveredBy(apiOnly)).toBe(0);
});
