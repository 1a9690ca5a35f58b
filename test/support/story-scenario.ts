import type { AxiosInstance } from 'axios';
import type { ApiTask } from '../../src/tasks/task-schemas';
import { newWebhookId, postCallback, report, signCallback } from '../e2e/callback-helpers';
import { eventually, TEST_SECRET, type TestService } from './service';

/**
 * The tasks an operator's console is tested (and photographed) with, made through the public API and the
 * simulator only: one settled by callback (delivered three times), one by poll, one whose callback came
 * before the task, one with a conflict (plus a refused and an unreadable callback), one whose first
 * dispatch failed, one still open, one request number used with two partners, and filler for paging.
 */
export interface StoryScenario {
  byCallback: ApiTask;
  byPoll: ApiTask;
  early: ApiTask;
  conflict: ApiTask;
  transient: ApiTask;
  open: ApiTask;
  shared: ApiTask[];
  all: ApiTask[];
}

/** The test service's own partner (the simulator) goes by this id in the scenario. */
export const SCENARIO_MAIN_PARTNER = { id: 'billing' };
export const SCENARIO_PARTNERS = [
  { id: 'payouts', baseUrl: '{simulator}', callback: { secret: TEST_SECRET, verify: 'signature' } },
  { id: 'shipping', baseUrl: '{simulator}', callback: { secret: TEST_SECRET, verify: 'signature' } },
];

/** Env for the service under a scenario: quick sweeps and a short callback re-lookup. */
export const SCENARIO_ENV = { RECONCILE_CRON: '*/1 * * * * *', CALLBACK_LOOKUP_TIMEOUT_MS: '200' };

const never = { callback: { mode: 'never' } };

async function create(api: AxiosInstance, body: Record<string, unknown>): Promise<ApiTask> {
  const res = await api.post('/v1/tasks', body);
  if (res.status !== 201) throw new Error(`create answered ${res.status}: ${JSON.stringify(res.data)}`);
  return res.data as ApiTask;
}

async function settled(api: AxiosInstance, id: string, what: string, statuses = ['succeeded', 'failed', 'rejected']): Promise<ApiTask> {
  return eventually(async () => {
    const t = (await api.get(`/v1/tasks/${id}`)).data as ApiTask;
    return statuses.includes(t.status) ? t : undefined;
  }, what, 30_000, 50);
}

export async function seedStoryScenario(svc: TestService, tag: string): Promise<StoryScenario> {
  const { api, url } = svc;
  const rn = (n: string) => (tag ? `${tag}-${n}` : n);

  const byCallback = await create(api, { partner: 'billing', requestNo: rn('order-1001'), kind: 'charge', payload: { amount: 4200, currency: 'EUR', simulate: { callback: { times: 3 } } } });

  const byPoll = await create(api, { partner: 'billing', requestNo: rn('order-1002'), kind: 'refund', payload: { amount: 1500, simulate: never } });
  await eventually(async () => ((await api.get(`/v1/tasks/${byPoll.id}`)).data.status === 'dispatched' ? true : undefined), 'order-1002 dispatched', 30_000);
  await api.post(`/v1/tasks/${byPoll.id}/reconcile`);

  // The partner reports before the client's task exists: kept, then applied when the task is created.
  const earlyNo = rn('order-1003');
  const early202 = await postCallback(url, 'billing', signCallback(report(earlyNo, 'succeeded', { result: { receipt: 'R-88' } }), { secret: TEST_SECRET }));
  if (early202.status !== 202) throw new Error(`early callback answered ${early202.status}`);
  const early = await create(api, { partner: 'billing', requestNo: earlyNo, kind: 'charge', payload: { amount: 990, simulate: never } });

  const conflict = await create(api, { partner: 'billing', requestNo: rn('order-1004'), kind: 'charge', payload: { amount: 12000 } });
  await settled(api, conflict.id, 'order-1004 settled');
  await postCallback(url, 'billing', signCallback(report(conflict.requestNo, 'failed', { error: { code: 'card_declined' } }), { secret: TEST_SECRET }));
  const forged = signCallback(report(conflict.requestNo, 'failed'), { secret: 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD', webhookId: newWebhookId() });
  await postCallback(url, 'billing', forged);
  await postCallback(url, 'billing', signCallback({ requestNo: conflict.requestNo, status: 'exploded' }, { secret: TEST_SECRET }));

  const transient = await create(api, { partner: 'payouts', requestNo: rn('order-1005'), kind: 'payout', payload: { amount: 300, simulate: { dispatch: [{ status: 503 }, { status: 202 }] } } });
  const open = await create(api, { partner: 'shipping', requestNo: rn('order-1006'), kind: 'label', payload: { parcel: 'P-7', simulate: { callback: { mode: 'never' }, processingForMs: 3_600_000 } } });

  const shared = [
    await create(api, { partner: 'billing', requestNo: rn('order-2001'), kind: 'charge', payload: { amount: 50 } }),
    await create(api, { partner: 'payouts', requestNo: rn('order-2001'), kind: 'payout', payload: { amount: 50 } }),
  ];

  const filler: ApiTask[] = [];
  const partners = ['billing', 'payouts', 'shipping'];
  for (let i = 0; i < 22; i++) {
    filler.push(
      await create(api, {
        partner: partners[i % 3],
        requestNo: rn(`order-${3001 + i}`),
        kind: i % 3 === 0 ? (i % 2 ? 'refund' : 'charge') : i % 3 === 1 ? 'payout' : 'label',
        payload: { amount: 100 + i, ...(i % 7 === 3 ? { simulate: { outcome: 'failed', error: { code: 'insufficient_funds' } } } : {}) },
      }),
    );
  }

  await settled(api, byCallback.id, 'order-1001 settled');
  await settled(api, byPoll.id, 'order-1002 settled by poll');
  await settled(api, early.id, 'order-1003 settled');
  await settled(api, transient.id, 'order-1005 settled');
  await eventually(async () => ((await api.get(`/v1/tasks/${open.id}`)).data.status === 'dispatched' ? true : undefined), 'order-1006 dispatched', 30_000);
  // Every duplicate of order-1001 has been counted (the simulator sends the copies one after another).
  await eventually(async () => {
    const cbs = (await api.get(`/v1/tasks/${byCallback.id}/callbacks`)).data.items as Array<{ duplicates: number }>;
    return cbs[0]?.duplicates === 2 ? true : undefined;
  }, 'order-1001 duplicates counted', 30_000);
  for (const t of [...shared, ...filler]) await settled(api, t.id, `${t.requestNo} settled`);
  await svc.runtime.callLog.flush();

  const all = [byCallback, byPoll, early, conflict, transient, open, ...shared, ...filler];
  return { byCallback: await get(api, byCallback), byPoll: await get(api, byPoll), early: await get(api, early), conflict: await get(api, conflict), transient: await get(api, transient), open: await get(api, open), shared, all };
}

async function get(api: AxiosInstance, t: ApiTask): Promise<ApiTask> {
  return (await api.get(`/v1/tasks/${t.id}`)).data as ApiTask;
}
