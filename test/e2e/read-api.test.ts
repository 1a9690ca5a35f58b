import type { ApiTask } from '../../src/tasks/task-schemas';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, TEST_SECRET, type TestService } from '../support/service';
import {
  createTask,
  errorFields,
  expectProblem,
  expectTaskShape,
  ISO_UTC_RE,
  NO_CALLBACK,
  quiesce,
  uniqueRequestNo,
  waitForFirstDispatch,
} from './helpers';

/** The read side of the client API: one task, by request number, lists with keyset cursors, events, reconcile, partners. */

const PARTNER_TOKEN = 'sekret-token';
let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    partner: { headers: { Authorization: `Bearer ${PARTNER_TOKEN}`, 'X-Tenant-Key': 'tenant-hidden-value' } },
    extraPartners: [{ id: 'pager', baseUrl: '{simulator}', callback: { verify: 'poll' } }],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const UNKNOWN_ID = '0190f5e0-0000-7000-8000-000000000000';

describe('GET /v1/tasks/{id}', () => {
  test('200 with the task', async () => {
    const t = await createTask(svc.api, { partner: 'sim', kind: 'read', payload: { q: 1, simulate: NO_CALLBACK } });
    const res = await svc.api.get(`/v1/tasks/${t.id}`);
    expect(res.status).toBe(200);
    expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
    expectTaskShape(res.data);
    expect(res.data).toMatchObject({ id: t.id, partner: 'sim', requestNo: t.requestNo, kind: 'read', payload: { q: 1, simulate: NO_CALLBACK } });
  });

  test.each([
    ['an unknown uuid', UNKNOWN_ID],
    ['a non-uuid id', 'not-a-uuid'],
    ['a uuid with junk after it', `${UNKNOWN_ID}x`],
    ['an SQL-looking id', "1' or '1'='1"],
  ])('404 problem for %s', async (_what, id) => {
    const res = await svc.api.get(`/v1/tasks/${encodeURIComponent(id)}`);
    expectProblem(res, 404);
  });

  test('waitSeconds=1 on an open task holds the answer about a second, then answers with its current state', async () => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    await waitForFirstDispatch(svc.api, t.id);
    const started = Date.now();
    const res = await svc.api.get(`/v1/tasks/${t.id}?waitSeconds=1`);
    const elapsed = Date.now() - started;
    expect(res.status).toBe(200);
    expect(res.data).toMatchObject({ id: t.id, status: 'dispatched', dispatchAttempts: 1 });
    expect(elapsed).toBeGreaterThanOrEqual(900);
  });

  test('waitSeconds answers with the final state once the task settles during the wait', async () => {
    // The partner takes 600 ms to answer and settles the task in its answer.
    const t = await createTask(svc.api, {
      partner: 'sim',
      payload: { simulate: { dispatch: { delayMs: 600, bodyStatus: 'succeeded' }, result: { grade: 'A' }, ...NO_CALLBACK } },
    });
    const res = await svc.api.get(`/v1/tasks/${t.id}?waitSeconds=10`);
    expect(res.status).toBe(200);
    expect(res.data).toMatchObject({ id: t.id, status: 'succeeded', result: { grade: 'A' }, settledBy: 'dispatch' });
  });

  test('waitSeconds on an unknown task is 404 at once', async () => {
    expectProblem(await svc.api.get(`/v1/tasks/${UNKNOWN_ID}?waitSeconds=5`), 404);
  });

  test.each([['61'], ['-1'], ['abc'], ['1.5']])('waitSeconds=%s is 422 naming waitSeconds', async (value) => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    const res = await svc.api.get(`/v1/tasks/${t.id}?waitSeconds=${value}`);
    expect(errorFields(expectProblem(res, 422))).toContain('waitSeconds');
  });

  test('an unknown query parameter is 422', async () => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    const res = await svc.api.get(`/v1/tasks/${t.id}?wait=1`);
    expectProblem(res, 422);
  });
});

