import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { answerOf, Limiter, NEVER_CALLS_BACK, newRequestNo, postCallback, report, signCallback, sleep } from './callback-helpers';

/**
 * A callback stored before its task exists is applied before the task is dispatched, however the paths that
 * may apply it race: task creation, the inbox safety net (every second, in each process), and a callback
 * handler still waiting for the task in another process. A task whose partner already reported a
 * definitive outcome must never be sent to the partner, and each callback is applied exactly once.
 */

const TASKS = 400;
/** Creates are spread over about 3 s, so they overlap several safety-net ticks of both processes. */
const CREATE_SPACING_MS = 7;

let db: TestDatabase;
let a: TestService;
let b: TestService;
/** Default bound (3000 ms): a callback sent here waits for its task in a bounded re-lookup. */
let c: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  // A zero bound: every callback whose task is absent is queued at once.
  a = await startTestService({ db, env: { CALLBACK_LOOKUP_TIMEOUT_MS: '0' } });
  b = await startTestService({ db, simulator: a.simulator, env: { CALLBACK_LOOKUP_TIMEOUT_MS: '0' } });
  c = await startTestService({ db, simulator: a.simulator });
});
afterAll(async () => {
  await c?.stop();
  await b?.stop();
  await a?.stop();
  await db?.drop();
});

test(`${TASKS} tasks created after their definitive callbacks were queued: each settles by its callback and none is dispatched`, async () => {
  const plans = Array.from({ length: TASKS }, (_, i) => ({
    requestNo: newRequestNo(`q${i}`),
    outcome: i % 3 === 0 ? ('failed' as const) : ('succeeded' as const),
  }));

  // 1. The partner reports first: every callback is stored and queued.
  const callbackLimiter = new Limiter(30);
  const answers = await Promise.all(
    plans.map((p, i) =>
      callbackLimiter.run(() =>
        postCallback([a, b][i % 2]!.url, 'sim', signCallback(report(p.requestNo, p.outcome, p.outcome === 'failed' ? { error: { i } } : { result: { i } }), { secret: TEST_SECRET })),
      ),
    ),
  );
  expect(new Set(answers.map(answerOf))).toEqual(new Set(['202 queued']));
  const { rows: queuedRows } = await sql<{ n: number }>`select count(*)::int as n from callback_inbox where outcome = 'queued'`.execute(db.handle.db);
  expect(queuedRows[0]!.n).toBe(TASKS);

  // 2. The tasks appear, from both processes, while both safety nets run.
  const createLimiter = new Limiter(20);
  const start = Date.now();
  const created = await Promise.all(
    plans.map(async (p, i) => {
      await sleep(Math.max(0, start + i * CREATE_SPACING_MS - Date.now()));
      return createLimiter.run(() => [b, a][i % 2]!.api.post('/v1/tasks', { partner: 'sim', requestNo: p.requestNo, payload: NEVER_CALLS_BACK }));
    }),
  );
  expect(created.filter((res) => res.status !== 201).map((res) => `${res.status} ${JSON.stringify(res.data)}`)).toEqual([]);

  // 3. Every task settles by its callback...
  const requestNos = plans.map((p) => p.requestNo);
  const rows = await eventually(
    async () => {
      const { rows } = await sql<{ request_no: string; status: string; settled_by: string | null }>`
        select request_no, status, settled_by from tasks where partner = 'sim' and request_no = any(${requestNos}::text[])`.execute(db.handle.db);
      return rows.length === TASKS && rows.every((r) => r.status === 'succeeded' || r.status === 'failed') ? rows : undefined;
    },
    'every task to settle',
    2000,
  );
  const status = new Map(rows.map((r) => [r.request_no, `${r.status}/${r.settled_by}`]));
  expect(plans.filter((p) => status.get(p.requestNo) !== `${p.outcome}/callback`).map((p) => `${p.requestNo}: ${status.get(p.requestNo)}`)).toEqual([]);
  const { rows: left } = await sql<{ n: number }>`select count(*)::int as n from callback_inbox where outcome = 'queued'`.execute(db.handle.db);
  expect(left[0]!.n).toBe(0);

  // ...and the partner never received any of them: the outcome was known before a dispatch was due.
  await eventually(async () => a.runtime.dispatcher.activeCount === 0 && b.runtime.dispatcher.activeCount === 0, 'the dispatchers to go idle');
  const stats = a.simulator.stats().byRequestNo;
  const dispatched = plans.filter((p) => (stats[p.requestNo]?.dispatches ?? 0) > 0).map((p) => p.requestNo);
  expect(dispatched).toEqual([]);
});

