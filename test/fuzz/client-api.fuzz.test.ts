import fc from 'fast-check';
import { escapeUnstorableText, findUnstorable, MAX_JSON_DEPTH } from '../../src/db/storable';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { REQUEST_NO_PATTERN } from '../../src/tasks/task-schemas';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, TEST_API_KEY, TEST_SECRET, type TestService } from '../support/service';
import { anyText, canonical, CaseCounter, closeAgent, countTasks, expectCleanError, expectNo5xx, hostileJson, oddKey, runsFor, send, type RawAnswer } from './fuzz-support';

/**
 * Fuzz of the client API (issue 7, proof suites): bodies, query strings, paths, headers, content types,
 * sizes, unicode and nesting, over real HTTP against a real Postgres. Properties: never a 5xx; every
 * error is a clean problem+json; a refused request stores nothing; an accepted create reads back exactly
 * what was sent; the service stays ready.
 */

const MAX_BODY_BYTES = 16 * 1024;
let db: TestDatabase;
let sim: Simulator;
let svc: TestService;
const counter = new CaseCounter();
const auth = { authorization: `Bearer ${TEST_API_KEY}` };

beforeAll(async () => {
  db = await createTestDatabase();
  // The partner accepts every dispatch and never calls back within the run: the fuzz is about input.
  sim = await startSimulator({ secrets: [TEST_SECRET], defaultCallbackDelayMs: 3_600_000 });
  svc = await startTestService({ db, simulator: sim, background: false, env: { MAX_BODY_BYTES: String(MAX_BODY_BYTES), CALLBACK_LOOKUP_TIMEOUT_MS: '0' } });
}, 60_000);
afterAll(async () => {
  counter.report('client-api');
  await svc?.stop();
  await sim?.close();
  await db?.drop();
  closeAgent();
});

afterEach(async () => {
  const ready = await send(svc.url, 'GET', '/readyz', {});
  expect(ready.status).toBe(200);
});

const validRequestNo = fc.stringMatching(/^[A-Za-z0-9._:-]{1,40}$/).filter((s) => REQUEST_NO_PATTERN.test(s));
/** A few request numbers reused across cases, so replays (200) and conflicts (409) happen too. */
const sharedRequestNo = fc.constantFrom('fuzz-shared-1', 'fuzz-shared-2', 'fuzz-shared-3');

const createBody = fc.record(
  {
    partner: fc.oneof({ weight: 8, arbitrary: fc.constant('sim') }, { weight: 1, arbitrary: anyText }, { weight: 1, arbitrary: hostileJson }),
    requestNo: fc.oneof(
      { weight: 5, arbitrary: validRequestNo },
      { weight: 2, arbitrary: sharedRequestNo },
      { weight: 1, arbitrary: fc.constantFrom('.', '..', '...', 'a'.repeat(129), '') },
      { weight: 1, arbitrary: anyText },
      { weight: 1, arbitrary: hostileJson },
    ),
    kind: fc.oneof({ weight: 3, arbitrary: fc.string({ minLength: 1, maxLength: 20 }) }, { weight: 1, arbitrary: anyText }, { weight: 1, arbitrary: hostileJson }),
    payload: fc.oneof({ weight: 6, arbitrary: fc.dictionary(oddKey, hostileJson, { maxKeys: 5 }) }, { weight: 1, arbitrary: hostileJson }),
    notifyUrl: fc.oneof({ weight: 3, arbitrary: fc.webUrl() }, { weight: 1, arbitrary: anyText }),
    metadata: fc.oneof({ weight: 3, arbitrary: fc.dictionary(oddKey, hostileJson, { maxKeys: 3 }) }, { weight: 1, arbitrary: hostileJson }),
  },
  { requiredKeys: ['partner', 'payload'] },
);

/** Near and over MAX_BODY_BYTES. */
const bigPayload = fc.integer({ min: MAX_BODY_BYTES - 200, max: MAX_BODY_BYTES + 200 }).map((n) => ({ blob: 'x'.repeat(n) }));

