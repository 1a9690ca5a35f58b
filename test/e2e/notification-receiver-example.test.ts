import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import axios from 'axios';
import { freePort } from '../../src/db/embedded-postgres';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_NOTIFY_SECRET, type TestService } from '../support/service';
import { uniqueRequestNo } from './helpers';
import { notificationsWhen } from './notification-helpers';

/** The one-file receiver in examples/ (what the README tells clients to start from) against the real service. */

let db: TestDatabase;
let svc: TestService;
let child: ChildProcess | undefined;
let out = '';

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ notifications: true, db, env: { NOTIFY_ALLOWED_HOSTS: '127.0.0.1' } });
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await svc?.stop();
  await db?.drop();
});

test('examples/notification-receiver.mjs verifies the service\'s notifications, refuses a forged one and de-duplicates', async () => {
  const port = await freePort();
  child = spawn(process.execPath, [path.resolve(__dirname, '../../examples/notification-receiver.mjs')], {
    env: { PATH: process.env.PATH ?? '', NOTIFY_SECRET: TEST_NOTIFY_SECRET, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  await eventually(async () => out.includes('listening'), 'the receiver to listen', 15_000);

  const created = await svc.api.post('/v1/tasks', { partner: 'sim', requestNo: uniqueRequestNo('ex'), payload: { simulate: {} }, notifyUrl: `http://127.0.0.1:${port}/hooks` });
  expect(created.status).toBe(201);
  const [n] = await notificationsWhen(svc.api, created.data.id, (items) => items[0]?.status === 'delivered', 'the example to accept the notification');
  expect(n).toMatchObject({ lastStatusCode: 204, attempts: 1 });
  const line = await eventually(async () => out.split('\n').find((l) => l.includes(created.data.id)), 'the receiver to log it');
  expect(JSON.parse(line)).toMatchObject({ webhookId: n!.id, type: 'task.succeeded', taskId: created.data.id, status: 'succeeded' });

  // The same notification again (redeliver): acknowledged as a duplicate.
  expect((await svc.api.post(`/v1/tasks/${created.data.id}/notifications/${n!.id}/redeliver`)).status).toBe(202);
  await eventually(async () => out.includes(`"duplicate":true,"webhookId":"${n!.id}"`), 'the duplicate to be recognised');

  // A forged one is refused.
  const forged = await axios.post(`http://127.0.0.1:${port}/hooks`, JSON.stringify({ type: 'task.succeeded', data: {} }), {
    headers: { 'content-type': 'application/json', 'webhook-id': 'forged', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': 'v1,AAAA' },
    validateStatus: () => true,
  });
  expect(forged.status).toBe(401);
});
