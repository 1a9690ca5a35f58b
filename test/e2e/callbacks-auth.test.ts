import type { AxiosResponse } from 'axios';
import { Webhook } from 'standardwebhooks';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { OTHER_SECRET, startTestService, TEST_SECRET, type TestService } from '../support/service';
import type { ApiTask } from '../../src/tasks/task-schemas';
import {
  answerOf,
  expectProblem,
  getEvents,
  getTask,
  inboxCount,
  inboxRowsByWebhookId,
  newWebhookId,
  postCallback,
  randomSecret,
  report,
  sample,
  scrape,
  signCallback,
  type SignedCallback,
  quietTask as quietTaskOf,
} from './callback-helpers';

/**
 * Authentication of partner callbacks (Standard Webhooks): every refusal answers the documented status as
 * problem+json, stores nothing and leaves the task alone; rotation accepts old, new and both signatures.
 */

const MAX_BODY_BYTES = 2048;
const SIX_MINUTES_MS = 6 * 60_000;

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    env: { MAX_BODY_BYTES: String(MAX_BODY_BYTES) },
    extraPartners: [{ id: 'rotating', baseUrl: '{simulator}', callback: { secret: [TEST_SECRET, OTHER_SECRET] } }],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** An open task nothing else will move while the test runs (see callback-helpers). */
const quietTask = (partner = 'sim'): Promise<ApiTask> => quietTaskOf(svc.api, partner, 'auth');

function without(cb: SignedCallback, header: string): SignedCallback {
  const headers = { ...cb.headers };
  delete headers[header];
  return { body: cb.body, headers };
}

describe('refusals store nothing and change nothing', () => {
  let task: ApiTask;
  beforeAll(async () => {
    task = await quietTask();
    expect(task.status).toBe('dispatched');
  });

  /** Sends a refused callback; checks the problem answer, the inbox count and the task before and after. */
  async function expectRefused(send: () => Promise<AxiosResponse>, status: number): Promise<Record<string, unknown>> {
    const inboxBefore = await inboxCount(db);
    const taskBefore = await getTask(svc.api, task.id);
    const eventsBefore = await getEvents(svc.api, task.id);
    const res = await send();
    const problem = expectProblem(res, status);
    expect(await inboxCount(db)).toBe(inboxBefore);
    expect(await getTask(svc.api, task.id)).toEqual(taskBefore);
    expect(await getEvents(svc.api, task.id)).toEqual(eventsBefore);
    return problem;
  }

  const succeeded = () => report(task.requestNo, 'succeeded', { result: { forged: true } });

  const unauthorized: Array<[string, () => SignedCallback]> = [
    [
      'a body other than the one signed (tampered)',
      () => {
        const signed = signCallback(succeeded(), { secret: TEST_SECRET });
        return { headers: signed.headers, body: JSON.stringify(report(task.requestNo, 'failed')) };
      },
    ],
    ['a signature made with the wrong secret', () => signCallback(succeeded(), { secret: OTHER_SECRET })],
    ['a timestamp 6 minutes old', () => signCallback(succeeded(), { secret: TEST_SECRET, at: new Date(Date.now() - SIX_MINUTES_MS) })],
    ['a timestamp 6 minutes in the future', () => signCallback(succeeded(), { secret: TEST_SECRET, at: new Date(Date.now() + SIX_MINUTES_MS) })],
    ['no webhook-id header', () => without(signCallback(succeeded(), { secret: TEST_SECRET }), 'webhook-id')],
    ['no webhook-timestamp header', () => without(signCallback(succeeded(), { secret: TEST_SECRET }), 'webhook-timestamp')],
    ['no webhook-signature header', () => without(signCallback(succeeded(), { secret: TEST_SECRET }), 'webhook-signature')],
    [
      'a correct signature under an unknown version (v2)',
      () => {
        const signed = signCallback(succeeded(), { secret: TEST_SECRET });
        return { body: signed.body, headers: { ...signed.headers, 'webhook-signature': signed.headers['webhook-signature']!.replace(/^v1,/, 'v2,') } };
      },
    ],
    [
      'a signature that covers another webhook-id',
      () => {
        const signed = signCallback(succeeded(), { secret: TEST_SECRET });
        return { body: signed.body, headers: { ...signed.headers, 'webhook-id': newWebhookId() } };
      },
    ],
  ];

  test.each(unauthorized)('401 for %s', async (_name, build) => {
    const problem = await expectRefused(() => postCallback(svc.url, 'sim', build()), 401);
    expect(problem.status).toBe(401);
  });

  test('404 for an unknown partner, even with a valid signature', async () => {
    await expectRefused(() => postCallback(svc.url, 'nobody', signCallback(succeeded(), { secret: TEST_SECRET })), 404);
  });

  test(`413 for a correctly signed body over MAX_BODY_BYTES (${MAX_BODY_BYTES})`, async () => {
    const big = report(task.requestNo, 'succeeded', { result: { pad: 'x'.repeat(MAX_BODY_BYTES + 100) } });
    const cb = signCallback(big, { secret: TEST_SECRET });
    expect(Buffer.byteLength(cb.body)).toBeGreaterThan(MAX_BODY_BYTES);
    await expectRefused(() => postCallback(svc.url, 'sim', cb), 413);
  });

  test('400 for malformed JSON that is correctly signed; it is not stored', async () => {
    const cb = signCallback(`{"requestNo": "${task.requestNo}", "status": "succeeded"`, { secret: TEST_SECRET });
    await expectRefused(() => postCallback(svc.url, 'sim', cb), 400);
    expect(await inboxRowsByWebhookId(db, 'sim', cb.headers['webhook-id']!)).toEqual([]);
  });

  test('a refused signature is counted as callbacks_total{partner="sim",outcome="unauthorized"}', async () => {
    const name = 'callback_reconciler_callbacks_total';
    const before = sample(await scrape(svc), name, { partner: 'sim', outcome: 'unauthorized' }) ?? 0;
    await expectRefused(() => postCallback(svc.url, 'sim', signCallback(succeeded(), { secret: randomSecret() })), 401);
    await expectRefused(() => postCallback(svc.url, 'sim', without(signCallback(succeeded(), { secret: TEST_SECRET }), 'webhook-signature')), 401);
    const after = sample(await scrape(svc), name, { partner: 'sim', outcome: 'unauthorized' });
    expect(after).toBe(before + 2);
  });

  test('after all the refusals, a correctly signed callback is still accepted and applied', async () => {
    const cb = signCallback(report(task.requestNo, 'succeeded', { result: { real: true } }), { secret: TEST_SECRET });
    expect(answerOf(await postCallback(svc.url, 'sim', cb))).toBe('200 applied');
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'succeeded', settledBy: 'callback', result: { real: true } });
  });
});

