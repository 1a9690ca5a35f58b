import type http from 'node:http';
import { sql } from 'kysely';
import stableStringify from 'safe-stable-stringify';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { answerOf, inboxCount, newRequestNo, newWebhookId, postCallback, report, signCallback } from './callback-helpers';
import { countRows, errorFields, expectProblem, NO_CALLBACK, quiesce, rawRequest, readBody, startPartnerServer, uniqueRequestNo, type TestPartnerServer } from './helpers';

/**
 * Issue 7, items 8-10: text Postgres cannot store, object-key status words, over-long identifiers and
 * dot-only request numbers. A client's unstorable input is a 422 that stores nothing; a partner's is made
 * storable and still settles the task; nothing is ever a 500.
 */

let db: TestDatabase;
let svc: TestService;
/** A partner whose answers carry unstorable text: dispatch says `processing`, status says `succeeded`. */
let odd: TestPartnerServer;
const statusPaths: string[] = [];
const NUL = '\u0000';
const LONE = '\uD800';

function nested(depth: number): Record<string, unknown> {
  let v: Record<string, unknown> = { leaf: true };
  for (let i = 1; i < depth; i++) v = { n: v };
  return v;
}

const hostileResult = { text: `a${NUL}b`, half: `x${LONE}y`, [`key${NUL}`]: 1, deep: nested(100) };

beforeAll(async () => {
  odd = await startPartnerServer((req: http.IncomingMessage, res: http.ServerResponse) => {
    void readBody(req).then((body) => {
      res.setHeader('content-type', 'application/json');
      if (req.method === 'POST') {
        const { requestNo, payload } = JSON.parse(body) as { requestNo: string; payload: { final?: boolean } };
        // JSON.stringify writes NUL as \u0000 and a lone surrogate as \ud800: valid JSON Postgres refuses.
        res.end(JSON.stringify(payload.final ? { requestNo, status: 'succeeded', result: hostileResult, error: null } : { requestNo, status: 'processing' }));
        return;
      }
      statusPaths.push(req.url ?? '');
      const requestNo = decodeURIComponent((req.url ?? '').split('/').pop() ?? '');
      res.end(JSON.stringify({ requestNo, status: 'failed', error: { message: `bad${NUL}`, huge: 'e'.repeat(20_000) } }));
    });
  });
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    background: false,
    env: { CALLBACK_LOOKUP_TIMEOUT_MS: '200' },
    extraPartners: [
      { id: 'odd', baseUrl: odd.url, callback: { verify: 'poll' } },
      {
        id: 'mapped',
        baseUrl: '{simulator}',
        callback: { secret: TEST_SECRET },
        mapping: { status: '/state', requestNo: '/ref', statusValues: { DONE: 'succeeded' } },
      },
    ],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
  await odd?.close();
});

