import { Webhook } from 'standardwebhooks';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_NOTIFY_SECRET, type TestService } from '../support/service';
import { countRows, createTask, errorFields, expectProblem, expectTaskShape, ISO_UTC_RE, NO_CALLBACK, scrapeMetrics, metricValue, uniqueRequestNo, UUID_RE } from './helpers';
import { listNotifications, notificationsWhen, startReceiver, verifyBySpec, type TestReceiver } from './notification-helpers';

/**
 * Outcome notifications end to end: a real service, the simulator as partner, and a receiver on
 * 127.0.0.1 (allowed through NOTIFY_ALLOWED_HOSTS). Retries run on a short schedule: 0.2 s, then 1.5 s
 * (so a capped Retry-After can be told apart), then 0.2 s.
 */

let db: TestDatabase;
let svc: TestService;
let receiver: TestReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await startReceiver();
  svc = await startTestService({ notifications: true,
    db,
    env: { NOTIFY_ALLOWED_HOSTS: '127.0.0.1', NOTIFY_SCHEDULE_SECONDS: '0.2,1.5,0.2', NOTIFY_TIMEOUT_MS: '2000' },
  });
});
afterAll(async () => {
  await svc?.stop();
  await receiver?.close();
  await db?.drop();
});

/** A task whose outcome is sent to `path` on the receiver; the simulator calls back `outcome` ~100 ms after dispatch. */
async function settlingTask(path: string, outcome: 'succeeded' | 'failed' = 'succeeded') {
  return createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('n'), payload: { simulate: { outcome } }, notifyUrl: `${receiver.url}${path}` });
}

test('a settled task is notified once, signed so that standardwebhooks and a by-the-spec check both verify it, in the contract shape', async () => {
  const task = await settlingTask('/ok');
  const [arrival] = await eventually(async () => (receiver.byPath('/ok').length > 0 ? receiver.byPath('/ok') : undefined), 'the notification to arrive');
  const { headers, body } = arrival!;

  expect(String(headers['content-type'])).toBe('application/json');
  const verified = new Webhook(TEST_NOTIFY_SECRET).verify(body, {
    'webhook-id': String(headers['webhook-id']),
    'webhook-timestamp': String(headers['webhook-timestamp']),
    'webhook-signature': String(headers['webhook-signature']),
  }) as Record<string, unknown>;
  expect(verifyBySpec(TEST_NOTIFY_SECRET, headers, body)).toBe(true);
  // A wrong secret does not verify: the check is real.
  expect(() => new Webhook('whsec_' + Buffer.from('some-other-secret-123456').toString('base64')).verify(body, headers as Record<string, string>)).toThrow();
  expect(Math.abs(Number(headers['webhook-timestamp']) - Date.now() / 1000)).toBeLessThan(60);

  expect(Object.keys(verified).sort()).toEqual(['data', 'timestamp', 'type']);
  expect(verified.type).toBe('task.succeeded');
  expect(verified.timestamp).toMatch(ISO_UTC_RE);
  expectTaskShape(verified.data);
  const data = verified.data;
  expect(data).toMatchObject({ id: task.id, status: 'succeeded', settledBy: 'callback', notifyUrl: `${receiver.url}/ok` });
  expect(verified.timestamp).toBe(data.completedAt);
  // The data is the Task as the API shows it.
  expect((await svc.api.get(`/v1/tasks/${task.id}`)).data).toEqual(data);

  const items = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the list to say delivered');
  expect(items).toEqual([
    { id: headers['webhook-id'], type: 'task.succeeded', status: 'delivered', attempts: 1, lastStatusCode: 204, lastError: null, nextAttemptAt: null, deliveredAt: expect.stringMatching(ISO_UTC_RE) },
  ]);
  expect(items[0]!.id).toMatch(UUID_RE);
  expect(receiver.byPath('/ok')).toHaveLength(1);
});

test('500 twice then 2xx: three attempts with one webhook-id; the list says delivered, attempts 3', async () => {
  receiver.on('/flaky', (n) => ({ status: n <= 2 ? 500 : 200 }));
  const task = await settlingTask('/flaky', 'failed');
  const items = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the third attempt to be delivered');
  expect(items).toHaveLength(1);
  expect(items[0]).toMatchObject({ type: 'task.failed', status: 'delivered', attempts: 3, lastStatusCode: 200, lastError: null });
  const seen = receiver.byPath('/flaky');
  expect(seen).toHaveLength(3);
  expect(new Set(seen.map((a) => a.headers['webhook-id']))).toEqual(new Set([items[0]!.id]));
  // Every attempt carries the same body, each freshly signed.
  expect(new Set(seen.map((a) => a.body)).size).toBe(1);
  for (const a of seen) expect(verifyBySpec(TEST_NOTIFY_SECRET, a.headers, a.body)).toBe(true);
});

test('410 Gone stops at once: one attempt, status gone, nothing further due', async () => {
  receiver.on('/gone', () => ({ status: 410 }));
  const task = await settlingTask('/gone');
  const items = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'gone', 'the notification to be gone');
  expect(items[0]).toMatchObject({ status: 'gone', attempts: 1, lastStatusCode: 410, nextAttemptAt: null, deliveredAt: null });
  await svc.runtime.deliveryWorker!.runOnce();
  expect(receiver.byPath('/gone')).toHaveLength(1);
});

