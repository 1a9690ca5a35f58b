import type { AddressInfo } from 'node:net';
import axios from 'axios';
import express from 'express';
import fc from 'fast-check';
import pino from 'pino';
import { manualActionAudit } from '../../src/story/manual-audit';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_API_KEY, TEST_SECRET, type TestService } from '../support/service';
import { SCENARIO_ENV, SCENARIO_MAIN_PARTNER, SCENARIO_PARTNERS, seedStoryScenario, type StoryScenario } from '../support/story-scenario';
import { postCallback, signCallback } from './callback-helpers';
import { expectProblem } from './helpers';

/**
 * The read endpoints behind the operator console: partner calls, callbacks for a request number,
 * search by request number across partners, the overview, key labels and manual events.
 */

const ONCALL_KEY = 'oncall-key-0123456789abcdef';
let db: TestDatabase;
let svc: TestService;
let s: StoryScenario;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({
    db,
    partner: SCENARIO_MAIN_PARTNER,
    extraPartners: SCENARIO_PARTNERS,
    env: { ...SCENARIO_ENV, API_KEYS: `${TEST_API_KEY},oncall:${ONCALL_KEY}` },
  });
  s = await seedStoryScenario(svc, 'api');
}, 120_000);
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const get = (path: string, key = TEST_API_KEY) => svc.api.get(path, { headers: { authorization: `Bearer ${key}` } });

describe('GET /v1/tasks/{id}/attempts', () => {
  test('dispatch attempts with their error class, then status checks, oldest first', async () => {
    const res = await get(`/v1/tasks/${s.transient.id}/attempts`);
    expect(res.status).toBe(200);
    const dispatches = res.data.items.filter((c: { operation: string }) => c.operation === 'dispatch');
    expect(dispatches[0]).toEqual(expect.objectContaining({ outcome: 'transient', httpStatus: 503, errorClass: 'http_5xx' }));
    expect(dispatches.at(-1)).toEqual(expect.objectContaining({ outcome: 'received', errorClass: null }));
    const times = res.data.items.map((c: { at: string }) => c.at);
    expect([...times].sort()).toEqual(times);

    const poll = (await get(`/v1/tasks/${s.byPoll.id}/attempts`)).data.items;
    expect(poll.map((c: { operation: string; outcome: string }) => `${c.operation}:${c.outcome}`)).toEqual(['dispatch:received', 'status:found']);
    expect(poll[1].reportedStatus).toBe('succeeded');
  });

  test('pages with a cursor without gaps or repeats', async () => {
    const all = (await get(`/v1/tasks/${s.transient.id}/attempts`)).data.items;
    const first = await get(`/v1/tasks/${s.transient.id}/attempts?limit=1`);
    expect(first.data.items).toEqual(all.slice(0, 1));
    expect(first.data.nextCursor).toEqual(expect.any(String));
    const second = await get(`/v1/tasks/${s.transient.id}/attempts?limit=500&cursor=${first.data.nextCursor}`);
    expect(second.data.items).toEqual(all.slice(1));
    expect(second.data.nextCursor).toBeNull();
  });

  test('404 for an unknown task, 422 for a bad query', async () => {
    expectProblem(await get('/v1/tasks/0190f5e0-0000-7000-8000-000000000000/attempts'), 404);
    expectProblem(await get(`/v1/tasks/${s.open.id}/attempts?limit=0`), 422);
    expectProblem(await get(`/v1/tasks/${s.open.id}/attempts?cursor=bm9wZQ`), 422);
  });
});