async function expectRefusedAndNothingStored(body: unknown, field: string): Promise<void> {
  await quiesce(svc);
  const before = await countRows(db);
  const res = await rawRequest(`${svc.url}/v1/tasks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: svc.api.defaults.headers.authorization as string },
    body: JSON.stringify(body),
  });
  const problem = expectProblem(res, 422);
  expect(errorFields(problem)).toContain(field);
  await quiesce(svc);
  expect(await countRows(db)).toEqual(before);
}

describe('create: unstorable text is a 422 that stores nothing (item 8)', () => {
  test.each([
    ['a NUL in a payload value', { payload: { a: `x${NUL}` } }, 'payload.a'],
    ['a NUL in a payload key', { payload: { [`k${NUL}`]: 1 } }, `payload.k\\u0000`],
    ['a lone high surrogate in the payload', { payload: { list: ['ok', `x${LONE}`] } }, 'payload.list.1'],
    ['a lone low surrogate in metadata', { payload: {}, metadata: { m: '\uDC00' } }, 'metadata.m'],
    ['a NUL in kind', { payload: {}, kind: `k${NUL}` }, 'kind'],
    ['a NUL in notifyUrl', { payload: {}, notifyUrl: `https://client.example/a${NUL}` }, 'notifyUrl'],
    ['payload nested 65 levels', { payload: nested(65) }, `payload.${Array(64).fill('n').join('.')}`],
    ['metadata nested 65 levels', { payload: {}, metadata: nested(65) }, `metadata.${Array(64).fill('n').join('.')}`],
  ])('%s', async (_what, extra, field) => {
    await expectRefusedAndNothingStored({ partner: 'sim', requestNo: uniqueRequestNo('bad'), ...extra }, field);
  });

  test('a NUL hidden under a "__proto__" key is found too', async () => {
    const text = `{"partner":"sim","requestNo":"${uniqueRequestNo('proto')}","payload":{"__proto__":{"x":"\\u0000"}}}`;
    const res = await rawRequest(`${svc.url}/v1/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: svc.api.defaults.headers.authorization as string },
      body: text,
    });
    expect(errorFields(expectProblem(res, 422))).toEqual(['payload.__proto__.x']);
  });

  test('64 levels, paired surrogates and a "__proto__" key are stored and read back exactly', async () => {
    const requestNo = uniqueRequestNo('ok');
    const text = `{"partner":"sim","requestNo":"${requestNo}","payload":{"__proto__":{"a":1},"emoji":"\\ud83d\\ude00","deep":${JSON.stringify(nested(63))},"simulate":${JSON.stringify(NO_CALLBACK)}}}`;
    const res = await rawRequest(`${svc.url}/v1/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: svc.api.defaults.headers.authorization as string },
      body: text,
    });
    expect(res.status).toBe(201);
    const read = await svc.api.get(`/v1/partners/sim/tasks/${requestNo}`, { transformResponse: (d: string) => d });
    const payload = (JSON.parse(read.data as string) as { payload: Record<string, unknown> }).payload;
    expect(Object.hasOwn(payload, '__proto__')).toBe(true);
    // jsonb orders keys its own way: compare in a canonical order.
    expect(stableStringify(payload)).toBe(stableStringify((JSON.parse(text) as { payload: unknown }).payload));
    // A replay with the same text is recognised as the same body.
    const again = await rawRequest(`${svc.url}/v1/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: svc.api.defaults.headers.authorization as string },
      body: text,
    });
    expect(again.status).toBe(200);
  });
});

describe('request numbers made of dots only are refused (item 10)', () => {
  test.each(['.', '..', '...'])('requestNo %p is a 422', async (requestNo) => {
    await expectRefusedAndNothingStored({ partner: 'sim', requestNo, payload: {} }, 'requestNo');
  });

  test('dots inside a request number are fine and reach the partner encoded in one segment', async () => {
    const requestNo = `a..b.${uniqueRequestNo('dots')}`;
    const res = await svc.api.post('/v1/tasks', { partner: 'odd', requestNo, payload: {} });
    expect(res.status).toBe(201);
    await quiesce(svc);
    await svc.runtime.tasks.requestReconcile(res.data.id);
    await svc.runtime.reconciler.runOnce();
    expect(statusPaths).toContain(`/requests/${requestNo}`);
  });
});

describe("a partner's unstorable text is made storable and still settles the task (item 8)", () => {
  test('a dispatch answer with NUL, lone surrogates and 100 levels settles the task', async () => {
    const res = await svc.api.post('/v1/tasks', { partner: 'odd', requestNo: uniqueRequestNo('disp'), payload: { final: true } });
    expect(res.status).toBe(201);
    const task = await eventually(async () => {
      const r = await svc.api.get(`/v1/tasks/${res.data.id}`);
      return r.data.status === 'succeeded' ? r.data : undefined;
    }, 'the dispatch answer to settle the task');
    expect(task.settledBy).toBe('dispatch');
    expect(task.result.text).toBe('a\\u0000b');
    expect(task.result.half).toBe('x\\ud800y');
    expect(task.result['key\\u0000']).toBe(1);
    expect(typeof JSON.stringify(task.result)).toBe('string');
  });

  test("a status answer's unstorable, over-long error is stored escaped and cut", async () => {
    const res = await svc.api.post('/v1/tasks', { partner: 'odd', requestNo: uniqueRequestNo('poll'), payload: {} });
    await quiesce(svc);
    await svc.runtime.tasks.requestReconcile(res.data.id);
    await svc.runtime.reconciler.runOnce();
    const task = (await svc.api.get(`/v1/tasks/${res.data.id}`)).data;
    expect(task.status).toBe('failed');
    expect(typeof task.error).toBe('string');
    expect(task.error).toContain('bad\\\\u0000');
    expect(task.error.length).toBeLessThan(4200);
    expect(task.error).toMatch(/truncated from \d+ characters/);
  });

  test('a signed callback with unstorable text is stored and applied', async () => {
    const created = await svc.api.post('/v1/tasks', { partner: 'sim', requestNo: newRequestNo('cbnul'), payload: { simulate: NO_CALLBACK } });
    await quiesce(svc);
    const cb = signCallback(report(created.data.requestNo, 'succeeded', { result: hostileResult }), { secret: TEST_SECRET });
    const res = await postCallback(svc.url, 'sim', cb);
    expect(answerOf(res)).toBe('200 applied');
    const task = (await svc.api.get(`/v1/tasks/${created.data.id}`)).data;
    expect(task.status).toBe('succeeded');
    expect(task.result.text).toBe('a\\u0000b');
    // The 100-level subtree is kept as its JSON text below level 64.
    let cur = task.result.deep;
    for (let i = 0; i < 62; i++) cur = cur.n;
    expect(typeof cur.n).toBe('string');
    expect(JSON.parse(cur.n as string)).toEqual(nested(100 - 63));
  });
});

describe('object-key status words and over-long identifiers in callbacks (item 9)', () => {
  test.each(['constructor', '__proto__', 'toString', 'hasOwnProperty'])('status %p is a 400, kept as unreadable', async (word) => {
    for (const partner of ['sim', 'mapped']) {
      const webhookId = newWebhookId();
      const body = partner === 'sim' ? { requestNo: newRequestNo('word'), status: word } : { ref: newRequestNo('word'), state: word };
      const res = await postCallback(svc.url, partner, signCallback(body, { secret: TEST_SECRET, webhookId }));
      expect(res.status).toBe(400);
      const { rows } = await sql<{ outcome: string }>`select outcome from callback_inbox where partner = ${partner} and webhook_id = ${webhookId}`.execute(db.handle.db);
      expect(rows).toEqual([{ outcome: 'unreadable' }]);
    }
  });

  test('a mapped word still works', async () => {
    const res = await postCallback(svc.url, 'mapped', signCallback({ ref: newRequestNo('mapped'), state: 'DONE' }, { secret: TEST_SECRET }));
    expect(answerOf(res)).toBe('202 queued');
  });

  test('an over-long webhook-id is a 400 and nothing is stored', async () => {
    const before = await inboxCount(db);
    const res = await postCallback(svc.url, 'sim', signCallback(report(newRequestNo('longid'), 'succeeded'), { secret: TEST_SECRET, webhookId: `msg_${'x'.repeat(5000)}` }));
    expectProblem(res, 400);
    expect(await inboxCount(db)).toBe(before);
  });

  test.each([
    ['over-long', 'r'.repeat(5000)],
    ['dots only', '..'],
    ['with a NUL', `r${NUL}`],
  ])('a %s request number is a 400, kept as unreadable', async (_what, requestNo) => {
    const webhookId = newWebhookId();
    const res = await postCallback(svc.url, 'sim', signCallback(report(requestNo, 'succeeded'), { secret: TEST_SECRET, webhookId }));
    expectProblem(res, 400);
    const { rows } = await sql<{ outcome: string; request_no: string | null }>`select outcome, request_no from callback_inbox where webhook_id = ${webhookId}`.execute(db.handle.db);
    expect(rows).toEqual([{ outcome: 'unreadable', request_no: null }]);
  });

  test('a poll-only partner hint with a NUL request number is answered, not a 500', async () => {
    const res = await postCallback(svc.url, 'odd', { body: JSON.stringify({ requestNo: `x${NUL}`, status: 'succeeded' }), headers: { 'content-type': 'application/json' } });
    expect(res.status).toBeLessThan(500);
  });
});

describe('reads with unstorable text are never a 500', () => {
  test.each([
    '/v1/partners/sim/tasks/a%00b',
    '/v1/partners/a%00/tasks/x',
    '/v1/partners/sim/tasks/..',
    '/v1/partners/constructor/tasks/x',
    '/v1/tasks?partner=a%00',
    '/v1/tasks?cursor=%00',
    '/v1/tasks?partner=%ED%A0%80',
  ])('%s', async (path) => {
    const res = await svc.api.get(path);
    // Invalid UTF-8 in a query decodes to U+FFFD: a partner nobody has, so an empty page is right too.
    expect([200, 404, 422]).toContain(res.status);
  });
});