const contentType = fc.oneof(
  { weight: 12, arbitrary: fc.constant('application/json') },
  { weight: 1, arbitrary: fc.constantFrom('application/json; charset=utf-8', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'application/problem+json', 'application/merge-patch+json', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', ';;', 'application/json; charset="', 'APPLICATION/JSON') },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 30 }).filter((s) => /^[\x20-\x7e]*$/.test(s)) },
);

/** Checks the properties of one create answer; `sentJson` is what the server parsed (when it was JSON). */
async function checkCreate(answer: RawAnswer, sentJson: unknown, tasksBefore: number, what: string): Promise<void> {
  expectNo5xx(answer, what);
  expectCleanError(answer, what);
  if (answer.status === 201 || answer.status === 200) {
    const task = JSON.parse(answer.text) as { id: string; partner: string; requestNo: string; kind: unknown; payload: unknown; metadata: unknown; notifyUrl: unknown };
    const sent = sentJson as Record<string, unknown>;
    expect(findUnstorable(sent.payload, MAX_JSON_DEPTH)).toBeUndefined();
    const read = await send(svc.url, 'GET', `/v1/tasks/${task.id}`, auth);
    expect(read.status).toBe(200);
    const stored = JSON.parse(read.text) as Record<string, unknown>;
    expect(canonical(stored.payload)).toBe(canonical(sent.payload));
    expect(canonical(stored.metadata)).toBe(canonical(sent.metadata ?? null));
    expect(stored.kind).toBe(sent.kind ?? null);
    expect(stored.notifyUrl).toBe(sent.notifyUrl ?? null);
    expect(stored.partner).toBe(sent.partner);
    if (sent.requestNo !== undefined) expect(stored.requestNo).toBe(sent.requestNo);
    if (answer.status === 201) expect(await countTasks(db)).toBe(tasksBefore + 1);
  } else {
    expect(answer.status).toBeGreaterThanOrEqual(400);
    expect(await countTasks(db)).toBe(tasksBefore);
  }
}

test('POST /v1/tasks: arbitrary bodies, sizes and content types', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.oneof({ weight: 12, arbitrary: createBody.map((b) => ({ kind: 'json' as const, value: b as unknown })) },
        { weight: 1, arbitrary: fc.tuple(createBody, oddKey, hostileJson).map(([b, k, v]) => ({ kind: 'json' as const, value: { ...b, [k]: v } as unknown })) },
        { weight: 2, arbitrary: hostileJson.map((v) => ({ kind: 'json' as const, value: v })) },
        { weight: 1, arbitrary: bigPayload.map((p) => ({ kind: 'json' as const, value: { partner: 'sim', payload: p } as unknown })) },
        { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => ({ kind: 'bytes' as const, value: Buffer.from(b) as unknown })) },
        { weight: 1, arbitrary: createBody.map((b) => ({ kind: 'truncated' as const, value: b as unknown }))}),
      contentType,
      async (body, type) => {
        counter.hit('create');
        let bytes: Buffer;
        if (body.kind === 'bytes') bytes = body.value as Buffer;
        else if (body.kind === 'truncated') bytes = Buffer.from(JSON.stringify(body.value).slice(0, -1));
        else bytes = Buffer.from(JSON.stringify(body.value) ?? 'null');
        const before = await countTasks(db);
        const answer = await send(svc.url, 'POST', '/v1/tasks', { ...auth, 'content-type': type }, bytes);
        let parsed: unknown;
        try {
          parsed = JSON.parse(bytes.toString('utf8'));
        } catch {
          parsed = undefined;
        }
        await checkCreate(answer, parsed, before, `POST /v1/tasks (${type}) ${bytes.toString('utf8').slice(0, 200)}`);
      },
    ),
    runsFor(0.3),
  );
}, 600_000);

const header = fc.string({ unit: 'grapheme-ascii', maxLength: 40 }).filter((s) => /^[\x20-\x7e]*$/.test(s));