describe('GET /v1/tasks/{id}/callbacks', () => {
  test('duplicates are counted on the stored callback', async () => {
    const items = (await get(`/v1/tasks/${s.byCallback.id}/callbacks`)).data.items;
    expect(items).toHaveLength(1);
    expect(items[0]).toEqual(expect.objectContaining({ verification: 'verified', outcome: 'applied', reportedStatus: 'succeeded', duplicates: 2, early: false }));
    expect(items[0].lastDuplicateAt).toEqual(expect.any(String));
  });

  test('a callback that came before the task is listed as early and applied', async () => {
    const items = (await get(`/v1/tasks/${s.early.id}/callbacks`)).data.items;
    expect(items).toEqual([expect.objectContaining({ early: true, outcome: 'applied', result: { receipt: 'R-88' } })]);
    expect(Date.parse(items[0].receivedAt)).toBeLessThan(Date.parse(s.early.createdAt));
    expect(s.early.settledBy).toBe('callback');
  });

  test('conflicting, refused and unreadable callbacks, each with its verification result', async () => {
    const items = (await get(`/v1/tasks/${s.conflict.id}/callbacks`)).data.items;
    expect(items.map((c: { verification: string; outcome: string }) => `${c.verification}/${c.outcome}`)).toEqual([
      'verified/applied',
      'verified/conflict',
      'bad_signature/refused',
      'verified/unreadable',
    ]);
    expect(items[2].body).toBeNull();
    expect(items[3].body).toContain('exploded');
    const events = (await get(`/v1/tasks/${s.conflict.id}/events`)).data.items;
    expect(events.filter((e: { detail: { type?: string } | null }) => e.detail?.type === 'conflict')).toEqual([
      expect.objectContaining({ from: 'succeeded', to: 'succeeded', source: 'callback', detail: expect.objectContaining({ reported: 'failed' }) }),
    ]);
  });

  test('pages across both kinds of rows in one order', async () => {
    const all = (await get(`/v1/tasks/${s.conflict.id}/callbacks`)).data.items;
    const seen = [];
    let cursor: string | null = null;
    do {
      const page: { data: { items: unknown[]; nextCursor: string | null } } = await get(`/v1/tasks/${s.conflict.id}/callbacks?limit=1${cursor ? `&cursor=${cursor}` : ''}`);
      seen.push(...page.data.items);
      cursor = page.data.nextCursor;
    } while (cursor);
    expect(seen).toEqual(all);
  });
});

describe('GET /v1/tasks?requestNo=', () => {
  test('finds a request number across partners, one task per partner', async () => {
    const res = await get(`/v1/tasks?requestNo=${s.shared[0]!.requestNo}`);
    expect(res.status).toBe(200);
    expect(res.data.items.map((t: { id: string }) => t.id).sort()).toEqual(s.shared.map((t) => t.id).sort());
    const one = await get(`/v1/tasks?requestNo=${s.shared[0]!.requestNo}&partner=payouts`);
    expect(one.data.items.map((t: { partner: string }) => t.partner)).toEqual(['payouts']);
    expect((await get('/v1/tasks?requestNo=nobody-has-this')).data.items).toEqual([]);
  });

  test('property: any requestNo query is a 200 listing only that request number, or a 422', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string({ maxLength: 140 }), fc.stringMatching(/^[A-Za-z0-9._:-]{1,128}$/), fc.constantFrom(...s.all.map((t) => t.requestNo))), async (requestNo) => {
        const res = await svc.api.get('/v1/tasks', { params: { requestNo } });
        if (res.status === 422) return;
        expect(res.status).toBe(200);
        for (const t of res.data.items) expect(t.requestNo).toBe(requestNo);
      }),
      { numRuns: 150 },
    );
  });
});

