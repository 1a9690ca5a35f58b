import type { IncomingHttpHeaders } from 'node:http';
import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, quiesce, readBody, startPartnerServer, uniqueRequestNo, type TestPartnerServer } from './helpers';

/**
 * "A task row is committed before any byte is sent to the partner": a partner of our own looks the task up
 * through a separate database connection the moment the dispatch arrives. An uncommitted row is invisible there.
 */

interface Received {
  requestNo: string;
  path: string | undefined;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
  /** What the partner found in the database when the dispatch arrived. */
  row: { id: string; status: string } | undefined;
}

let db: TestDatabase;
let svc: TestService;
let partner: TestPartnerServer;
const received: Received[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  partner = await startPartnerServer((req, res) => {
    void (async () => {
      const text = await readBody(req);
      const body = JSON.parse(text) as Record<string, unknown>;
      const requestNo = String(body.requestNo);
      // A connection of the test's own pool, never the service's.
      const { rows } = await sql<{ id: string; status: string }>`
        select id, status from tasks where partner = 'probe' and request_no = ${requestNo}`.execute(db.handle.db);
      received.push({ requestNo, path: req.url, headers: req.headers, body, row: rows[0] });
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ requestNo, status: 'processing' }));
    })().catch((err: unknown) => {
      res.writeHead(500);
      res.end(String(err));
    });
  });
  svc = await startTestService({
    db,
    extraPartners: [
      {
        id: 'probe',
        baseUrl: partner.url,
        dispatch: { path: '/intake', timeoutMs: 3000, maxAttempts: 3 },
        callback: { verify: 'poll' },
        headers: { Authorization: 'Bearer probe-token', 'X-Partner-Tenant': 'tenant-42' },
      },
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await partner?.close();
  await db?.drop();
});

test('20 tasks created at once: each row is visible to another connection when its dispatch arrives', async () => {
  const requestNos = Array.from({ length: 20 }, () => uniqueRequestNo('pbd'));
  const tasks = await Promise.all(requestNos.map((requestNo) => createTask(svc.api, { partner: 'probe', requestNo, payload: { n: requestNo } })));
  await eventually(async () => requestNos.every((n) => received.some((r) => r.requestNo === n)) || undefined, 'every dispatch to arrive');
  await quiesce(svc);

  for (const task of tasks) {
    const got = received.filter((r) => r.requestNo === task.requestNo);
    expect(got).toHaveLength(1);
    // The row was committed (visible elsewhere) and it is this task.
    expect(got[0]!.row).toEqual({ id: task.id, status: 'pending' });
  }
  // Each dispatch was recorded as received.
  for (const task of tasks) {
    const t = await svc.api.get(`/v1/tasks/${task.id}`);
    expect(t.data).toMatchObject({ status: 'dispatched', dispatchAttempts: 1 });
  }
});

test('the dispatch carries Idempotency-Key, the partner headers and exactly {requestNo, kind, payload, callbackUrl}', async () => {
  const requestNo = uniqueRequestNo('shape');
  const payload = { essay: { id: 'e-7', words: ['a', 'b'] }, score: null, ok: true };
  const task = await createTask(svc.api, {
    partner: 'probe',
    requestNo,
    kind: 'grade',
    payload,
    metadata: { internal: 'never-sent' },
    notifyUrl: 'https://client.example/notify',
  });
  const got = await eventually(async () => received.find((r) => r.requestNo === requestNo), 'the dispatch to arrive');
  expect(got.path).toBe('/intake');
  expect(got.headers['idempotency-key']).toBe(requestNo);
  expect(got.headers.authorization).toBe('Bearer probe-token');
  expect(got.headers['x-partner-tenant']).toBe('tenant-42');
  expect(String(got.headers['content-type'])).toMatch(/^application\/json/);
  expect(got.body).toEqual({ requestNo, kind: 'grade', payload, callbackUrl: `${svc.url}/v1/callbacks/probe` });
  expect(got.row?.id).toBe(task.id);
});

test('a task without kind is dispatched with kind null', async () => {
  const requestNo = uniqueRequestNo('nokind');
  await createTask(svc.api, { partner: 'probe', requestNo, payload: { x: 1 } });
  const got = await eventually(async () => received.find((r) => r.requestNo === requestNo), 'the dispatch to arrive');
  expect(got.body).toEqual({ requestNo, kind: null, payload: { x: 1 }, callbackUrl: `${svc.url}/v1/callbacks/probe` });
  expect(got.headers['idempotency-key']).toBe(requestNo);
});

test('the payload reaches the partner with every key, constructor, prototype and __proto__ included (jsonb orders keys its own way)', async () => {
  const requestNo = uniqueRequestNo('keys');
  const text = `{"partner":"probe","requestNo":"${requestNo}","payload":{"constructor":{"prototype":null},"prototype":[1],"__proto__":{"polluted":true},"toString":"s"}}`;
  const res = await svc.api.post('/v1/tasks', text, { headers: { 'content-type': 'application/json' } });
  expect(res.status).toBe(201);
  const payload = (JSON.parse(text) as { payload: unknown }).payload;
  const got = await eventually(async () => received.find((r) => r.requestNo === requestNo), 'the dispatch to arrive');
  expect(got.body.payload).toEqual(payload);
  expect(Object.keys(got.body.payload as object).sort()).toEqual(['__proto__', 'constructor', 'prototype', 'toString']);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
});

test('a refused or replayed create sends nothing to the partner', async () => {
  const requestNo = uniqueRequestNo('nosend');
  const first = await createTask(svc.api, { partner: 'probe', requestNo, payload: { x: 1 } });
  await eventually(async () => received.some((r) => r.requestNo === requestNo) || undefined, 'the first dispatch');
  const replay = await svc.api.post('/v1/tasks', { partner: 'probe', requestNo, payload: { x: 1 } });
  expect(replay.status).toBe(200);
  const conflict = await svc.api.post('/v1/tasks', { partner: 'probe', requestNo, payload: { x: 2 } });
  expect(conflict.status).toBe(409);
  const invalid = await svc.api.post('/v1/tasks', { partner: 'probe', requestNo: 'bad no', payload: { x: 1 } });
  expect(invalid.status).toBe(422);
  await quiesce(svc);
  expect(received.filter((r) => r.requestNo === requestNo)).toHaveLength(1);
  expect(received.some((r) => r.requestNo === 'bad no')).toBe(false);
  expect((await svc.api.get(`/v1/tasks/${first.id}`)).data.dispatchAttempts).toBe(1);
});
