import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import {
  answerOf,
  createTask,
  getEvents,
  getTask,
  inboxRowsByRequestNo,
  NEVER_CALLS_BACK,
  newRequestNo,
  postCallback,
  randomSecret,
  report,
  sample,
  scrape,
  signCallback,
  sleep,
} from './callback-helpers';

/**
 * "The callback beats the row": a callback that arrives before its task, or while its dispatch is still in
 * flight, is matched (bounded re-lookup) or kept and applied when the task appears, never lost.
 */

let db: TestDatabase;
/** Default bound: CALLBACK_LOOKUP_TIMEOUT_MS 3000. */
let svc: TestService;
/** A short bound (1000 ms) so "not found in time" is quick to reach; same database, same simulator. */
let svcShort: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db });
  svcShort = await startTestService({ db, simulator: svc.simulator, env: { CALLBACK_LOOKUP_TIMEOUT_MS: '1000' } });
});
afterAll(async () => {
  await svcShort?.stop();
  await svc?.stop();
  await db?.drop();
});

async function dispatcherIdle(s: TestService): Promise<void> {
  await eventually(async () => s.runtime.dispatcher.activeCount === 0, 'the dispatcher to go idle');
}

async function receivedBeforeCreated(requestNo: string): Promise<boolean> {
  const { rows } = await sql<{ before: boolean }>`
    select i.received_at < t.created_at as before
    from callback_inbox i join tasks t on t.partner = i.partner and t.request_no = i.request_no
    where i.partner = 'sim' and i.request_no = ${requestNo}`.execute(db.handle.db);
  expect(rows).toHaveLength(1);
  return rows[0]!.before;
}

test('the simulator calls back before it answers the dispatch: the callback finds the task at once and settles it', async () => {
  const requestNo = newRequestNo('before');
  const created = await createTask(svc.api, {
    partner: 'sim',
    requestNo,
    payload: { simulate: { callback: { mode: 'before' }, result: { grade: 'B+' } } },
  });
  expect(created.status).toBe('pending');

  const settled = await eventually(async () => {
    const t = await getTask(svc.api, created.id);
    return t.status === 'succeeded' ? t : undefined;
  }, 'the task to succeed');
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { grade: 'B+' }, error: null });

  await dispatcherIdle(svc);
  const stats = svc.simulator.stats().byRequestNo[requestNo];
  expect(stats).toBeDefined();
  expect(stats!.dispatches).toBe(1);
  expect(stats!.callbacksSent).toBe(1);
  expect(stats!.lastCallbackAnswer).toEqual({ status: 200, body: { outcome: 'applied' } });

  // The dispatch answer (processing) that came after the settlement changed nothing.
  const events = await getEvents(svc.api, created.id);
  expect(events.map((e) => `${e.from}->${e.to}:${e.source}`)).toEqual(['null->pending:api', 'pending->succeeded:callback']);
  expect((await getTask(svc.api, created.id)).status).toBe('succeeded');
});

test('a callback sent 200 ms before its task is created answers 200 applied inside the bound and settles the task', async () => {
  const requestNo = newRequestNo('early200');
  const cb = signCallback(report(requestNo, 'succeeded', { result: { score: 42 } }), { secret: TEST_SECRET });
  const sentAt = Date.now();
  const answer = postCallback(svc.url, 'sim', cb);
  // The callback is stored (its task does not exist yet) before the task is created, 200 ms after sending.
  const stored = await eventually(async () => (await inboxRowsByRequestNo(db, 'sim', requestNo))[0], 'the callback to be stored');
  expect(stored).toMatchObject({ outcome: 'queued', task_id: null });
  await sleep(Math.max(0, sentAt + 200 - Date.now()));
  const created = await createTask(svc.api, { partner: 'sim', requestNo, payload: NEVER_CALLS_BACK });

  const res = await answer;
  expect(res.status).toBe(200);
  expect(res.data).toEqual({ outcome: 'applied' });

  const task = await getTask(svc.api, created.id);
  expect(task).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { score: 42 } });
  expect(task.completedAt).not.toBeNull();
  expect(task.nextCheckAt).toBeNull();

  // It really was stored before the task existed, and it is the one callback applied to it.
  expect(await receivedBeforeCreated(requestNo)).toBe(true);
  const rows = await inboxRowsByRequestNo(db, 'sim', requestNo);
  expect(rows.map((r) => ({ outcome: r.outcome, task_id: r.task_id, webhook_id: r.webhook_id }))).toEqual([
    { outcome: 'applied', task_id: created.id, webhook_id: cb.headers['webhook-id'] },
  ]);
  const events = await getEvents(svc.api, created.id);
  expect(events.filter((e) => e.source === 'callback').map((e) => `${e.from}->${e.to}`)).toEqual(['pending->succeeded']);

  // A task settled by a callback that came first is not dispatched at all.
  await dispatcherIdle(svc);
  expect(svc.simulator.stats().byRequestNo[requestNo]?.dispatches ?? 0).toBe(0);
});