describe('GET /v1/partners/{partner}/tasks/{requestNo}', () => {
  test('200 with the task of that partner and request number', async () => {
    const requestNo = `by:no.${uniqueRequestNo('x')}`;
    const t = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    const res = await svc.api.get(`/v1/partners/sim/tasks/${encodeURIComponent(requestNo)}`);
    expect(res.status).toBe(200);
    expectTaskShape(res.data);
    expect(res.data).toMatchObject({ id: t.id, requestNo, partner: 'sim' });
  });

  test('404 for an unknown request number, and for a known one under another partner', async () => {
    const requestNo = uniqueRequestNo('only-sim');
    await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    expectProblem(await svc.api.get(`/v1/partners/sim/tasks/${uniqueRequestNo('never')}`), 404);
    expectProblem(await svc.api.get(`/v1/partners/pager/tasks/${requestNo}`), 404);
    expectProblem(await svc.api.get(`/v1/partners/nobody/tasks/${requestNo}`), 404);
  });
});

describe('GET /v1/tasks', () => {
  let pagerTasks: ApiTask[] = [];

  beforeAll(async () => {
    // 25 tasks of one partner, created in small concurrent bursts so some share a millisecond.
    for (let burst = 0; burst < 5; burst += 1) {
      const batch = await Promise.all(
        Array.from({ length: 5 }, () => createTask(svc.api, { partner: 'pager', payload: { burst, simulate: NO_CALLBACK } })),
      );
      pagerTasks.push(...batch);
    }
    await quiesce(svc);
  });

  const newestFirst = (items: ApiTask[]) => {
    for (let i = 1; i < items.length; i += 1) {
      const prev = items[i - 1]!;
      const cur = items[i]!;
      const order = Date.parse(prev.createdAt) - Date.parse(cur.createdAt);
      expect(order).toBeGreaterThanOrEqual(0);
      if (order === 0) expect(prev.id > cur.id).toBe(true);
    }
  };

  test('lists newest first with items and nextCursor', async () => {
    const res = await svc.api.get('/v1/tasks?partner=pager');
    expect(res.status).toBe(200);
    expect(Object.keys(res.data).sort()).toEqual(['items', 'nextCursor']);
    expect(res.data.nextCursor).toBeNull();
    const items = res.data.items as ApiTask[];
    expect(items).toHaveLength(25);
    items.forEach((t) => expectTaskShape(t));
    newestFirst(items);
    // The last task created is first (it was created in the last burst).
    const lastBurstIds = new Set(pagerTasks.slice(20).map((t) => t.id));
    expect(lastBurstIds.has(items[0]!.id)).toBe(true);
  });

  test('keyset pages of 10 cover all 25 tasks exactly once, in order', async () => {
    const seen: ApiTask[] = [];
    const pageSizes: number[] = [];
    let cursor: string | null = null;
    do {
      const query: string = `/v1/tasks?partner=pager&limit=10${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const res = await svc.api.get(query);
      expect(res.status).toBe(200);
      pageSizes.push(res.data.items.length);
      seen.push(...(res.data.items as ApiTask[]));
      cursor = res.data.nextCursor as string | null;
      expect(pageSizes.length).toBeLessThanOrEqual(3);
    } while (cursor);
    expect(pageSizes).toEqual([10, 10, 5]);
    const ids = seen.map((t) => t.id);
    expect(new Set(ids).size).toBe(25);
    expect(new Set(ids)).toEqual(new Set(pagerTasks.map((t) => t.id)));
    newestFirst(seen);
    // Paging gives the same order as one big page.
    const all = await svc.api.get('/v1/tasks?partner=pager&limit=500');
    expect(ids).toEqual((all.data.items as ApiTask[]).map((t) => t.id));
  });

  test('a page exactly at the end has a null nextCursor', async () => {
    const res = await svc.api.get('/v1/tasks?partner=pager&limit=25');
    expect(res.data.items).toHaveLength(25);
    expect(res.data.nextCursor).toBeNull();
    const res24 = await svc.api.get('/v1/tasks?partner=pager&limit=24');
    expect(res24.data.items).toHaveLength(24);
    expect(typeof res24.data.nextCursor).toBe('string');
    const rest = await svc.api.get(`/v1/tasks?partner=pager&limit=24&cursor=${encodeURIComponent(res24.data.nextCursor)}`);
    expect(rest.data.items).toHaveLength(1);
    expect(rest.data.nextCursor).toBeNull();
  });

  test('tasks created after a cursor was issued do not shift the later pages', async () => {
    const first = await svc.api.get('/v1/tasks?partner=pager&limit=10');
    await createTask(svc.api, { partner: 'pager', payload: { late: true, simulate: NO_CALLBACK } }).then((t) => pagerTasks.push(t));
    const second = await svc.api.get(`/v1/tasks?partner=pager&limit=10&cursor=${encodeURIComponent(first.data.nextCursor)}`);
    const firstIds = new Set((first.data.items as ApiTask[]).map((t) => t.id));
    for (const t of second.data.items as ApiTask[]) expect(firstIds.has(t.id)).toBe(false);
    expect(Date.parse((second.data.items as ApiTask[])[0]!.createdAt)).toBeLessThanOrEqual(Date.parse((first.data.items as ApiTask[]).at(-1)!.createdAt));
  });

  test('default limit is 50', async () => {
    // Make sure there are more than 50 tasks in all.
    await Promise.all(Array.from({ length: 30 }, () => createTask(svc.api, { partner: 'sim', payload: { fill: true, simulate: NO_CALLBACK } })));
    const res = await svc.api.get('/v1/tasks');
    expect(res.data.items).toHaveLength(50);
    expect(typeof res.data.nextCursor).toBe('string');
  });

  test('filters by partner and by status', async () => {
    await quiesce(svc);
    const rejected = await createTask(svc.api, { partner: 'sim', payload: { simulate: { dispatch: { status: 400 }, ...NO_CALLBACK } } });
    const settled = await waitForFirstDispatch(svc.api, rejected.id);
    expect(settled.status).toBe('rejected');

    const byPartner = await svc.api.get('/v1/tasks?partner=sim&limit=500');
    expect(byPartner.data.items.length).toBeGreaterThan(0);
    expect((byPartner.data.items as ApiTask[]).every((t) => t.partner === 'sim')).toBe(true);

    const byStatus = await svc.api.get('/v1/tasks?status=rejected&limit=500');
    expect((byStatus.data.items as ApiTask[]).map((t) => t.id)).toContain(rejected.id);
    expect((byStatus.data.items as ApiTask[]).every((t) => t.status === 'rejected')).toBe(true);

    const both = await svc.api.get('/v1/tasks?status=rejected&partner=pager');
    expect(both.data.items).toEqual([]);
    expect(both.data.nextCursor).toBeNull();

    const dispatched = await svc.api.get('/v1/tasks?status=dispatched&partner=pager&limit=500');
    expect((dispatched.data.items as ApiTask[]).length).toBe(pagerTasks.length);

    const unknownPartner = await svc.api.get('/v1/tasks?partner=nobody');
    expect(unknownPartner.status).toBe(200);
    expect(unknownPartner.data.items).toEqual([]);
  });

  test.each([
    ['limit=0', 'limit'],
    ['limit=501', 'limit'],
    ['limit=abc', 'limit'],
    ['limit=2.5', 'limit'],
    ['status=done', 'status'],
    ['cursor=garbage', 'cursor'],
    [`cursor=${Buffer.from('["yesterday","not-a-uuid"]').toString('base64url')}`, 'cursor'],
    [`cursor=${Buffer.from('{"a":1}').toString('base64url')}`, 'cursor'],
    [`cursor=${Buffer.from('null').toString('base64url')}`, 'cursor'],
    ['sort=asc', 'sort'],
  ])('%s is 422 naming %s', async (query, field) => {
    const res = await svc.api.get(`/v1/tasks?${query}`);
    expect(errorFields(expectProblem(res, 422))).toContain(field);
  });

  test('limit=1 and limit=500 are accepted', async () => {
    expect((await svc.api.get('/v1/tasks?limit=1')).data.items).toHaveLength(1);
    expect((await svc.api.get('/v1/tasks?limit=500')).status).toBe(200);
  });
});

describe('GET /v1/tasks/{id}/events', () => {
  test('oldest first, {at, from, to, source, detail}, starting with null → pending from the api', async () => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    await waitForFirstDispatch(svc.api, t.id);
    const res = await svc.api.get(`/v1/tasks/${t.id}/events`);
    expect(res.status).toBe(200);
    const items = res.data.items as { at: string; from: string | null; to: string; source: string; detail: unknown }[];
    expect(items).toHaveLength(2);
    for (const e of items) {
      expect(Object.keys(e).sort()).toEqual(['at', 'detail', 'from', 'source', 'to']);
      expect(e.at).toMatch(ISO_UTC_RE);
    }
    expect(items[0]).toMatchObject({ from: null, to: 'pending', source: 'api', at: t.createdAt });
    expect(items[1]).toMatchObject({ from: 'pending', to: 'dispatched', source: 'dispatch' });
    expect(Date.parse(items[1]!.at)).toBeGreaterThanOrEqual(Date.parse(items[0]!.at));
  });

  test('404 for an unknown or non-uuid task', async () => {
    expectProblem(await svc.api.get(`/v1/tasks/${UNKNOWN_ID}/events`), 404);
    expectProblem(await svc.api.get('/v1/tasks/nope/events'), 404);
  });
});

describe('POST /v1/tasks/{id}/reconcile', () => {
  test('202 with the task, which is now due for a check', async () => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    const dispatched = await waitForFirstDispatch(svc.api, t.id);
    expect(Date.parse(dispatched.nextCheckAt!)).toBeGreaterThan(Date.now() + 5000);
    const res = await svc.api.post(`/v1/tasks/${t.id}/reconcile`);
    const answeredAt = Date.now();
    expect(res.status).toBe(202);
    expectTaskShape(res.data);
    expect(res.data.id).toBe(t.id);
    expect(res.data.nextCheckAt).not.toBeNull();
    expect(Date.parse(res.data.nextCheckAt ?? 'missing')).toBeLessThanOrEqual(answeredAt);
  });

  test('202 on a final task leaves it final with no check time', async () => {
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: { dispatch: { bodyStatus: 'failed' }, ...NO_CALLBACK } } });
    expect((await waitForFirstDispatch(svc.api, t.id)).status).toBe('failed');
    const res = await svc.api.post(`/v1/tasks/${t.id}/reconcile`);
    expect(res.status).toBe(202);
    expect(res.data).toMatchObject({ id: t.id, status: 'failed', nextCheckAt: null });
  });

  test('404 for an unknown or non-uuid task', async () => {
    expectProblem(await svc.api.post(`/v1/tasks/${UNKNOWN_ID}/reconcile`), 404);
    expectProblem(await svc.api.post('/v1/tasks/nope/reconcile'), 404);
  });
});

describe('GET /v1/partners', () => {
  test('lists ids and baseUrls only, never a secret or header value', async () => {
    const res = await svc.api.get('/v1/partners', { responseType: 'text', transformResponse: (d: unknown) => d });
    expect(res.status).toBe(200);
    const text = String(res.data);
    const body = JSON.parse(text) as { items: Record<string, unknown>[] };
    expect(body.items).toEqual([
      { id: 'sim', baseUrl: svc.simulator.url },
      { id: 'pager', baseUrl: svc.simulator.url },
    ]);
    for (const hidden of [TEST_SECRET, TEST_SECRET.slice('whsec_'.length), PARTNER_TOKEN, 'tenant-hidden-value', 'X-Tenant-Key', 'Authorization']) {
      expect(text).not.toContain(hidden);
    }
  });
});

test('an unknown route under /v1 is a 404 problem', async () => {
  expectProblem(await svc.api.get('/v1/nothing-here'), 404);
});