describe('story paging inputs', () => {
  test('property: arbitrary limit and cursor never give a 5xx, only 200 or 422', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('attempts', 'callbacks'),
        fc.option(fc.oneof(fc.integer({ min: -5, max: 600 }).map(String), fc.string({ maxLength: 12 })), { nil: undefined }),
        fc.option(fc.oneof(fc.string({ maxLength: 220 }), fc.base64String({ maxLength: 80 }), fc.json().map((j) => Buffer.from(j).toString('base64url'))), { nil: undefined }),
        async (what, limit, cursor) => {
          const params: Record<string, string> = {};
          if (limit !== undefined) params.limit = limit;
          if (cursor !== undefined) params.cursor = cursor;
          const res = await svc.api.get(`/v1/tasks/${s.conflict.id}/${what}`, { params });
          expect([200, 422]).toContain(res.status);
          if (res.status === 200) expect(Array.isArray(res.data.items)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('GET /v1/overview', () => {
  test('per partner: open tasks by status, oldest open age, conflicts, breaker', async () => {
    const res = await get('/v1/overview');
    expect(res.status).toBe(200);
    const byId = new Map(res.data.partners.map((p: { id: string }) => [p.id, p]));
    expect([...byId.keys()].sort()).toEqual(['billing', 'payouts', 'shipping']);
    expect(byId.get('shipping')).toEqual(expect.objectContaining({ configured: true, open: { pending: 0, dispatched: 1 }, breaker: 'closed', conflicts24h: 0 }));
    expect((byId.get('shipping') as { oldestOpenTaskAgeSeconds: number }).oldestOpenTaskAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(byId.get('billing')).toEqual(expect.objectContaining({ conflicts24h: 1, open: { pending: 0, dispatched: 0 }, oldestOpenTaskAgeSeconds: null }));
  });
});

describe('key labels and manual actions', () => {
  test('GET /v1/me names the key: its label, or a fingerprint for a plain key', async () => {
    expect((await get('/v1/me', ONCALL_KEY)).data).toEqual({ label: 'oncall', authRequired: true });
    expect((await get('/v1/me')).data.label).toMatch(/^key-[0-9a-f]{8}$/);
    expectProblem(await get('/v1/me', 'not-a-key-0123456789'), 401);
  });

  test('Reconcile now is written to the events with source manual and the key label, then checked', async () => {
    const before = (await get(`/v1/tasks/${s.open.id}/attempts`)).data.items.length;
    const res = await svc.api.post(`/v1/tasks/${s.open.id}/reconcile`, undefined, { headers: { authorization: `Bearer ${ONCALL_KEY}` } });
    expect(res.status).toBe(202);
    const events = (await get(`/v1/tasks/${s.open.id}/events`)).data.items;
    expect(events.at(-1)).toEqual(expect.objectContaining({ source: 'manual', from: 'dispatched', to: 'dispatched', detail: { type: 'manual', action: 'reconcile', by: 'oncall' } }));
    await eventually(async () => {
      await svc.runtime.callLog.flush();
      const calls = (await get(`/v1/tasks/${s.open.id}/attempts`)).data.items;
      return calls.length > before && calls.at(-1).operation === 'status' ? calls.at(-1) : undefined;
    }, 'the on-demand check recorded', 20_000);
  });
});

describe('manual redelivery audit', () => {
  test('a 202 to a redeliver request is written to the task events with the key label; other answers are not', async () => {
    // The notifications router is another module's; a stand-in answers 202 (or 404) behind the real audit.
    const app = express();
    app.use((_req, res, next) => {
      res.locals.apiKeyLabel = 'oncall';
      next();
    });
    app.use(manualActionAudit(svc.runtime.tasks, pino({ level: 'silent' })));
    app.post('/v1/tasks/:id/notifications/:nid/redeliver', (req, res) => {
      res.status(req.params.nid === 'missing' ? 404 : 202).json({});
    });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const nid = '0190f5e0-0000-7000-8000-00000000abcd';
      expect((await axios.post(`${base}/v1/tasks/${s.byCallback.id}/notifications/missing/redeliver`, undefined, { validateStatus: () => true })).status).toBe(404);
      expect((await axios.post(`${base}/v1/tasks/${s.byCallback.id}/notifications/${nid}/redeliver`)).status).toBe(202);
      const manual = await eventually(async () => {
        const items = (await get(`/v1/tasks/${s.byCallback.id}/events`)).data.items.filter((e: { source: string }) => e.source === 'manual');
        return items.length > 0 ? items : undefined;
      }, 'the manual event', 10_000);
      expect(manual).toEqual([expect.objectContaining({ from: 'succeeded', to: 'succeeded', detail: { type: 'manual', action: 'redeliver', by: 'oncall', notification: nid } })]);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('/openapi.json', () => {
  test('documents the new read endpoints and the requestNo filter', async () => {
    const doc = (await svc.api.get('/openapi.json')).data;
    for (const p of ['/v1/tasks/{id}/attempts', '/v1/tasks/{id}/callbacks', '/v1/overview', '/v1/me']) expect(doc.paths[p]?.get).toBeDefined();
    expect(doc.paths['/v1/tasks'].get.parameters.map((p: { name: string }) => p.name)).toContain('requestNo');
    for (const c of ['PartnerCallList', 'ReceivedCallbackList', 'Overview', 'Session']) expect(doc.components.schemas[c]).toBeDefined();
  });
});

describe('redeliveries on the store-and-apply path (group commit)', () => {
  test('concurrent copies of one definitive callback: one stored, every other copy counted on it', async () => {
    const task = (await svc.api.post('/v1/tasks', { partner: 'payouts', kind: 'payout', payload: { simulate: { callback: { mode: 'never' } } } })).data as { id: string; requestNo: string };
    const signed = signCallback({ requestNo: task.requestNo, status: 'succeeded', result: { ref: 'P-1' } }, { secret: TEST_SECRET });
    // Copies at once may share one batched statement or race separate ones: both must count the copy.
    const copies = 6;
    const answers = await Promise.all(Array.from({ length: copies }, () => postCallback(svc.url, 'payouts', signed)));
    const outcomes = answers.map((a) => (a.data as { outcome: string }).outcome);
    expect(outcomes.filter((o) => o !== 'duplicate')).toHaveLength(1);
    const items = (await get(`/v1/tasks/${task.id}/callbacks`)).data.items as Array<{ webhookId: string; duplicates: number }>;
    expect(items).toEqual([expect.objectContaining({ webhookId: signed.headers['webhook-id'], duplicates: copies - 1 })]);
  });
});