test('a receiver slower than NOTIFY_TIMEOUT_MS is retried, and the next, prompt attempt is delivered', async () => {
  receiver.on('/slow', (n) => ({ status: 200, delayMs: n === 1 ? 5000 : 0 }));
  const task = await settlingTask('/slow');
  const items = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the retry to be delivered');
  expect(items[0]).toMatchObject({ status: 'delivered', attempts: 2, lastStatusCode: 200 });
  const seen = receiver.byPath('/slow');
  expect(seen).toHaveLength(2);
  expect(seen[0]!.headers['webhook-id']).toBe(seen[1]!.headers['webhook-id']);
});

test('the timed-out attempt is recorded as a timeout while the retry waits', async () => {
  receiver.on('/always-slow', () => ({ status: 200, delayMs: 5000 }));
  const task = await settlingTask('/always-slow');
  const items = await notificationsWhen(svc.api, task.id, (n) => (n[0]?.attempts ?? 0) >= 1, 'the first attempt to time out');
  expect(items[0]!.lastError).toMatch(/timeout/);
  expect(items[0]!.lastStatusCode).toBeNull();
});

test('503 with Retry-After is honoured: the next attempt waits what the receiver asked, not the 0.2 s step', async () => {
  receiver.on('/busy', (n) => (n === 1 ? { status: 503, headers: { 'retry-after': '1' } } : { status: 200 }));
  const task = await settlingTask('/busy');
  await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the notification to be delivered after the wait');
  const [first, second] = receiver.byPath('/busy');
  expect(second!.at - first!.at).toBeGreaterThanOrEqual(900);
});

test('a Retry-After beyond the next step is capped at it (1.5 s here), not an hour', async () => {
  receiver.on('/throttled', () => ({ status: 429, headers: { 'retry-after': '3600' } }));
  const task = await settlingTask('/throttled');
  const items = await notificationsWhen(svc.api, task.id, (n) => (n[0]?.attempts ?? 0) >= 1, 'the first attempt to be throttled');
  const arrivedAt = receiver.byPath('/throttled')[0]!.at;
  const waitMs = Date.parse(items[0]!.nextAttemptAt!) - arrivedAt;
  expect(items[0]).toMatchObject({ status: 'pending', lastStatusCode: 429 });
  expect(waitMs).toBeGreaterThan(1000);
  expect(waitMs).toBeLessThan(1500 + 2000);
});

test('redirects are not followed: a 302 is a failed attempt, its Location is never asked', async () => {
  receiver.on('/moved', (n) => (n === 1 ? { status: 302, headers: { location: `${receiver.url}/elsewhere` } } : { status: 200 }));
  const task = await settlingTask('/moved');
  const items = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the notification to be delivered');
  expect(items[0]!.attempts).toBe(2);
  expect(receiver.byPath('/elsewhere')).toHaveLength(0);
});

test('redeliver sends again now with the same webhook-id, also once gone; unknown ids are 404', async () => {
  receiver.on('/again', (n) => ({ status: n === 1 ? 410 : 200 }));
  const task = await settlingTask('/again');
  const [gone] = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'gone', 'the notification to be gone');
  const res = await svc.api.post(`/v1/tasks/${task.id}/notifications/${gone!.id}/redeliver`);
  expect(res.status).toBe(202);
  expect(res.data).toMatchObject({ id: gone!.id, status: 'pending' });
  const [delivered] = await notificationsWhen(svc.api, task.id, (n) => n[0]?.status === 'delivered', 'the redelivery to be delivered');
  expect(delivered).toMatchObject({ id: gone!.id, attempts: 2, lastStatusCode: 200 });
  expect(receiver.byPath('/again').map((a) => a.headers['webhook-id'])).toEqual([gone!.id, gone!.id]);

  // Redelivering a delivered one sends it once more.
  expect((await svc.api.post(`/v1/tasks/${task.id}/notifications/${gone!.id}/redeliver`)).status).toBe(202);
  await eventually(async () => receiver.byPath('/again').length === 3, 'the third send');

  expectProblem(await svc.api.post(`/v1/tasks/${task.id}/notifications/00000000-0000-4000-8000-000000000000/redeliver`), 404);
  expectProblem(await svc.api.post(`/v1/tasks/${task.id}/notifications/not-a-uuid/redeliver`), 404);
  expectProblem(await svc.api.post(`/v1/tasks/00000000-0000-4000-8000-000000000000/notifications/${gone!.id}/redeliver`), 404);
  expectProblem(await svc.api.get(`/v1/tasks/00000000-0000-4000-8000-000000000000/notifications`), 404);
  expect((await svc.api.get(`/v1/tasks/${task.id}/notifications`, { headers: { authorization: 'Bearer wrong-key-0123456789' } })).status).toBe(401);
});

