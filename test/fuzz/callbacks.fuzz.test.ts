import fc from 'fast-check';
import { sql } from 'kysely';
import { Webhook } from 'standardwebhooks';
import { findUnstorable } from '../../src/db/storable';
import { MAX_PARTNER_ERROR_CHARS } from '../../src/partners/mapping';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { OTHER_SECRET, startTestService, TEST_API_KEY, TEST_SECRET, type TestService } from '../support/service';
import { anyText, canonical, CaseCounter, closeAgent, countInbox, expectCleanError, expectNo5xx, hostileJson, oddKey, runsFor, send } from './fuzz-support';

/**
 * Fuzz of the partner-facing callback route (issue 7, proof suites): signed and unsigned callbacks with
 * arbitrary JSON, for partners with the protocol's shape and with generated `mapping`s (JSON Pointers
 * through odd keys, status words that are object keys). Properties: never a 5xx; an unauthenticated
 * callback stores nothing; an authenticated one is stored (applied, queued, or kept as unreadable); an
 * applied final report reads back exactly (result and error as sent, when storable); the service stays ready.
 */

let db: TestDatabase;
let sim: Simulator;
let svc: TestService;
const counter = new CaseCounter();
const auth = { authorization: `Bearer ${TEST_API_KEY}` };
const OUR_WORDS = ['processing', 'succeeded', 'failed'] as const;

