import http from 'node:http';
import axios, { type AxiosResponse } from 'axios';
import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_API_KEY, type TestService } from '../support/service';
import { NO_CALLBACK, quiesce, uniqueRequestNo, waitForFirstDispatch } from './helpers';

/** Many replicas' worth of identical creates racing: the unique constraint decides, exactly one wins. */

let db: TestDatabase;
let svc: TestService;
// Real parallel connections: one socket per request, so the creates truly race in the service.
const agent = new http.Agent({ keepAlive: false, maxSockets: 100 });

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db });
});
afterAll(async () => {
  agent.destroy();
  await svc?.stop();
  await db?.drop();
});

const post = (body: unknown) =>
  axios.post(`${svc.url}/v1/tasks`, body, {
    httpAgent: agent,
    headers: { authorization: `Bearer ${TEST_API_KEY}` },
    validateStatus: () => true,
  });

async function rowsFor(requestNo: string) {
  const tasks = await db.handle.db.selectFrom('tasks').select(['id', 'status']).where('request_no', '=', requestNo).execute();
  const { rows: events } = await sql<{ task_id: string; from_status: string | null; to_status: string; source: string }>`
    select e.task_id, e.from_status, e.to_status, e.source
    from task_events e join tasks t on t.id = e.task_id
    where t.request_no = ${requestNo} order by e.id`.execute(db.handle.db);
  return { tasks, events };
}

test('50 concurrent identical creates: one 201, 49 replays, one row, one creation event, one dispatch', async () => {
  const requestNo = uniqueRequestNo('race');
  const body = { partner: 'sim', requestNo, kind: 'race', payload: { n: 1, simulate: NO_CALLBACK } };
  const answers: AxiosResponse[] = await Promise.all(Array.from({ length: 50 }, () => post(body)));

  const created = answers.filter((r) => r.status === 201);
  const replayed = answers.filter((r) => r.status === 200);
  expect(answers.map((r) => r.status).filter((s) => s !== 200 && s !== 201)).toEqual([]);
  expect(created).toHaveLength(1);
  expect(replayed).toHaveLength(49);
  expect(created[0]!.headers['idempotent-replayed']).toBeUndefined();
  for (const r of replayed) expect(r.headers['idempotent-replayed']).toBe('true');
  const id = created[0]!.data.id as string;
  expect(new Set(answers.map((r) => r.data.id))).toEqual(new Set([id]));

  await waitForFirstDispatch(svc.api, id);
  await quiesce(svc);

  const { tasks, events } = await rowsFor(requestNo);
  expect(tasks).toEqual([{ id, status: 'dispatched' }]);
  expect(events.filter((e) => e.from_status === null)).toEqual([{ task_id: id, from_status: null, to_status: 'pending', source: 'api' }]);
  expect(events.filter((e) => e.source === 'dispatch')).toHaveLength(1);

  const seen = svc.simulator.stats().byRequestNo[requestNo];
  expect(seen?.dispatches).toBe(1);
  expect(seen?.lastIdempotencyKey).toBe(requestNo);
});

test('20 concurrent creates of one requestNo with different bodies: exactly one wins, the rest get 409', async () => {
  const requestNo = uniqueRequestNo('race-diff');
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) => post({ partner: 'sim', requestNo, payload: { variant: i, simulate: NO_CALLBACK } })),
  );
  const statuses = answers.map((r) => r.status);
  expect(statuses.filter((s) => s === 201)).toHaveLength(1);
  expect(statuses.filter((s) => s === 409)).toHaveLength(19);
  for (const r of answers.filter((a) => a.status === 409)) {
    expect(String(r.headers['content-type'])).toMatch(/^application\/problem\+json/);
  }
  const winner = answers.find((r) => r.status === 201)!;
  await waitForFirstDispatch(svc.api, winner.data.id);
  await quiesce(svc);

  const { tasks, events } = await rowsFor(requestNo);
  expect(tasks).toHaveLength(1);
  expect(tasks[0]!.id).toBe(winner.data.id);
  expect(events.filter((e) => e.source === 'api')).toHaveLength(1);
  // The stored body is the winner's.
  const stored = await svc.api.get(`/v1/tasks/${winner.data.id}`);
  expect(stored.data.payload).toEqual(winner.data.payload);
  expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches).toBe(1);
});

test('concurrent creates of distinct requestNos all succeed and each is dispatched once', async () => {
  const requestNos = Array.from({ length: 30 }, () => uniqueRequestNo('distinct'));
  const answers = await Promise.all(requestNos.map((requestNo) => post({ partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } })));
  expect(answers.map((r) => r.status)).toEqual(requestNos.map(() => 201));
  expect(new Set(answers.map((r) => r.data.id)).size).toBe(30);
  await eventually(
    async () => requestNos.every((n) => (svc.simulator.stats().byRequestNo[n]?.dispatches ?? 0) >= 1) || undefined,
    'every distinct task to reach the partner',
  );
  await quiesce(svc);
  const stats = svc.simulator.stats().byRequestNo;
  expect(requestNos.map((n) => stats[n]?.dispatches)).toEqual(requestNos.map(() => 1));
});