test('an expired task that later settles is notified twice: task.expired, then task.succeeded', async () => {
  const task = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('exp'), payload: { simulate: NO_CALLBACK }, notifyUrl: `${receiver.url}/expiry` });
  await eventually(async () => (await svc.api.get(`/v1/tasks/${task.id}`)).data.status === 'dispatched', 'the dispatch');
  const now = () => svc.runtime.clock.now();
  expect((await svc.runtime.transitions.apply('sim', { taskId: task.id, to: 'expired', source: 'expiry', now: now(), changes: { nextCheckAt: null } })).outcome).toBe('applied');
  expect((await svc.runtime.transitions.apply('sim', { taskId: task.id, to: 'succeeded', source: 'poll', now: now(), reported: 'succeeded', changes: { settledBy: 'poll', nextCheckAt: null } })).outcome).toBe('applied');
  const items = await notificationsWhen(svc.api, task.id, (n) => n.length === 2 && n.every((x) => x.status === 'delivered'), 'both notifications to be delivered');
  expect(items.map((n) => n.type)).toEqual(['task.expired', 'task.succeeded']);
  const bodies = receiver.byPath('/expiry').map((a) => JSON.parse(a.body) as { type: string; data: { status: string } });
  expect(bodies.map((b) => [b.type, b.data.status]).sort()).toEqual([
    ['task.expired', 'expired'],
    ['task.succeeded', 'succeeded'],
  ]);
});

test('metrics: notifications_total by outcome, the delivery histogram, the pending gauge', async () => {
  await svc.runtime.housekeeping.refreshGauges();
  const { samples } = await scrapeMetrics(svc.api);
  const total = (outcome: string) => metricValue(samples, 'callback_reconciler_notifications_total', { outcome });
  expect(total('delivered')).toBeGreaterThanOrEqual(5);
  expect(total('retry')).toBeGreaterThanOrEqual(3);
  expect(total('gone')).toBeGreaterThanOrEqual(2);
  expect(metricValue(samples, 'callback_reconciler_notification_delivery_seconds_count', {})).toBeGreaterThanOrEqual(total('delivered') + total('retry') + total('gone'));
  // The throttled and always-slow notifications are still pending.
  expect(metricValue(samples, 'callback_reconciler_notifications_pending', {})).toBeGreaterThanOrEqual(1);
  for (const s of samples.filter((x) => x.name.startsWith('callback_reconciler_notification'))) {
    expect(Object.keys(s.labels).every((k) => ['outcome', 'le'].includes(k))).toBe(true);
  }
});

describe('NOTIFY_SECRET unset', () => {
  let off: TestService;
  beforeAll(async () => {
    off = await startTestService({ notifications: true, db, simulator: svc.simulator, env: { NOTIFY_SECRET: '', NOTIFY_ALLOWED_HOSTS: '127.0.0.1' }, background: false });
  });
  afterAll(async () => off?.stop());

  test('a notifyUrl is refused with 422 naming the field, and nothing is stored', async () => {
    const before = await countRows(db);
    const res = await off.api.post('/v1/tasks', { partner: 'sim', requestNo: uniqueRequestNo('off'), payload: {}, notifyUrl: `${receiver.url}/off` });
    expect(errorFields(expectProblem(res, 422))).toEqual(['notifyUrl']);
    expect(await countRows(db)).toEqual(before);
    // Without a notifyUrl it is business as usual.
    expect((await off.api.post('/v1/tasks', { partner: 'sim', requestNo: uniqueRequestNo('off'), payload: { simulate: NO_CALLBACK } })).status).toBe(201);
    expect(await listNotifications(off.api, (await off.api.get('/v1/tasks?limit=1')).data.items[0].id)).toEqual([]);
  });
});

test('/openapi.json describes the notification routes and the notification body as an OpenAPI 3.1 webhook', async () => {
  const doc = (await svc.api.get('/openapi.json')).data as Record<string, any>;
  expect(doc.openapi).toMatch(/^3\.1/);
  expect(Object.keys(doc.paths['/v1/tasks/{id}/notifications'])).toEqual(['get']);
  expect(doc.paths['/v1/tasks/{id}/notifications'].get.responses['200'].content['application/json'].schema).toEqual({ $ref: '#/components/schemas/NotificationList' });
  expect(Object.keys(doc.paths['/v1/tasks/{id}/notifications/{nid}/redeliver'].post.responses)).toEqual(expect.arrayContaining(['202', '404']));
  const hook = doc.webhooks.taskOutcome.post;
  expect(hook.requestBody.content['application/json'].schema).toEqual({ $ref: '#/components/schemas/NotificationEvent' });
  expect(hook.parameters.map((p: { name: string }) => p.name)).toEqual(['webhook-id', 'webhook-timestamp', 'webhook-signature']);
  const event = doc.components.schemas.NotificationEvent;
  expect(event.properties.data).toEqual({ $ref: '#/components/schemas/Task' });
  expect(event.properties.type.enum).toEqual(['task.succeeded', 'task.failed', 'task.rejected', 'task.expired']);
  expect(doc.components.schemas.Notification.properties.status.enum).toEqual(['pending', 'delivered', 'failed', 'gone']);
});