describe('secret rotation: a partner configured with [old, new]', () => {
  const OLD = TEST_SECRET;
  const NEW = OTHER_SECRET;

  async function expectAccepted(cb: SignedCallback, task: ApiTask): Promise<void> {
    const res = await postCallback(svc.url, 'rotating', cb);
    expect(answerOf(res)).toBe('200 applied');
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'succeeded', settledBy: 'callback' });
    const rows = await inboxRowsByWebhookId(db, 'rotating', cb.headers['webhook-id']!);
    expect(rows.map((r) => r.outcome)).toEqual(['applied']);
  }

  test('a header carrying both signatures (old and new, space-separated) is accepted', async () => {
    const task = await quietTask('rotating');
    const cb = signCallback(report(task.requestNo, 'succeeded'), { secret: [OLD, NEW] });
    const [a, b] = cb.headers['webhook-signature']!.split(' ');
    const id = cb.headers['webhook-id']!;
    const at = new Date(Number(cb.headers['webhook-timestamp']) * 1000);
    expect(a).toBe(new Webhook(OLD).sign(id, at, cb.body));
    expect(b).toBe(new Webhook(NEW).sign(id, at, cb.body));
    await expectAccepted(cb, task);
  });

  test('a callback signed only with the old secret is accepted', async () => {
    const task = await quietTask('rotating');
    await expectAccepted(signCallback(report(task.requestNo, 'succeeded'), { secret: OLD }), task);
  });

  test('a callback signed only with the new secret is accepted', async () => {
    const task = await quietTask('rotating');
    await expectAccepted(signCallback(report(task.requestNo, 'succeeded'), { secret: NEW }), task);
  });

  test('an invalid signature next to a valid one is accepted (any matching v1 signature counts)', async () => {
    const task = await quietTask('rotating');
    const cb = signCallback(report(task.requestNo, 'succeeded'), { secret: [randomSecret(), NEW] });
    await expectAccepted(cb, task);
  });

  test('a callback signed with a third secret is refused with 401 and stores nothing', async () => {
    const task = await quietTask('rotating');
    const before = await inboxCount(db);
    const cb = signCallback(report(task.requestNo, 'succeeded'), { secret: randomSecret() });
    const res = await postCallback(svc.url, 'rotating', cb);
    expectProblem(res, 401);
    expect(await inboxCount(db)).toBe(before);
    expect(await getTask(svc.api, task.id)).toMatchObject({ status: 'dispatched', settledBy: null });
  });

  test('the old secret of a rotating partner does not open another partner: sim refuses OTHER_SECRET', async () => {
    const task = await quietTask('sim');
    const res = await postCallback(svc.url, 'sim', signCallback(report(task.requestNo, 'succeeded'), { secret: NEW }));
    expectProblem(res, 401);
    expect((await getTask(svc.api, task.id)).status).toBe('dispatched');
  });
});
