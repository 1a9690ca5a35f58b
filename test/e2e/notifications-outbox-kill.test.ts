import { sql } from 'kysely';
import { freePort } from '../../src/db/embedded-postgres';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_NOTIFY_SECRET, TEST_SECRET, writePartnersFile } from '../support/service';
import { uniqueRequestNo } from './helpers';
import { listNotifications, startReceiver, verifyBySpec, type TestReceiver } from './notification-helpers';
import { simPartner, startServiceProcess, type ServiceProcess } from './reconciler-helpers';

/**
 * The outbox survives SIGKILL: a task settles while the client's receiver is down, the service process is
 * killed (no drain), a new one starts on the same database, the receiver comes back, and the
 * notification arrives, with the webhook-id it had from the start.
 */

let db: TestDatabase;
let simulator: Simulator;
let receiver: TestReceiver | undefined;
const procs: ServiceProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET], defaultCallbackDelayMs: 100 });
});
afterAll(async () => {
  for (const p of procs) await p.kill();
  await receiver?.close();
  await simulator?.close();
  await db?.drop();
});

async function serviceProcess(): Promise<ServiceProcess> {
  const p = await startServiceProcess({
    DATABASE_URL: db.url,
    PARTNERS_FILE: writePartnersFile([simPartner('sim', {}, simulator.url)]),
    PORT: String(await freePort()),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    API_KEYS: TEST_API_KEY,
    NOTIFY_SECRET: TEST_NOTIFY_SECRET,
    NOTIFY_ALLOWED_HOSTS: '127.0.0.1',
    // Keeps retrying for a minute (40 steps of 1.5 s), so the receiver's absence does not use up the schedule.
    NOTIFY_SCHEDULE_SECONDS: Array.from({ length: 40 }, () => '1.5').join(','),
  });
  procs.push(p);
  return p;
}

test('a notification written while the receiver is down is delivered by the next process after a SIGKILL', async () => {
  const receiverPort = await freePort();
  const first = await serviceProcess();
  const requestNo = uniqueRequestNo('kill');
  const created = await first.api.post('/v1/tasks', { partner: 'sim', requestNo, payload: { simulate: {} }, notifyUrl: `http://127.0.0.1:${receiverPort}/kill` });
  expect(created.status).toBe(201);
  const id = created.data.id as string;

  // Settled, and its notification tried at least once against the closed port.
  const [pending] = await eventually(async () => {
    const items = await listNotifications(first.api, id);
    return items.length === 1 && items[0]!.attempts >= 1 ? items : undefined;
  }, 'a failed first attempt', 20_000);
  expect(pending).toMatchObject({ type: 'task.succeeded', status: 'pending', lastStatusCode: null });
  expect(pending!.lastError).toMatch(/ECONNREFUSED/);

  await first.kill();
  expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });
  const { rows } = await sql<{ status: string }>`select status from notifications where id = ${pending!.id}::uuid`.execute(db.handle.db);
  expect(rows).toEqual([{ status: 'pending' }]);

  const second = await serviceProcess();
  receiver = await startReceiver(receiverPort);
  const arrival = await eventually(async () => receiver!.byPath('/kill')[0], 'the notification to arrive after the restart', 30_000);
  expect(arrival.headers['webhook-id']).toBe(pending!.id);
  expect(verifyBySpec(TEST_NOTIFY_SECRET, arrival.headers, arrival.body)).toBe(true);
  expect(JSON.parse(arrival.body)).toMatchObject({ type: 'task.succeeded', data: { id, status: 'succeeded' } });
  const [done] = await eventually(async () => {
    const items = await listNotifications(second.api, id);
    return items[0]?.status === 'delivered' ? items : undefined;
  }, 'the list to say delivered');
  expect(done!.attempts).toBeGreaterThanOrEqual(2);
  expect(receiver.byPath('/kill')).toHaveLength(1);
});
