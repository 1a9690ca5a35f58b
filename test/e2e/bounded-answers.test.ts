import type { AxiosResponse } from 'axios';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { answerOf, postCallback, report, signCallback } from './callback-helpers';
import { createTask, expectProblem, NO_CALLBACK, uniqueRequestNo } from './helpers';

/**
 * Issue 7, item 13: answers are bounded. A task list page ends early past about 4 MB (nextCursor says
 * where to go on), events are paginated, and /v1/partners never shows credentials in a base URL.
 */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    background: false,
    env: { MAX_BODY_BYTES: String(2 * 1024 * 1024) },
    extraPartners: [
      { id: 'big', baseUrl: '{simulator}', callback: { verify: 'poll' } },
      { id: 'secretive', baseUrl: 'http://partner-user:pa55word@127.0.0.1:9/base/?token=t0ken-in-query', callback: { verify: 'poll' } },
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('a page of big tasks stops past about 4 MB, and the cursor walks through all of them exactly once', async () => {
  const created: string[] = [];
  for (let i = 0; i < 6; i++) {
    const t = await createTask(svc.api, { partner: 'big', requestNo: uniqueRequestNo('big'), payload: { blob: 'x'.repeat(900 * 1024), simulate: NO_CALLBACK } });
    created.push(t.id);
  }
  const first = await svc.api.get('/v1/tasks?partner=big&limit=500', { maxContentLength: 64 * 1024 * 1024 });
  expect(first.status).toBe(200);
  const items = first.data.items as { id: string }[];
  expect(items.length).toBeGreaterThanOrEqual(4);
  expect(items.length).toBeLessThan(6);
  expect(first.data.nextCursor).toEqual(expect.any(String));
  expect(JSON.stringify(first.data).length).toBeLessThan(5 * 1024 * 1024);

  const seen = [...items.map((t) => t.id)];
  let cursor: string | null = first.data.nextCursor;
  while (cursor) {
    const page = await svc.api.get(`/v1/tasks?partner=big&limit=500&cursor=${cursor}`, { maxContentLength: 64 * 1024 * 1024 });
    expect(page.status).toBe(200);
    seen.push(...(page.data.items as { id: string }[]).map((t) => t.id));
    cursor = page.data.nextCursor;
  }
  expect(seen).toEqual([...created].reverse());
});

test('events are paginated oldest first; pages put together equal the whole trail', async () => {
  const t = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('ev'), payload: { simulate: NO_CALLBACK } });
  for (let i = 0; i < 3; i++) await svc.api.post(`/v1/tasks/${t.id}/reconcile`);
  await svc.runtime.reconciler.runOnce();
  const whole = await eventually(async () => {
    const r = await svc.api.get(`/v1/tasks/${t.id}/events`);
    return r.data.items.length >= 2 ? r.data : undefined;
  }, 'the dispatch event');
  expect(whole.nextCursor).toBeNull();

  const paged: unknown[] = [];
  let cursor: string | null = null;
  do {
    const res: AxiosResponse = await svc.api.get(`/v1/tasks/${t.id}/events?limit=1${cursor ? `&cursor=${cursor}` : ''}`);
    expect(res.status).toBe(200);
    expect(res.data.items.length).toBeLessThanOrEqual(1);
    paged.push(...res.data.items);
    cursor = res.data.nextCursor;
  } while (cursor);
  expect(paged).toEqual(whole.items);

  expectProblem(await svc.api.get(`/v1/tasks/${t.id}/events?limit=0`), 422);
  expectProblem(await svc.api.get(`/v1/tasks/${t.id}/events?limit=501`), 422);
  expectProblem(await svc.api.get(`/v1/tasks/${t.id}/events?cursor=not-ours`), 422);
  expectProblem(await svc.api.get(`/v1/tasks/${t.id}/events?other=1`), 422);
});

test('/v1/partners shows base URLs without user, password or query', async () => {
  const res = await svc.api.get('/v1/partners');
  expect(res.status).toBe(200);
  const text = JSON.stringify(res.data);
  expect(text).not.toMatch(/pa55word|partner-user|t0ken/);
  expect(res.data.items).toContainEqual({ id: 'secretive', baseUrl: 'http://127.0.0.1:9/base' });
});

describe('long-poll waiters per process are capped (item 14)', () => {
  let capped: TestService;
  let cappedDb: TestDatabase;
  beforeAll(async () => {
    cappedDb = await createTestDatabase();
    capped = await startTestService({ db: cappedDb, background: false, env: { MAX_LONG_POLL_WAITERS: '2' } });
  });
  afterAll(async () => {
    await capped?.stop();
    await cappedDb?.drop();
  });

  /** Tracks whether a request has been answered yet. */
  function track<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
    let done = false;
    void p.finally(() => (done = true)).catch(() => undefined);
    return { promise: p, settled: () => done };
  }

  test('beyond the cap a read is answered at once with the current state; places are given back', async () => {
    for (let round = 0; round < 2; round++) {
      const t = await createTask(capped.api, { partner: 'sim', requestNo: uniqueRequestNo('wait'), payload: { simulate: NO_CALLBACK } });
      const waiting = [track(capped.api.get(`/v1/tasks/${t.id}?waitSeconds=30`)), track(capped.api.get(`/v1/tasks/${t.id}?waitSeconds=30`))];
      await eventually(async () => (capped.runtime.longPolls.active === 2 ? true : undefined), 'both waits to be held');
      const third = await capped.api.get(`/v1/tasks/${t.id}?waitSeconds=30`);
      expect(third.status).toBe(200);
      expect(['pending', 'dispatched']).toContain(third.data.status);
      expect(waiting.map((w) => w.settled())).toEqual([false, false]);

      const cb = await postCallback(capped.url, 'sim', signCallback(report(t.requestNo, 'succeeded'), { secret: TEST_SECRET }));
      expect(answerOf(cb)).toBe('200 applied');
      for (const w of waiting) expect((await w.promise).data.status).toBe('succeeded');
      await eventually(async () => (capped.runtime.longPolls.active === 0 ? true : undefined), 'the places to be given back');
    }
  });
});