test('headers: authorization, encodings, request ids and accept', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        authorization: fc.oneof(fc.constant(auth.authorization), fc.constant(undefined), header, header.map((h) => `Bearer ${h}`), fc.constant(`bearer   ${TEST_API_KEY}  `), fc.constant(`Basic ${TEST_API_KEY}`)),
        encoding: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('gzip', 'deflate', 'br', 'identity', 'compress', 'x-bogus', 'gzip, gzip') }),
        requestId: fc.option(header),
        accept: fc.option(header),
      }),
      createBody,
      async (h, body) => {
        counter.hit('headers');
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (h.authorization !== undefined) headers.authorization = h.authorization;
        if (h.encoding !== undefined) headers['content-encoding'] = h.encoding;
        if (h.requestId !== null) headers['x-request-id'] = h.requestId;
        if (h.accept !== null) headers.accept = h.accept;
        const before = await countTasks(db);
        const answer = await send(svc.url, 'POST', '/v1/tasks', headers, Buffer.from(JSON.stringify(body)));
        const identity = h.encoding === undefined || h.encoding === 'identity';
        await checkCreate(answer, identity ? body : undefined, before, `POST /v1/tasks with ${JSON.stringify(h)}`);
        if (answer.status === 201 || answer.status === 200) expect(identity).toBe(true);
      },
    ),
    runsFor(0.1),
  );
}, 600_000);

/** A path segment: encoded text, raw odd percent sequences, or dots. */
const segment = fc.oneof(
  { weight: 3, arbitrary: anyText.map((s) => encodeURIComponent(escapeUnstorableText(s))) },
  { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '%00', '%ED%A0%80', '%C0%AE', '.', '..', '%2e%2e', 'a%2Fb', '%E2%80%AE', 'constructor', '__proto__', '0190f5e0-0000-7000-8000-000000000000') },
  { weight: 1, arbitrary: fc.uuid() },
);
const queryValue = fc.oneof(anyText.map((s) => encodeURIComponent(escapeUnstorableText(s))), fc.constantFrom('%', '%00', '-1', '0', '1', '500', '501', '1e3', '0x10', ' 5', 'NaN', 'Infinity', '[]', '%ED%A0%80'));
const query = fc
  .array(fc.tuple(fc.oneof(fc.constantFrom('status', 'partner', 'limit', 'cursor', 'waitSeconds', 'status[]', '__proto__'), fc.string({ maxLength: 6 }).map(encodeURIComponent)), queryValue), { maxLength: 4 })
  .map((pairs) => (pairs.length === 0 ? '' : `?${pairs.map(([k, v]) => `${k}=${v}`).join('&')}`));

test('paths and query strings of every read route', async () => {
  const known = JSON.parse(
    (await send(svc.url, 'POST', '/v1/tasks', { ...auth, 'content-type': 'application/json' }, Buffer.from(JSON.stringify({ partner: 'sim', requestNo: 'fuzz-known', payload: {} })))).text,
  ) as { id: string };
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.tuple(fc.constant('GET'), query).map(([m, q]) => [m, `/v1/tasks${q}`] as const),
        fc.tuple(fc.constant('GET'), fc.oneof(segment, fc.constant(known.id)), query).map(([m, id, q]) => [m, `/v1/tasks/${id}${id === known.id ? '' : q}`] as const),
        fc.tuple(fc.constant('GET'), fc.oneof(segment, fc.constant(known.id)), query).map(([m, id, q]) => [m, `/v1/tasks/${id}/events${q}`] as const),
        fc.tuple(fc.constant('POST'), segment).map(([m, id]) => [m, `/v1/tasks/${id}/reconcile`] as const),
        fc.tuple(fc.constant('GET'), fc.oneof(segment, fc.constant('sim')), segment).map(([m, p, r]) => [m, `/v1/partners/${p}/tasks/${r}`] as const),
        fc.tuple(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'), fc.array(segment, { maxLength: 4 }), query).map(([m, segs, q]) => [m, `/${segs.join('/')}${q}`] as const),
        fc.tuple(fc.constantFrom('GET', 'PUT', 'DELETE', 'PATCH'), fc.constantFrom('/v1/tasks', '/v1/partners', '/healthz', '/readyz', '/openapi.json', '/v1/callbacks/sim')).map(([m, p]) => [m, p] as const),
      ),
      async ([method, path]) => {
        counter.hit('reads');
        const before = await countTasks(db);
        const answer = await send(svc.url, method, path, auth);
        expectNo5xx(answer, `${method} ${path}`);
        expectCleanError(answer, `${method} ${path}`);
        expect(await countTasks(db)).toBe(before);
      },
    ),
    runsFor(0.2),
  );
}, 600_000);
