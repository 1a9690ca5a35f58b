import axios from 'axios';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, TEST_API_KEY, type TestService } from '../support/service';
import {
  countRows,
  createTask,
  errorFields,
  expectProblem,
  expectTaskShape,
  NO_CALLBACK,
  quiesce,
  rawRequest,
  uniqueRequestNo,
  UUID_RE,
  waitForFirstDispatch,
} from './helpers';

/**
 * POST /v1/tasks as SERVICE.md states it: 201/200-replay/409 and every refusal (400, 401, 413, 415, 422),
 * each refusal a problem+json that stored nothing.
 */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    env: { MAX_BODY_BYTES: '2048' },
    extraPartners: [{ id: 'other', baseUrl: '{simulator}', callback: { verify: 'poll' } }],
  });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** Runs a request that must be refused and checks the database did not change. */
async function expectNothingStored<T>(run: () => Promise<T>): Promise<T> {
  await quiesce(svc);
  const before = await countRows(db);
  const result = await run();
  await quiesce(svc);
  expect(await countRows(db)).toEqual(before);
  return result;
}

describe('201 created', () => {
  test('answers the committed task with a Location that reads it back', async () => {
    const requestNo = uniqueRequestNo('created');
    const before = await countRows(db);
    const res = await svc.api.post('/v1/tasks', {
      partner: 'sim',
      requestNo,
      kind: 'grade-essay',
      payload: { essay: 'e-1', simulate: NO_CALLBACK },
      notifyUrl: 'https://client.example/notify',
      metadata: { course: 'c-9' },
    });
    expect(res.status).toBe(201);
    expect(res.headers['idempotent-replayed']).toBeUndefined();
    expectTaskShape(res.data);
    expect(res.data).toMatchObject({
      partner: 'sim',
      requestNo,
      kind: 'grade-essay',
      status: 'pending',
      payload: { essay: 'e-1', simulate: NO_CALLBACK },
      notifyUrl: 'https://client.example/notify',
      metadata: { course: 'c-9' },
      result: null,
      error: null,
      dispatchAttempts: 0,
      checkAttempts: 0,
      settledBy: null,
      completedAt: null,
      dispatchedAt: null,
    });
    expect(res.headers.location).toBe(`/v1/tasks/${res.data.id}`);

    const read = await svc.api.get(res.headers.location as string);
    expect(read.status).toBe(200);
    expect(read.data).toMatchObject({ id: res.data.id, requestNo, partner: 'sim', createdAt: res.data.createdAt });

    // Exactly one row and its creation event were stored.
    await waitForFirstDispatch(svc.api, res.data.id);
    const after = await countRows(db);
    expect(after.tasks).toBe(before.tasks + 1);
  });

  test('generates a requestNo when none is given, a different one per create', async () => {
    const a = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    const b = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    expect(a.requestNo).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
    expect(b.requestNo).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
    expect(a.requestNo).not.toBe(b.requestNo);
    expect(a.id).not.toBe(b.id);
    expect(a.kind).toBeNull();
    expect(a.notifyUrl).toBeNull();
    expect(a.metadata).toBeNull();
  });

  test('accepts requestNo of exactly 128 characters of every allowed kind', async () => {
    const requestNo = `Az09._:-${'x'.repeat(120)}`;
    expect(requestNo).toHaveLength(128);
    const t = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    expect(t.requestNo).toBe(requestNo);
  });

  test('the same requestNo under another partner is another task', async () => {
    const requestNo = uniqueRequestNo('shared');
    const a = await createTask(svc.api, { partner: 'sim', requestNo, payload: { simulate: NO_CALLBACK } });
    const b = await createTask(svc.api, { partner: 'other', requestNo, payload: { simulate: NO_CALLBACK } });
    expect(b.id).not.toBe(a.id);
    expect(b.partner).toBe('other');
  });
});

