import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import type { ApiTask } from '../../src/tasks/task-schemas';
import {
  answerOf,
  createTask,
  expectProblem,
  getEvents,
  getTask,
  inboxCount,
  inboxRowsByRequestNo,
  inboxRowsByWebhookId,
  NEVER_CALLS_BACK,
  newRequestNo,
  postCallback,
  report,
  sample,
  scrape,
  signCallback,
  sleep,
  waitForDispatchRecorded,
  quietTask as quietTaskOf,
} from './callback-helpers';

/**
 * What a stored callback does to its task: redeliveries change nothing, reports apply once and in order of
 * truth (a contradiction of a final status is a recorded conflict, never applied), partner shapes go
 * through `mapping`, and an untrusted (`verify: "poll"`) partner's callback only makes the task due.
 */

const MAPPING = {
  requestNo: '/data/ref',
  status: '/data/state',
  result: '/data/output',
  statusValues: { DONE: 'succeeded', ERR: 'failed', WIP: 'processing' },
};

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    extraPartners: [
      { id: 'mapped', baseUrl: '{simulator}', callback: { secret: TEST_SECRET }, mapping: MAPPING },
      { id: 'pollp', baseUrl: '{simulator}', callback: { verify: 'poll' } },
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** An open task nothing else will move while the test runs (see callback-helpers). */
const quietTask = (partner = 'sim'): Promise<ApiTask> => quietTaskOf(svc.api, partner, 'apply');

async function conflictEvents(taskId: string) {
  return (await getEvents(svc.api, taskId)).filter((e) => e.detail?.type === 'conflict');
}

describe('duplicates: webhook-id de-duplicates', () => {
  test('the same webhook-id twice: the second answers 200 duplicate; one inbox row', async () => {
    const task = await quietTask();
    const cb = signCallback(report(task.requestNo, 'succeeded', { result: { v: 1 } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', cb))).toBe('200 applied');
    const settled = await getTask(svc.api, task.id);
    const eventsAfterFirst = await getEvents(svc.api, task.id);

    const again = await postCallback(svc.url, 'sim', cb);
    expect(again.status).toBe(200);
    expect(again.data).toEqual({ outcome: 'duplicate' });
    expect((await inboxRowsByWebhookId(db, 'sim', cb.headers['webhook-id']!)).map((r) => r.outcome)).toEqual(['applied']);
    expect(await getTask(svc.api, task.id)).toEqual(settled);
    expect(await getEvents(svc.api, task.id)).toEqual(eventsAfterFirst);
  });

  test('a repeat of a webhook-id with a different (correctly signed) body is still a duplicate and changes nothing', async () => {
    const task = await quietTask();
    const first = signCallback(report(task.requestNo, 'succeeded', { result: { v: 2 } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', first))).toBe('200 applied');
    const settled = await getTask(svc.api, task.id);
    const inboxBefore = await inboxCount(db);

    const contradicting = signCallback(report(task.requestNo, 'failed'), { secret: TEST_SECRET, webhookId: first.headers['webhook-id']! });
    expect(answerOf(await postCallback(svc.url, 'sim', contradicting))).toBe('200 duplicate');
    expect(await getTask(svc.api, task.id)).toEqual(settled);
    expect(await inboxCount(db)).toBe(inboxBefore);
    expect(await conflictEvents(task.id)).toEqual([]);
  });

  test('two copies sent at the same instant: exactly one non-duplicate answer, one inbox row, one callback event', async () => {
    const task = await quietTask();
    const cb = signCallback(report(task.requestNo, 'succeeded'), { secret: TEST_SECRET });
    const answers = await Promise.all([postCallback(svc.url, 'sim', cb), postCallback(svc.url, 'sim', cb)]);
    expect(answers.map(answerOf).sort()).toEqual(['200 applied', '200 duplicate']);
    expect((await inboxRowsByWebhookId(db, 'sim', cb.headers['webhook-id']!)).map((r) => r.outcome)).toEqual(['applied']);
    const events = await getEvents(svc.api, task.id);
    expect(events.filter((e) => e.source === 'callback').map((e) => `${e.from}->${e.to}`)).toEqual(['dispatched->succeeded']);
  });

  test('two copies at the same instant before the task exists: one applied, one duplicate, once the task appears', async () => {
    const requestNo = newRequestNo('dup-early');
    const cb = signCallback(report(requestNo, 'failed', { error: { code: 'E_TWICE' } }), { secret: TEST_SECRET });
    const pending = Promise.all([postCallback(svc.url, 'sim', cb), postCallback(svc.url, 'sim', cb)]);
    await sleep(100);
    const created = await createTask(svc.api, { partner: 'sim', requestNo, payload: NEVER_CALLS_BACK });
    expect((await pending).map(answerOf).sort()).toEqual(['200 applied', '200 duplicate']);
    expect(await getTask(svc.api, created.id)).toMatchObject({ status: 'failed', settledBy: 'callback', error: { code: 'E_TWICE' } });
    expect((await inboxRowsByRequestNo(db, 'sim', requestNo)).map((r) => r.outcome)).toEqual(['applied']);
  });
});

describe('apply once, in order of truth', () => {
  test('processing confirms receipt, succeeded settles, a contradicting failed is a recorded conflict, a repeated succeeded is ignored', async () => {
    // The partner holds the dispatch answer far beyond the dispatch timeout: the task stays pending.
    const created = await createTask(svc.api, {
      partner: 'sim',
      requestNo: newRequestNo('truth'),
      payload: { simulate: { dispatch: { delayMs: 5000 }, callback: { mode: 'never' }, processingForMs: 600_000 } },
    });
    const rn = created.requestNo;
    expect((await getTask(svc.api, created.id)).status).toBe('pending');
    const conflictsBefore = sample(await scrape(svc), 'callback_reconciler_settlement_conflicts_total', { partner: 'sim' }) ?? 0;

    // processing: pending -> dispatched
    const processing = signCallback(report(rn, 'processing'), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', processing))).toBe('200 applied');
    const dispatched = await getTask(svc.api, created.id);
    expect(dispatched).toMatchObject({ status: 'dispatched', settledBy: null, result: null });
    expect(dispatched.dispatchedAt).not.toBeNull();
    expect(dispatched.completedAt).toBeNull();
    expect(dispatched.nextCheckAt).not.toBeNull();

    // succeeded: dispatched -> succeeded
    const succeeded = signCallback(report(rn, 'succeeded', { result: { final: 'yes' } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', succeeded))).toBe('200 applied');
    const settled = await getTask(svc.api, created.id);
    expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { final: 'yes' }, error: null, nextCheckAt: null });
    expect(settled.completedAt).not.toBeNull();

    // failed contradicts the final status: ignored, recorded as a conflict, counted
    const failed = signCallback(report(rn, 'failed', { error: { code: 'E_CONTRA' } }), { secret: TEST_SECRET });
    const contra = await postCallback(svc.url, 'sim', failed);
    expect(contra.status).toBe(200);
    expect(contra.data).toEqual({ outcome: 'ignored' });
    expect(await getTask(svc.api, created.id)).toEqual(settled);
    const conflicts = await conflictEvents(created.id);
    expect(conflicts).toHaveLength(1);
    expect(conflicts[0]).toMatchObject({ from: 'succeeded', to: 'succeeded', source: 'callback' });
    expect(conflicts[0]!.detail).toMatchObject({ type: 'conflict', reported: 'failed' });
    const metrics = await scrape(svc);
    expect(sample(metrics, 'callback_reconciler_settlement_conflicts_total', { partner: 'sim' })).toBe(conflictsBefore + 1);
    expect(conflictsBefore).toBe(0);

    // a repeated succeeded (new id) agrees with the final status: ignored, no conflict
    const repeat = signCallback(report(rn, 'succeeded', { result: { final: 'again' } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', repeat))).toBe('200 ignored');
    expect(await getTask(svc.api, created.id)).toEqual(settled);
    expect(await conflictEvents(created.id)).toHaveLength(1);
    expect(sample(await scrape(svc), 'callback_reconciler_settlement_conflicts_total', { partner: 'sim' })).toBe(conflictsBefore + 1);

    // The audit trail and the inbox tell the same story, each callback exactly once.
    const events = await getEvents(svc.api, created.id);
    expect(events.filter((e) => e.source === 'callback').map((e) => `${e.from}->${e.to}`)).toEqual([
      'pending->dispatched',
      'dispatched->succeeded',
      'succeeded->succeeded',
    ]);
    const rows = await inboxRowsByRequestNo(db, 'sim', rn);
    expect(rows.map((r) => [r.webhook_id, r.outcome, r.task_id])).toEqual([
      [processing.headers['webhook-id'], 'applied', created.id],
      [succeeded.headers['webhook-id'], 'applied', created.id],
      [failed.headers['webhook-id'], 'conflict', created.id],
      [repeat.headers['webhook-id'], 'ignored', created.id],
    ]);
  });

  test('an expired task still accepts a late, definitive succeeded', async () => {
    const task = await quietTask();
    // The reconciler that expires tasks is not built yet: expire it by hand.
    await sql`update tasks set status = 'expired', next_check_at = null, completed_at = now() where id = ${task.id}::uuid`.execute(db.handle.db);
    expect((await getTask(svc.api, task.id)).status).toBe('expired');

    const late = signCallback(report(task.requestNo, 'succeeded', { result: { late: true } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', late))).toBe('200 applied');
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { late: true } });
    const events = await getEvents(svc.api, task.id);
    expect(events.filter((e) => e.source === 'callback').map((e) => `${e.from}->${e.to}`)).toEqual(['expired->succeeded']);
  });
});

describe('mapping: a partner with its own body shape', () => {
  test('{data:{ref, state:"DONE", output}} settles the task with that result', async () => {
    const task = await quietTask('mapped');
    const body = { data: { ref: task.requestNo, state: 'DONE', output: { score: 7, feedback: 'fine' } } };
    expect(answerOf(await postCallback(svc.url, 'mapped', signCallback(body, { secret: TEST_SECRET })))).toBe('200 applied');
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { score: 7, feedback: 'fine' } });
  });

  test('state "ERR" (mapped to failed) fails the task', async () => {
    const task = await quietTask('mapped');
    const body = { data: { ref: task.requestNo, state: 'ERR' }, error: { reason: 'bad input' } };
    expect(answerOf(await postCallback(svc.url, 'mapped', signCallback(body, { secret: TEST_SECRET })))).toBe('200 applied');
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'failed', settledBy: 'callback', error: { reason: 'bad input' } });
  });

  test.each([
    ['an unknown state', (ref: string) => ({ data: { ref, state: 'MAYBE', output: { x: 1 } } })],
    ['no ref', (_ref: string) => ({ data: { state: 'DONE', output: { x: 1 } } })],
    ['the default protocol shape', (ref: string) => ({ requestNo: ref, status: 'succeeded' })],
  ])('a body with %s answers 400 problem+json and is stored as unreadable with the raw body', async (_name, build) => {
    const task = await quietTask('mapped');
    const cb = signCallback(build(task.requestNo), { secret: TEST_SECRET });
    const res = await postCallback(svc.url, 'mapped', cb);
    expectProblem(res, 400);
    const rows = await inboxRowsByWebhookId(db, 'mapped', cb.headers['webhook-id']!);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ outcome: 'unreadable', raw_body: cb.body });
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'dispatched', settledBy: null });
  });
});

describe('verify "poll": an untrusted partner', () => {
  function unsignedClaim(requestNo: string) {
    // Unsigned, and it claims success with a result of its own.
    return { body: JSON.stringify(report(requestNo, 'succeeded', { result: { trust: 'me' } })), headers: { 'content-type': 'application/json' } };
  }

  test('its callback answers 202 poll, settles nothing, stores nothing, and makes the task due now', async () => {
    const task = await quietTask('pollp');
    expect(task.status).toBe('dispatched');
    expect(new Date(task.nextCheckAt!).getTime()).toBeGreaterThan(Date.now());
    const eventsBefore = await getEvents(svc.api, task.id);
    const inboxBefore = await inboxCount(db);

    // The reconciler reacts to the nudge at once and would move nextCheckAt on by claiming the task;
    // hold it so what the callback itself did stays visible.
    await svc.runtime.reconciler.stop();
    try {
      const res = await postCallback(svc.url, 'pollp', unsignedClaim(task.requestNo));
      expect(res.status).toBe(202);
      expect(res.data).toEqual({ outcome: 'poll' });
      const answeredAt = Date.now();

      const after = await getTask(svc.api, task.id);
      expect(after).toMatchObject({ status: 'dispatched', settledBy: null, result: null });
      expect(after.nextCheckAt).not.toBeNull();
      expect(new Date(after.nextCheckAt!).getTime()).toBeLessThanOrEqual(answeredAt);
      expect(await inboxCount(db)).toBe(inboxBefore);
      const events = await getEvents(svc.api, task.id);
      expect(events.filter((e) => e.source === 'callback')).toEqual([]);
      expect(events).toEqual(eventsBefore);
    } finally {
      svc.runtime.reconciler.start();
    }
  });

  test('its callback only triggers a status query: the task settles by poll with what the status endpoint says', async () => {
    // The partner's status endpoint reports succeeded with its default result; the callback claims another.
    const created = await createTask(svc.api, { partner: 'pollp', requestNo: newRequestNo('pollp'), payload: NEVER_CALLS_BACK });
    const task = await waitForDispatchRecorded(svc.api, created.id);
    expect(task.status).toBe('dispatched');
    const scheduledCheck = new Date(task.nextCheckAt!).getTime();
    const inboxBefore = await inboxCount(db);

    const res = await postCallback(svc.url, 'pollp', unsignedClaim(task.requestNo));
    expect(answerOf(res)).toBe('202 poll');

    // Asked well before the check it had scheduled (30 s after dispatch).
    const settled = await eventually(
      async () => {
        const t = await getTask(svc.api, task.id);
        return t.status === 'succeeded' ? t : undefined;
      },
      'the status query the callback triggered to settle the task',
      5000,
    );
    expect(Date.now()).toBeLessThan(scheduledCheck);
    expect(settled.settledBy).toBe('poll');
    expect(settled.result).toEqual({ simulated: true });
    expect(svc.simulator.stats().byRequestNo[task.requestNo]?.statusQueries).toBeGreaterThanOrEqual(1);
    const events = await getEvents(svc.api, task.id);
    expect(events.filter((e) => e.source === 'callback')).toEqual([]);
    expect(events.filter((e) => e.to === 'succeeded').map((e) => e.source)).toEqual(['poll']);
    expect(await inboxCount(db)).toBe(inboxBefore);
  });
});