/** An RFC 6901 pointer through the given keys. */
const pointerOf = (keys: string[]) => keys.map((k) => `/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');

/** Generated mappings: pointers through odd keys, partner words (object keys among them) for our statuses. */
const mappingArb = fc.record({
  requestNo: fc.array(oddKey, { minLength: 1, maxLength: 3 }),
  status: fc.array(oddKey, { minLength: 1, maxLength: 3 }),
  result: fc.array(oddKey, { minLength: 1, maxLength: 2 }),
  error: fc.array(oddKey, { minLength: 1, maxLength: 2 }),
  words: fc.dictionary(fc.oneof(fc.string({ minLength: 1, maxLength: 8 }), fc.constantFrom('constructor', 'toString', 'DONE', '0')), fc.constantFrom(...OUR_WORDS), { minKeys: 1, maxKeys: 4 }),
});
type MappingKeys = fc.Arbitrary<typeof mappingArb extends fc.Arbitrary<infer T> ? T : never>;
const mappings = fc.sample(mappingArb as MappingKeys, { numRuns: 3, seed: 7 }).map((m) => ({
  ...m,
  // Keys "__proto__" do not survive the partners file's parsing as statusValues; the rest is kept.
  words: Object.fromEntries(Object.entries(m.words).filter(([k]) => k !== '__proto__')),
}));
const partners = ['sim', 'm0', 'm1', 'm2', 'poller'] as const;

function mappingOf(partner: string): { requestNo: string[]; status: string[]; result: string[]; error: string[]; words: Record<string, string> } {
  if (partner.startsWith('m')) return mappings[Number(partner.slice(1))]!;
  return { requestNo: ['requestNo'], status: ['status'], result: ['result'], error: ['error'], words: {} };
}

/** Writes `value` at the path of keys (own properties, so "__proto__" stays a key). */
function put(doc: Record<string, unknown>, keys: string[], value: unknown): void {
  let cur = doc;
  keys.forEach((k, i) => {
    if (i === keys.length - 1) {
      Object.defineProperty(cur, k, { value, enumerable: true, writable: true, configurable: true });
      return;
    }
    const next = Object.hasOwn(cur, k) ? cur[k] : undefined;
    if (next === null || typeof next !== 'object' || Array.isArray(next)) Object.defineProperty(cur, k, { value: {}, enumerable: true, writable: true, configurable: true });
    cur = cur[k] as Record<string, unknown>;
  });
}

beforeAll(async () => {
  db = await createTestDatabase();
  sim = await startSimulator({ secrets: [TEST_SECRET], defaultCallbackDelayMs: 3_600_000 });
  svc = await startTestService({
    db,
    simulator: sim,
    background: false,
    env: { CALLBACK_LOOKUP_TIMEOUT_MS: '0' },
    extraPartners: [
      ...mappings.map((m, i) => ({
        id: `m${i}`,
        baseUrl: '{simulator}',
        callback: { secret: TEST_SECRET },
        mapping: { requestNo: pointerOf(m.requestNo), status: pointerOf(m.status), result: pointerOf(m.result), error: pointerOf(m.error), statusValues: m.words },
      })),
      { id: 'poller', baseUrl: '{simulator}', callback: { verify: 'poll' } },
    ],
  });
  await seedTasks();
}, 60_000);
afterAll(async () => {
  counter.report('callbacks');
  await svc?.stop();
  await sim?.close();
  await db?.drop();
  closeAgent();
});
afterEach(async () => {
  expect((await send(svc.url, 'GET', '/readyz', {})).status).toBe(200);
});

let seq = 0;
/** Tasks the callbacks talk about, seeded straight into the table (dispatched, waiting for an outcome). */
const POOL_SIZE = 400;
const poolRequestNo = (partner: string, i: number) => `fz-${partner}-${i}`;
async function seedTasks(): Promise<void> {
  for (const partner of partners) {
    await sql`
      insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, dispatched_at, next_check_at, expires_at)
      select gen_random_uuid(), ${partner}, 'fz-' || ${partner} || '-' || i, 'dispatched', '{}'::jsonb, 'seeded', 1, now(),
             now() + interval '1 hour', now() + interval '1 day'
      from generate_series(0, ${POOL_SIZE - 1}) as i`.execute(db.handle.db);
  }
}

const headerText = fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 40 }).filter((s) => /^[\x21-\x7e]+$/.test(s));
const reusedIds = ['msg_reused_1', 'msg_reused_2'];

const callbackCase = fc.record({
  partner: fc.constantFrom(...partners),
  target: fc.oneof({ weight: 4, arbitrary: fc.nat({ max: POOL_SIZE - 1 }) }, { weight: 1, arbitrary: anyText }, { weight: 1, arbitrary: fc.constantFrom('..', 'r'.repeat(200), '') }),
  word: fc.oneof({ weight: 3, arbitrary: fc.constant('mapped' as const) }, { weight: 3, arbitrary: fc.constantFrom(...OUR_WORDS) }, { weight: 1, arbitrary: fc.constantFrom('constructor', '__proto__', 'toString', 'valueOf') }, { weight: 1, arbitrary: hostileJson }),
  mappedIndex: fc.nat(),
  result: fc.option(hostileJson, { nil: undefined }),
  error: fc.option(fc.oneof(hostileJson, fc.string({ minLength: 4000, maxLength: 6000 })), { nil: undefined }),
  shape: fc.oneof({ weight: 8, arbitrary: fc.constant('report' as const) }, { weight: 1, arbitrary: fc.constant('any-json' as const) }, { weight: 1, arbitrary: fc.constant('text' as const) }),
  anyJson: hostileJson,
  // Not JSON (or truncated JSON). Signatures cover the UTF-8 text, so the text is well-formed.
  rawText: fc.oneof(fc.string({ maxLength: 40 }), hostileJson.map((v) => (JSON.stringify(v) ?? '').slice(0, -1))),
  signing: fc.oneof({ weight: 8, arbitrary: fc.constant('good' as const) }, { weight: 1, arbitrary: fc.constantFrom('other-secret', 'none', 'stale', 'garbage', 'future') }),
  webhookId: fc.oneof({ weight: 6, arbitrary: fc.constant('fresh' as const) }, { weight: 1, arbitrary: fc.constantFrom(...reusedIds, 'x'.repeat(300)) }, { weight: 1, arbitrary: headerText }),
  garbage: headerText,
});

test('POST /v1/callbacks/{partner}: arbitrary JSON, mappings, signatures and ids', async () => {
  await fc.assert(
    fc.asyncProperty(callbackCase, async (c) => {
      counter.hit('callbacks');
      const m = mappingOf(c.partner);
      const requestNo = typeof c.target === 'number' ? poolRequestNo(c.partner, c.target) : c.target;
      const partnerWords = Object.keys(m.words);
      const word = c.word === 'mapped' ? (partnerWords.length > 0 ? partnerWords[c.mappedIndex % partnerWords.length]! : OUR_WORDS[c.mappedIndex % 3]!) : c.word;
      let text: string;
      if (c.shape === 'text') text = c.rawText;
      else if (c.shape === 'any-json') text = JSON.stringify(c.anyJson) ?? 'null';
      else {
        const doc: Record<string, unknown> = {};
        put(doc, m.requestNo, requestNo);
        put(doc, m.status, word);
        if (c.result !== undefined) put(doc, m.result, c.result);
        if (c.error !== undefined) put(doc, m.error, c.error);
        text = JSON.stringify(doc);
      }
      const webhookId = c.webhookId === 'fresh' ? `msg_${process.pid}_${++seq}` : c.webhookId;
      const now = new Date();
      const at = c.signing === 'stale' ? new Date(now.getTime() - 10 * 60_000) : c.signing === 'future' ? new Date(now.getTime() + 10 * 60_000) : now;
      const headers: Record<string, string> = { 'content-type': 'application/json', 'webhook-id': webhookId, 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)) };
      if (c.signing === 'garbage') headers['webhook-signature'] = `v1,${c.garbage}`;
      else if (c.signing !== 'none') headers['webhook-signature'] = new Webhook(c.signing === 'other-secret' ? OTHER_SECRET : TEST_SECRET).sign(webhookId, at, text);

      // Counting the inbox costs a statement: only needed when the id may already be there (reused ids).
      const freshId = c.webhookId === 'fresh';
      const inboxBefore = freshId ? undefined : await countInbox(db);
      const nothingStored = async (rows: unknown[]) => (freshId ? expect(rows).toEqual([]) : expect(await countInbox(db)).toBe(inboxBefore));
      const answer = await send(svc.url, 'POST', `/v1/callbacks/${c.partner}`, headers, Buffer.from(text, 'utf8'));
      const what = `callback to ${c.partner} (${c.signing}) ${text.slice(0, 300)}`;
      expectNo5xx(answer, what);
      expectCleanError(answer, what);
      const { rows } = await sql<{ outcome: string }>`select outcome from callback_inbox where partner = ${c.partner} and webhook_id = ${webhookId}`.execute(db.handle.db);

      if (c.partner === 'poller') {
        // Untrusted: only ever a hint, never stored.
        await nothingStored(rows);
        return;
      }
      if (c.signing !== 'good') {
        expect(answer.status).toBe(401);
        await nothingStored(rows);
        return;
      }
      if (answer.status === 401) throw new Error(`a correctly signed callback was refused: ${what}`);
      if (answer.status === 200 || answer.status === 202) {
        expect(rows.length).toBe(1);
        if (freshId) expect(rows[0]!.outcome).not.toBe('unreadable');
        const outcome = (JSON.parse(answer.text) as { outcome: string }).outcome;
        // The generated status may be any JSON value; only a string can name a mapped word (an object key would throw).
        const reported = typeof word === 'string' && Object.hasOwn(m.words, word) ? m.words[word] : word;
        if (outcome === 'applied' && c.shape === 'report' && (reported === 'succeeded' || reported === 'failed')) {
          const task = JSON.parse((await send(svc.url, 'GET', `/v1/partners/${c.partner}/tasks/${requestNo}`, auth)).text) as Record<string, unknown>;
          expect(task.status).toBe(reported);
          expect(task.settledBy).toBe('callback');
          if (findUnstorable(c.result) === undefined) expect(canonical(task.result)).toBe(canonical(c.result ?? null));
          const errorText = typeof c.error === 'string' ? c.error : JSON.stringify(c.error);
          if (findUnstorable(c.error) === undefined && (errorText === undefined || errorText.length <= MAX_PARTNER_ERROR_CHARS)) {
            expect(canonical(task.error)).toBe(canonical(c.error ?? null));
          }
        }
        return;
      }
      expect(answer.status).toBe(400);
      // A 400 either stored nothing (not JSON, an id too long to keep) or kept the callback as unreadable.
      if (rows.length > 0) expect(['unreadable', 'queued', 'applied', 'ignored', 'conflict']).toContain(rows[0]!.outcome);
      else await nothingStored(rows);
    }),
    runsFor(0.4),
  );
}, 900_000);
