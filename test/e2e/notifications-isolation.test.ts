import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { HOST_BREAKER_FAILURES } from '../../src/notifications/delivery-worker';
import { createTask, uniqueRequestNo } from './helpers';
import { notificationsWhen, startReceiver, type TestReceiver } from './notification-helpers';

/**
 * One receiver cannot hold up the others: attempts per host are bounded (NOTIFY_HOST_CONCURRENCY), and a
 * host that keeps failing is left out of claims by its breaker while other hosts are served. Hosts here
 * are 127.0.0.1 on different ports (the host key includes the port).
 */

let db: TestDatabase;
let svc: TestService;
let slow: TestReceiver;
let fast: TestReceiver;
let broken: TestReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  [slow, fast, broken] = await Promise.all([startReceiver(), startReceiver(), startReceiver()]);
  svc = await startTestService({ notifications: true,
    db,
    env: { NOTIFY_ALLOWED_HOSTS: '127.0.0.1', NOTIFY_HOST_CONCURRENCY: '2', NOTIFY_TIMEOUT_MS: '10000', NOTIFY_SCHEDULE_SECONDS: Array.from({ length: 30 }, () => '0.1').join(',') },
  });
});
afterAll(async () => {
  await svc?.stop();
  await Promise.all([slow?.close(), fast?.close(), broken?.close()]);
  await db?.drop();
});

const notifyTask = (url: string) => createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('iso'), payload: { simulate: {} }, notifyUrl: url });

test('a slow receiver gets at most NOTIFY_HOST_CONCURRENCY attempts at once, and a fast one is served meanwhile', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let answered = 0;
  // Every slow answer is held until the fast receiver has been served.
  slow.on('/slow', () => ({ status: 200, until: gate.then(() => void answered++) }));
  const slowTasks = await Promise.all(Array.from({ length: 6 }, () => notifyTask(`${slow.url}/slow`)));
  await eventually(async () => slow.arrivals.length >= 2, 'the slow receiver to be busy');
  const fastTask = await notifyTask(`${fast.url}/fast`);
  await notificationsWhen(svc.api, fastTask.id, (n) => n[0]?.status === 'delivered', 'the fast receiver to be served while the slow one hangs');
  // Two attempts hang at the slow host; the other four wait for a slot rather than piling on.
  expect(slow.arrivals).toHaveLength(2);
  expect(answered).toBe(0);
  release();
  for (const t of slowTasks) await notificationsWhen(svc.api, t.id, (n) => n[0]?.status === 'delivered', 'the slow ones to be delivered in the end');
  expect(slow.arrivals).toHaveLength(6);
});

test(`a host failing ${HOST_BREAKER_FAILURES} times in a row is left out of claims by its breaker; other hosts go on`, async () => {
  broken.on('/down', () => ({ status: 500 }));
  const down = await notifyTask(`${broken.url}/down`);
  await eventually(async () => broken.arrivals.length >= HOST_BREAKER_FAILURES, 'the breaker to trip');
  // Due again every 0.1 s, but its host's breaker is open: a notification to another host goes through…
  const ok = await notifyTask(`${fast.url}/after`);
  await notificationsWhen(svc.api, ok.id, (n) => n[0]?.status === 'delivered', 'another host to be served');
  await svc.runtime.deliveryWorker!.runOnce();
  // …while the broken host saw nothing more, though its notification is pending and due.
  expect(broken.arrivals).toHaveLength(HOST_BREAKER_FAILURES);
  const [n] = await notificationsWhen(svc.api, down.id, () => true, 'the list');
  expect(n).toMatchObject({ status: 'pending', attempts: HOST_BREAKER_FAILURES, lastStatusCode: 500 });
});