test('a callback whose task is not there within the bound answers 202 queued, and is applied as soon as the task is created', async () => {
  const requestNo = newRequestNo('queued');
  const cb = signCallback(report(requestNo, 'failed', { error: { code: 'E_LATE' } }), { secret: TEST_SECRET });
  const res = await postCallback(svcShort.url, 'sim', cb);
  expect(res.status).toBe(202);
  expect(res.data).toEqual({ outcome: 'queued' });

  // Kept, not dropped.
  const queued = await inboxRowsByRequestNo(db, 'sim', requestNo);
  expect(queued.map((r) => ({ outcome: r.outcome, task_id: r.task_id, reported_status: r.reported_status }))).toEqual([
    { outcome: 'queued', task_id: null, reported_status: 'failed' },
  ]);

  const created = await createTask(svcShort.api, { partner: 'sim', requestNo, payload: NEVER_CALLS_BACK });
  const settled = await eventually(
    async () => {
      const t = await getTask(svcShort.api, created.id);
      return t.status === 'failed' ? t : undefined;
    },
    'the queued callback to be applied to the new task',
    1000,
  );
  expect(settled).toMatchObject({ status: 'failed', settledBy: 'callback', error: { code: 'E_LATE' } });

  const rows = await inboxRowsByRequestNo(db, 'sim', requestNo);
  expect(rows.map((r) => ({ outcome: r.outcome, task_id: r.task_id }))).toEqual([{ outcome: 'applied', task_id: created.id }]);
  const events = await getEvents(svcShort.api, created.id);
  expect(events.filter((e) => e.source === 'callback').map((e) => `${e.from}->${e.to}`)).toEqual(['pending->failed']);

  // The definitive queued callback was applied before any dispatch: the partner never saw the task.
  await dispatcherIdle(svcShort);
  expect(svcShort.simulator.stats().byRequestNo[requestNo]?.dispatches ?? 0).toBe(0);
});

test('/metrics counts callbacks by outcome (applied, queued, duplicate, unauthorized) and the lookup wait histogram', async () => {
  const name = 'callback_reconciler_callbacks_total';
  const before = await scrape(svcShort);
  const count = (samples: typeof before, outcome: string) => sample(samples, name, { partner: 'sim', outcome }) ?? 0;
  const waitCount = (samples: typeof before) => sample(samples, 'callback_reconciler_callback_lookup_wait_seconds_count') ?? 0;
  const waitSum = (samples: typeof before) => sample(samples, 'callback_reconciler_callback_lookup_wait_seconds_sum') ?? 0;

  // applied, then a redelivery of the same message: duplicate
  const rnApplied = newRequestNo('m-applied');
  await createTask(svcShort.api, { partner: 'sim', requestNo: rnApplied, payload: NEVER_CALLS_BACK });
  const applied = signCallback(report(rnApplied, 'succeeded'), { secret: TEST_SECRET });
  expect(answerOf(await postCallback(svcShort.url, 'sim', applied))).toBe('200 applied');
  expect(answerOf(await postCallback(svcShort.url, 'sim', applied))).toBe('200 duplicate');
  // queued: no task within the bound
  const rnQueued = newRequestNo('m-queued');
  expect(answerOf(await postCallback(svcShort.url, 'sim', signCallback(report(rnQueued, 'succeeded'), { secret: TEST_SECRET })))).toBe('202 queued');
  // unauthorized: signed with a secret nobody configured
  const bad = await postCallback(svcShort.url, 'sim', signCallback(report(rnApplied, 'failed'), { secret: randomSecret() }));
  expect(bad.status).toBe(401);

  const after = await scrape(svcShort);
  expect(count(after, 'applied') - count(before, 'applied')).toBe(1);
  expect(count(after, 'duplicate') - count(before, 'duplicate')).toBe(1);
  expect(count(after, 'queued') - count(before, 'queued')).toBe(1);
  expect(count(after, 'unauthorized') - count(before, 'unauthorized')).toBe(1);
  for (const outcome of ['applied', 'queued', 'duplicate', 'unauthorized']) {
    expect(sample(after, name, { partner: 'sim', outcome })).toBeGreaterThan(0);
  }

  // The histogram exists and observed the two stored callbacks; the queued one waited the whole bound.
  expect(waitCount(after)).toBeGreaterThan(0);
  expect(waitCount(after) - waitCount(before)).toBe(2);
  expect(waitSum(after) - waitSum(before)).toBeGreaterThanOrEqual(0.99);
  const inf = after.find((s) => s.name === 'callback_reconciler_callback_lookup_wait_seconds_bucket' && s.labels.le === '+Inf');
  expect(inf?.value).toBe(waitCount(after));
  // No label carries an id.
  for (const s of after.filter((x) => x.name.startsWith('callback_reconciler_callback'))) {
    expect(Object.keys(s.labels).every((k) => ['partner', 'outcome', 'le'].includes(k))).toBe(true);
  }
});