describe('idempotent replay and conflicting reuse', () => {
  test('the same body again answers 200 with the stored task and Idempotent-Replayed, storing nothing', async () => {
    const requestNo = uniqueRequestNo('replay');
    const body = { partner: 'sim', requestNo, kind: 'k', payload: { a: 1, b: { c: 2, d: [1, 2] }, simulate: NO_CALLBACK }, metadata: { x: 1, y: 'z' } };
    const first = await svc.api.post('/v1/tasks', body);
    expect(first.status).toBe(201);
    await waitForFirstDispatch(svc.api, first.data.id);

    const replay = await expectNothingStored(() => svc.api.post('/v1/tasks', body));
    expect(replay.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expectTaskShape(replay.data);
    expect(replay.data.id).toBe(first.data.id);
    expect(replay.data.createdAt).toBe(first.data.createdAt);
    expect(replay.data.payload).toEqual(body.payload);
  });

  test('keys in a different order (at every depth) are the same body', async () => {
    const requestNo = uniqueRequestNo('order');
    const first = await createTask(svc.api, {
      partner: 'sim',
      requestNo,
      payload: { a: 1, nested: { p: true, q: [1, { r: 1, s: 2 }] }, simulate: NO_CALLBACK },
      metadata: { m: 1, n: 2 },
    });
    await waitForFirstDispatch(svc.api, first.id);
    const reordered = await expectNothingStored(() =>
      rawRequest(`${svc.url}/v1/tasks`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TEST_API_KEY}`, 'content-type': 'application/json' },
        body: `{"metadata":{"n":2,"m":1},"payload":{"simulate":{"callback":{"mode":"never"}},"nested":{"q":[1,{"s":2,"r":1}],"p":true},"a":1},"requestNo":"${requestNo}","partner":"sim"}`,
      }),
    );
    expect(reordered.status).toBe(200);
    expect(reordered.headers['idempotent-replayed']).toBe('true');
    expect((reordered.data as { id: string }).id).toBe(first.id);
  });

  test.each([
    ['a different payload', { payload: { a: 2, simulate: NO_CALLBACK } }],
    ['an added kind', { kind: 'new-kind' }],
    ['added metadata', { metadata: { extra: true } }],
    ['a notifyUrl', { notifyUrl: 'https://client.example/hook' }],
  ])('%s under the same requestNo answers 409 and stores nothing', async (_what, change) => {
    const requestNo = uniqueRequestNo('conflict');
    const body = { partner: 'sim', requestNo, payload: { a: 1, simulate: NO_CALLBACK } };
    const first = await createTask(svc.api, body);
    await waitForFirstDispatch(svc.api, first.id);
    const res = await expectNothingStored(() => svc.api.post('/v1/tasks', { ...body, ...change }));
    expectProblem(res, 409);
    expect(res.headers['idempotent-replayed']).toBeUndefined();
    // The stored task is untouched.
    const stored = await svc.api.get(`/v1/tasks/${first.id}`);
    expect(stored.data.payload).toEqual(body.payload);
    expect(stored.data.kind).toBeNull();
  });
});

describe('refused requests store nothing', () => {
  const url = () => `${svc.url}/v1/tasks`;
  const auth = { authorization: `Bearer ${TEST_API_KEY}` };

  test('400 on malformed JSON', async () => {
    const res = await expectNothingStored(() =>
      rawRequest(url(), { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"partner":"sim","payload":{' }),
    );
    expectProblem(res, 400);
  });

  test('400 on a JSON body that is not an object or array (strict JSON)', async () => {
    const res = await expectNothingStored(() =>
      rawRequest(url(), { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '"just a string"' }),
    );
    expect([400, 422]).toContain(res.status);
    expectProblem(res, res.status);
  });

  test('413 on a body over MAX_BODY_BYTES', async () => {
    const body = JSON.stringify({ partner: 'sim', requestNo: uniqueRequestNo('big'), payload: { blob: 'x'.repeat(3000) } });
    expect(Buffer.byteLength(body)).toBeGreaterThan(2048);
    const res = await expectNothingStored(() => rawRequest(url(), { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body }));
    expectProblem(res, 413);
  });

  test('a body just under MAX_BODY_BYTES is accepted (the limit is the configured one)', async () => {
    const base = JSON.stringify({ partner: 'sim', requestNo: uniqueRequestNo('fits'), payload: { blob: '', simulate: NO_CALLBACK } });
    const body = base.replace('"blob":""', `"blob":"${'x'.repeat(2000 - base.length)}"`);
    expect(Buffer.byteLength(body)).toBe(2000);
    const res = await rawRequest(url(), { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body });
    expect(res.status).toBe(201);
  });

  test.each([
    ['text/plain', { 'content-type': 'text/plain' }],
    ['a form', { 'content-type': 'application/x-www-form-urlencoded' }],
    ['multipart', { 'content-type': 'multipart/form-data; boundary=xyz' }],
    ['no content-type', {}],
  ])('415 when the body is %s', async (_what, headers) => {
    const body = JSON.stringify({ partner: 'sim', requestNo: uniqueRequestNo('type'), payload: { a: 1 } });
    const res = await expectNothingStored(() => rawRequest(url(), { method: 'POST', headers: { ...auth, ...headers }, body }));
    expectProblem(res, 415);
  });

  const valid = () => ({ partner: 'sim', requestNo: uniqueRequestNo('valid'), payload: { a: 1, simulate: NO_CALLBACK } });
  test.each<[string, (b: Record<string, unknown>) => Record<string, unknown>, string]>([
    ['missing payload', ({ payload: _p, ...rest }) => rest, 'payload'],
    ['payload a string', (b) => ({ ...b, payload: 'text' }), 'payload'],
    ['payload null', (b) => ({ ...b, payload: null }), 'payload'],
    ['payload an array', (b) => ({ ...b, payload: [1, 2] }), 'payload'],
    ['missing partner', ({ partner: _p, ...rest }) => rest, 'partner'],
    ['partner not a string', (b) => ({ ...b, partner: 7 }), 'partner'],
    ['requestNo with a space', (b) => ({ ...b, requestNo: 'a b' }), 'requestNo'],
    ['requestNo with a non-ASCII letter', (b) => ({ ...b, requestNo: 'é' }), 'requestNo'],
    ['requestNo with a slash', (b) => ({ ...b, requestNo: 'a/b' }), 'requestNo'],
    ['requestNo of 129 characters', (b) => ({ ...b, requestNo: 'x'.repeat(129) }), 'requestNo'],
    ['empty requestNo', (b) => ({ ...b, requestNo: '' }), 'requestNo'],
    ['requestNo a number', (b) => ({ ...b, requestNo: 12 }), 'requestNo'],
    ['an unknown extra field', (b) => ({ ...b, priority: 'high' }), 'priority'],
    ['notifyUrl with ftp', (b) => ({ ...b, notifyUrl: 'ftp://client.example/x' }), 'notifyUrl'],
    ['notifyUrl javascript:', (b) => ({ ...b, notifyUrl: 'javascript:alert(1)' }), 'notifyUrl'],
    ['notifyUrl not a URL', (b) => ({ ...b, notifyUrl: 'not a url' }), 'notifyUrl'],
    ['metadata a string', (b) => ({ ...b, metadata: 'm' }), 'metadata'],
    ['metadata an array', (b) => ({ ...b, metadata: [1] }), 'metadata'],
    ['kind empty', (b) => ({ ...b, kind: '' }), 'kind'],
    ['kind not a string', (b) => ({ ...b, kind: 5 }), 'kind'],
    ['an unknown partner', (b) => ({ ...b, partner: 'nobody' }), 'partner'],
  ])('422 on %s, naming the field', async (_what, mutate, field) => {
    const res = await expectNothingStored(() => svc.api.post('/v1/tasks', mutate(valid())));
    const body = expectProblem(res, 422);
    expect(errorFields(body)).toContain(field);
  });

  test('422 names every bad field at once', async () => {
    const res = await expectNothingStored(() =>
      svc.api.post('/v1/tasks', { partner: 'sim', requestNo: 'a b', payload: [], kind: '', metadata: 3 }),
    );
    const body = expectProblem(res, 422);
    expect(errorFields(body)).toEqual(expect.arrayContaining(['requestNo', 'payload', 'kind', 'metadata']));
  });

  test('422 on a JSON array body', async () => {
    const res = await expectNothingStored(() => svc.api.post('/v1/tasks', [{ partner: 'sim', payload: {} }]));
    expectProblem(res, 422);
  });

  test.each([
    ['no Authorization header', undefined],
    ['a wrong key', `Bearer wrong-key-0123456789abcdef`],
    ['the right key with the wrong scheme', `Basic ${TEST_API_KEY}`],
    ['a Bearer header without a key', 'Bearer'],
    ['a key with trailing junk', `Bearer ${TEST_API_KEY} extra`],
    ['a prefix of the key', `Bearer ${TEST_API_KEY.slice(0, -1)}`],
  ])('401 with %s', async (_what, authorization) => {
    const body = { partner: 'sim', requestNo: uniqueRequestNo('auth'), payload: { a: 1 } };
    const res = await expectNothingStored(() =>
      axios.post(`${svc.url}/v1/tasks`, body, {
        headers: authorization === undefined ? {} : { authorization },
        validateStatus: () => true,
      }),
    );
    expectProblem(res, 401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    // The request number was never stored.
    const lookup = await svc.api.get(`/v1/partners/sim/tasks/${body.requestNo}`);
    expect(lookup.status).toBe(404);
  });

  test('401 comes before validation: an unauthenticated bad body is 401, not 422', async () => {
    const res = await expectNothingStored(() => axios.post(`${svc.url}/v1/tasks`, { nope: true }, { validateStatus: () => true }));
    expectProblem(res, 401);
  });

  test('every read route also requires the key', async () => {
    const id = '00000000-0000-4000-8000-000000000000';
    for (const path of ['/v1/tasks', `/v1/tasks/${id}`, `/v1/tasks/${id}/events`, '/v1/partners', '/v1/partners/sim/tasks/x']) {
      const res = await axios.get(`${svc.url}${path}`, { validateStatus: () => true });
      expectProblem(res, 401);
    }
    const reconcile = await axios.post(`${svc.url}/v1/tasks/${id}/reconcile`, undefined, { validateStatus: () => true });
    expectProblem(reconcile, 401);
  });
});

test('a created task id is a UUID and createdAt is ISO 8601 UTC', async () => {
  const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
  expect(t.id).toMatch(UUID_RE);
  expect(new Date(t.createdAt).toISOString()).toBe(t.createdAt);
});