test('tasks created while their stored callbacks wait in another process: each applied once, none dispatched', async () => {
  const N = 150;
  const plans = Array.from({ length: N }, (_, i) => ({ requestNo: newRequestNo(`w${i}`), outcome: i % 4 === 0 ? ('failed' as const) : ('succeeded' as const) }));
  const requestNos = plans.map((p) => p.requestNo);

  // 1. The callbacks reach process c first and wait there (bounded re-lookup) for tasks that do not exist yet.
  const answers = Promise.all(
    plans.map((p) => postCallback(c.url, 'sim', signCallback(report(p.requestNo, p.outcome, p.outcome === 'failed' ? { error: { p: p.requestNo } } : { result: { p: p.requestNo } }), { secret: TEST_SECRET }))),
  );
  // All of them are stored before any task is created: the outcome is known before any dispatch.
  await eventually(
    async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from callback_inbox where partner = 'sim' and request_no = any(${requestNos}::text[])`.execute(db.handle.db);
      return rows[0]!.n === N;
    },
    'every callback to be stored',
    // Generous: 150 signed callbacks stored by one process while the rest of the suite loads both cores.
    // The property is the order (all stored before any task exists), not the speed.
    30_000,
  );

  // 2. Process a creates the tasks while c's waiting callbacks look for them.
  const createLimiter = new Limiter(20);
  const created = await Promise.all(
    plans.map((p) => createLimiter.run(() => a.api.post('/v1/tasks', { partner: 'sim', requestNo: p.requestNo, payload: NEVER_CALLS_BACK }))),
  );
  expect(created.filter((res) => res.status !== 201).map((res) => `${res.status} ${JSON.stringify(res.data)}`)).toEqual([]);
  // Each callback is answered as applied (or, if its task came after the bound on a slow machine, queued).
  const got = (await answers).map(answerOf);
  expect(got.filter((x) => x !== '200 applied' && x !== '202 queued')).toEqual([]);

  // 3. Each task settled by its callback, applied exactly once...
  const rows = await eventually(
    async () => {
      const { rows } = await sql<{ request_no: string; status: string; settled_by: string | null; applied: number; callback_events: number }>`
        select t.request_no, t.status, t.settled_by,
          (select count(*)::int from callback_inbox i where i.partner = t.partner and i.request_no = t.request_no and i.outcome = 'applied' and i.task_id = t.id) as applied,
          (select count(*)::int from task_events e where e.task_id = t.id and e.source = 'callback') as callback_events
        from tasks t where t.partner = 'sim' and t.request_no = any(${requestNos}::text[])`.execute(db.handle.db);
      return rows.length === N && rows.every((r) => r.status === 'succeeded' || r.status === 'failed') ? rows : undefined;
    },
    'every task to settle',
    2000,
  );
  const byRn = new Map(rows.map((r) => [r.request_no, `${r.status}/${r.settled_by}/${r.applied}/${r.callback_events}`]));
  expect(plans.filter((p) => byRn.get(p.requestNo) !== `${p.outcome}/callback/1/1`).map((p) => `${p.requestNo}: ${byRn.get(p.requestNo)}`)).toEqual([]);

  // ...and none was sent to the partner.
  await eventually(async () => a.runtime.dispatcher.activeCount === 0, 'the dispatcher to go idle');
  const stats = a.simulator.stats().byRequestNo;
  expect(plans.filter((p) => (stats[p.requestNo]?.dispatches ?? 0) > 0).map((p) => p.requestNo)).toEqual([]);
});
