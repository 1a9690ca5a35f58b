import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type autocannon from 'autocannon';
import { Webhook } from 'standardwebhooks';
import { DEMO_PARTNER_SECRET } from '../../src/config/simulator-config';
import type { FreshDatabase } from '../support/database';
import { runAutocannon } from '../support/load';
import { envNumber, ms } from '../support/phase';
import { sleep } from '../support/processes';
import { BENCH_PARTNER_ID, migrateDatabase, orderedUuidSql, startServiceProcess, startSimulatorProcess, writePartnersFile, YEARLY_CRON, type RunningProcess } from '../support/services';
import { fmtNumber, summarize } from '../support/stats';
import type { ResultRow, Scenario, ScenarioContext } from '../support/types';

/**
 * `notifications`: outcome notifications to a local receiver (a process of its own, 127.0.0.1, allowed by
 * NOTIFY_ALLOWED_HOSTS).
 * 1. What the outbox costs: `POST /v1/tasks` and matched callbacks per second with `notifyUrl` unset vs
 *    set, in the same run and service; and the callback rate with the cross-replica wake (NOTIFY on final
 *    transitions) off, to price the NOTIFY.
 * 2. The time from a task's final transition (the body's `timestamp`) to its notification's arrival.
 * 3. Deliveries per second from a backlog, 32 attempts in flight.
 */

const SETTINGS = {
  connections: envNumber('BENCH_CONNECTIONS', 32),
  durationS: envNumber('BENCH_DURATION_S', 10),
  seededTasks: envNumber('BENCH_NOTIFY_TASKS', 40_000),
  backlog: envNumber('BENCH_NOTIFY_BACKLOG', 40_000),
};

export const TARGETS = Object.freeze({ arrivalP50Ms: 50, outboxCostPct: 15 });
/** The unsaturated arrival-latency phase: matched callbacks at this steady rate. */
const PACED = { rate: envNumber('BENCH_NOTIFY_PACED_RATE', 100), durationS: 5 };

/** Signs outcome notifications in the bench service. */
const NOTIFY_SECRET = `whsec_${Buffer.from('bench-notify-secret-0123456789').toString('base64')}`;
const partnerHook = new Webhook(DEMO_PARTNER_SECRET);

interface Arrival {
  /** When it arrived (epoch ms, the receiver's clock: this machine's). */
  at: number;
  /** The body's `timestamp`: when the task's final transition happened. */
  eventAt: number;
}

interface Receiver {
  url: string;
  count(): Promise<number>;
  /** Arrivals from the `from`-th on, in arrival order. */
  since(from: number): Promise<Arrival[]>;
  close(): Promise<void>;
}

/** Forks the receiver process (bench/support/receiver-process.ts) and talks to it over IPC. */
async function startReceiver(): Promise<Receiver> {
  const child = fork(path.join(__dirname, '..', 'support', 'receiver-process.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code: number | null) => reject(new Error(`the receiver process exited (${code}) before listening`)));
    child.once('message', (m: { kind?: string; port?: number }) => (m.kind === 'ready' && m.port ? resolve(m.port) : reject(new Error('unexpected first message from the receiver'))));
  });
  let nextId = 0;
  const ask = <T>(msg: Record<string, unknown>): Promise<T> =>
    new Promise<T>((resolve) => {
      const id = nextId++;
      const onMessage = (m: { id?: number } & T) => {
        if (m.id !== id) return;
        child.off('message', onMessage);
        resolve(m);
      };
      child.on('message', onMessage);
      child.send({ ...msg, id });
    });
  return {
    url: `http://127.0.0.1:${port}`,
    count: async () => (await ask<{ count: number }>({ kind: 'count' })).count,
    since: async (from) =>
      (await ask<{ arrivals: Array<{ at: number; eventAt: number | null }> }>({ kind: 'since', from })).arrivals.map((a) => ({ at: a.at, eventAt: a.eventAt ?? Number.NaN })),
    close: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.disconnect();
      await exited;
    },
  };
}

function serviceEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { RECONCILE_CRON: YEARLY_CRON, NOTIFY_SECRET, NOTIFY_ALLOWED_HOSTS: '127.0.0.1', NOTIFY_CONCURRENCY: '32', NOTIFY_HOST_CONCURRENCY: '32', ...extra };
}

async function createRate(ctx: ScenarioContext, service: RunningProcess, notifyUrl: string | undefined): Promise<number> {
  // The simulator calls back "succeeded" ~100 ms after each dispatch: a created task settles (and, with a notifyUrl, is notified) within the run.
  const body = JSON.stringify({ partner: BENCH_PARTNER_ID, payload: {}, ...(notifyUrl ? { notifyUrl } : {}) });
  const r = await runAutocannon({ url: `${service.url}/v1/tasks`, method: 'POST', connections: SETTINGS.connections, duration: SETTINGS.durationS, headers: { 'content-type': 'application/json' }, body });
  const created = r['2xx'];
  ctx.log(`create ${notifyUrl ? 'with' : 'without'} notifyUrl: ${fmtNumber(created / SETTINGS.durationS)} /s (non-2xx ${r.non2xx})`);
  return created / SETTINGS.durationS;
}

/** A distinct id range per seeded prefix. */
const UUID_PREFIX: Record<string, string> = { u: 'a', s: 'b', w: 'c', p: 'd', x: 'e', y: 'f', o: '9', q: '8', z: '7' };

async function seedDispatched(ctx: ScenarioContext, db: FreshDatabase, prefix: string, n: number, notifyUrl: string | null): Promise<void> {
  await ctx.postgres.query(
    db.url,
    `insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at, created_at, updated_at, dispatched_at, notify_url)
     select ${orderedUuidSql(UUID_PREFIX[prefix]!, 'i')}, $1, '${prefix}' || i, 'dispatched', '{}'::jsonb, md5('${prefix}' || i), 1,
            now() + interval '300 days', now() + interval '365 days', now(), now(), now(), $3
     from generate_series(0, $2::int - 1) as i`,
    [BENCH_PARTNER_ID, n, notifyUrl],
  );
}

/**
 * Matched callbacks per second over tasks `<prefix>0…`, bodies signed up front. `rate` paces the load
 * (requests per second over all connections) instead of saturating; `durationS` defaults to the run's.
 */
async function callbackRate(ctx: ScenarioContext, service: RunningProcess, prefix: string, n: number, pace: { rate?: number; durationS?: number } = {}): Promise<number> {
  const durationS = pace.durationS ?? SETTINGS.durationS;
  const runId = randomBytes(4).toString('hex');
  const at = new Date();
  const signed = Array.from({ length: n }, (_, i) => {
    const id = `nb-${runId}-${i}`;
    const body = JSON.stringify({ requestNo: `${prefix}${i}`, status: 'succeeded' });
    return { body, headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': partnerHook.sign(id, at, body) } };
  });
  let seq = 0;
  let applied = 0;
  const opts: autocannon.Options = {
    url: `${service.url}/v1/callbacks/${BENCH_PARTNER_ID}`,
    method: 'POST',
    connections: pace.rate ? 4 : SETTINGS.connections,
    duration: durationS,
    ...(pace.rate ? { overallRate: pace.rate } : {}),
    requests: [
      {
        method: 'POST',
        setupRequest: (req) => ({ ...req, ...signed[Math.min(seq++, n - 1)]! }),
        onResponse: (status, body) => {
          if (status === 200 && body.includes('applied')) applied++;
        },
      },
    ],
  };
  await runAutocannon(opts);
  if (seq >= n) ctx.note(`callbacks ${prefix}: ran out of seeded tasks (${n}); raise BENCH_NOTIFY_TASKS`);
  ctx.log(`callbacks ${prefix}: ${fmtNumber(applied / durationS)} applied/s`);
  return applied / durationS;
}

async function settle(ms: number): Promise<void> {
  await sleep(ms);
}

/**
 * Waits until every notification is delivered (none pending in the database and the receiver's count
 * holds still), so one phase's deliveries do not run into the next phase's measurement.
 */
async function drained(ctx: ScenarioContext, db: FreshDatabase, receiver: Receiver): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (let last = -1; Date.now() < deadline; ) {
    const [row] = await ctx.postgres.query<{ n: number }>(db.url, "select count(*)::int as n from notifications where status = 'pending'");
    const count = await receiver.count();
    if ((row?.n ?? 0) === 0 && count === last) return;
    last = count;
    await sleep(500);
  }
  ctx.note('notifications: deliveries were still pending 120 s after a phase');
}

export const scenario: Scenario = {
  name: 'notifications',
  description: 'outcome notifications: outbox cost on create and callbacks, final transition → arrival, deliveries/s',
  async run(ctx) {
    const rows: ResultRow[] = [];
    const cost = (unset: number, set: number) => (unset > 0 ? ((unset - set) / unset) * 100 : Number.NaN);
    const receiver = await startReceiver();
    ctx.teardown.add('receiver', () => receiver.close());
    const simulator = await startSimulatorProcess(ctx, ctx.teardown, 'notify');
    const partnersFile = await writePartnersFile(ctx, 'notify', simulator.url);
    const db = await ctx.postgres.createDatabase();
    ctx.teardown.add(`drop ${db.name}`, () => db.drop());
    await migrateDatabase(db.url);
    const n = SETTINGS.seededTasks;
    await seedDispatched(ctx, db, 'u', n, null);
    await seedDispatched(ctx, db, 's', n, `${receiver.url}/hook`);
    await seedDispatched(ctx, db, 'w', n, null);
    await seedDispatched(ctx, db, 'x', n, null);
    await seedDispatched(ctx, db, 'y', n, null);
    await seedDispatched(ctx, db, 'p', PACED.rate * PACED.durationS + 100, `${receiver.url}/paced`);
    await seedDispatched(ctx, db, 'z', n, null);
    await seedDispatched(ctx, db, 'o', n, null);
    await seedDispatched(ctx, db, 'q', n, `${receiver.url}/outbox-callback`);
    await ctx.postgres.query(db.url, 'vacuum analyze tasks');

    // 0. The price of the cross-replica wake: a service with LONG_POLL_NOTIFY=false (no NOTIFY, no LISTEN),
    //    measured first, after exactly the warm-up and phases the main service has before its own unset run.
    const quietService = await startServiceProcess(ctx, ctx.teardown, { label: 'no-listen', databaseUrl: db.url, partnersFile, env: serviceEnv({ LONG_POLL_NOTIFY: 'false' }) });
    await createRate(ctx, quietService, undefined);
    await callbackRate(ctx, quietService, 'y', n, { durationS: 3 });
    await createRate(ctx, quietService, undefined);
    const cbNoNotify = await callbackRate(ctx, quietService, 'w', n);
    await quietService.handle.stop();

    // 1. Outbox cost, same service, same run: create unset/set, callbacks unset/set.
    const service = await startServiceProcess(ctx, ctx.teardown, { label: 'notify', databaseUrl: db.url, partnersFile, env: serviceEnv() });
    // Warm-ups of both paths first; each measured phase starts with no delivery left from the one before.
    await createRate(ctx, service, undefined);
    await callbackRate(ctx, service, 'x', n, { durationS: 3 });
    const createUnset = await createRate(ctx, service, undefined);
    const cbUnset = await callbackRate(ctx, service, 'u', n);
    await drained(ctx, db, receiver);
    const createSet = await createRate(ctx, service, `${receiver.url}/created`);
    await drained(ctx, db, receiver);
    const arrivalsBefore = await receiver.count();
    const cbSet = await callbackRate(ctx, service, 's', n);
    // Let the notifications of that run arrive, then take their latency.
    for (let last = -1, now = await receiver.count(); now !== last; now = await receiver.count()) {
      last = now;
      await settle(1000);
    }
    const latencies = (await receiver.since(arrivalsBefore)).map((a) => a.at - a.eventAt).filter((v) => Number.isFinite(v));
    const lat = summarize(latencies);
    // The same latency at a steady, unsaturated rate (what a receiver sees when the service is not at its limit).
    await drained(ctx, db, receiver);
    const pacedBefore = await receiver.count();
    await callbackRate(ctx, service, 'p', PACED.rate * PACED.durationS + 100, PACED);
    await drained(ctx, db, receiver);
    const paced = summarize((await receiver.since(pacedBefore)).map((a) => a.at - a.eventAt).filter((v) => Number.isFinite(v)));
    rows.push(
      { scenario: 'notifications: create, notifyUrl unset vs set (same service, one after the other)', metric: 'tasks created/s unset → set', value: createSet, display: `${fmtNumber(createUnset)} → ${fmtNumber(createSet)} /s` },
      { scenario: 'notifications: create, one replica writing and delivering in the same window on the same cores', metric: 'cost of a notifyUrl, delivery included (%)', value: cost(createUnset, createSet), display: `${cost(createUnset, createSet).toFixed(1)} %` },
      { scenario: 'notifications: matched callbacks, notifyUrl unset vs set (each settles its task; set → outbox row + delivery)', metric: 'callbacks applied/s unset → set', value: cbSet, display: `${fmtNumber(cbUnset)} → ${fmtNumber(cbSet)} /s` },
      { scenario: 'notifications: matched callbacks, one replica writing and delivering in the same window on the same cores', metric: 'cost of a notifyUrl, delivery included (%)', value: cost(cbUnset, cbSet), display: `${cost(cbUnset, cbSet).toFixed(1)} %` },
      { scenario: 'notifications: final transition → arrival at the receiver (during the saturating callback run above)', metric: 'p50 / p99', value: lat.p50, display: `${ms(lat.p50)} / ${ms(lat.p99)} (${fmtNumber(lat.count)} notifications)` },
      { scenario: `notifications: final transition → arrival at the receiver, callbacks paced at ${PACED.rate}/s for ${PACED.durationS} s`, metric: 'p50 / p99', value: paced.p50, display: `${ms(paced.p50)} / ${ms(paced.p99)} (${fmtNumber(paced.count)} notifications)`, target: { op: '<', value: TARGETS.arrivalP50Ms } },
    );

    // 2. The outbox alone: an API-only replica (NOTIFY_CONCURRENCY=0) writes the notification row with each
    //    final transition and delivers nothing; the delivering replica is stopped meanwhile, so no delivery
    //    shares the cores with the measured phases. A delivering replica then sends all of them (phase 4).
    await service.handle.stop();
    const apiOnly = await startServiceProcess(ctx, ctx.teardown, { label: 'api-only', databaseUrl: db.url, partnersFile, env: serviceEnv({ NOTIFY_CONCURRENCY: '0' }) });
    await createRate(ctx, apiOnly, undefined);
    await callbackRate(ctx, apiOnly, 'z', n, { durationS: 3 });
    const outboxCreateUnset = await createRate(ctx, apiOnly, undefined);
    const outboxCbUnset = await callbackRate(ctx, apiOnly, 'o', n);
    const outboxCreateSet = await createRate(ctx, apiOnly, `${receiver.url}/outbox-created`);
    const outboxCbSet = await callbackRate(ctx, apiOnly, 'q', n);
    // Creates settle by the simulator's callback ~100 ms after their dispatch: let the last ones land.
    await sleep(2000);
    await apiOnly.handle.stop();
    const [written] = await ctx.postgres.query<{ n: number; delivered: number }>(
      db.url,
      "select count(*)::int as n, count(*) filter (where status <> 'pending')::int as delivered from notifications where url like '%/outbox-%'",
    );
    rows.push(
      { scenario: 'notifications: the outbox alone, create (an API-only replica, NOTIFY_CONCURRENCY=0: each settling statement also writes the notification row; delivered afterwards by another replica)', metric: 'tasks created/s unset → set', value: outboxCreateSet, display: `${fmtNumber(outboxCreateUnset)} → ${fmtNumber(outboxCreateSet)} /s` },
      { scenario: 'notifications: the outbox alone, create', metric: 'cost of the outbox (%)', value: cost(outboxCreateUnset, outboxCreateSet), display: `${cost(outboxCreateUnset, outboxCreateSet).toFixed(1)} %`, target: { op: '<', value: TARGETS.outboxCostPct } },
      { scenario: 'notifications: the outbox alone, matched callbacks (same API-only replica)', metric: 'callbacks applied/s unset → set', value: outboxCbSet, display: `${fmtNumber(outboxCbUnset)} → ${fmtNumber(outboxCbSet)} /s` },
      { scenario: 'notifications: the outbox alone, matched callbacks', metric: 'cost of the outbox (%)', value: cost(outboxCbUnset, outboxCbSet), display: `${cost(outboxCbUnset, outboxCbSet).toFixed(1)} %`, target: { op: '<', value: TARGETS.outboxCostPct } },
    );

    // 3. The price of the cross-replica wake on callbacks (from phase 0).
    rows.push({
      scenario: 'notifications: matched callbacks, a service with LONG_POLL_NOTIFY=false (no NOTIFY, no LISTEN; measured first, same warm-up) vs the unset run above (settled ids NOTIFYed after each commit, batched)',
      metric: 'callbacks applied/s without → with NOTIFY',
      value: cbUnset,
      display: `${fmtNumber(cbNoNotify)} → ${fmtNumber(cbUnset)} /s (${cost(cbNoNotify, cbUnset).toFixed(1)} %)`,
    });

    // 4. Deliveries per second from a backlog, by a replica that runs the worker: the API-only replica's
    //    notifications (still pending) and a seeded backlog.
    const deliverer = await startServiceProcess(ctx, ctx.teardown, { label: 'deliverer', databaseUrl: db.url, partnersFile, env: serviceEnv() });
    const backlog = SETTINGS.backlog;
    const before = await receiver.count();
    await ctx.postgres.query(
      db.url,
      `insert into notifications (id, task_id, type, url, host, task_snapshot, occurred_at, status, next_attempt_at)
       select gen_random_uuid(), t.id, 'task.succeeded', $1, lower(substring($1 from '://([^/]+)')), to_jsonb(t), now(), 'pending', now()
       from tasks t, generate_series(1, $2::int) g where t.request_no = 'u0'`,
      [`${receiver.url}/backlog`, backlog],
    );
    const start = Date.now();
    const windowMs = SETTINGS.durationS * 1000;
    await sleep(windowMs + 1500);
    const inWindow = (await receiver.since(before)).filter((a) => a.at - start <= windowMs + 1500);
    const first = inWindow[0]?.at ?? start;
    const counted = inWindow.filter((a) => a.at - first <= windowMs).length;
    rows.push({
      scenario: `notifications: deliveries from a backlog of ${fmtNumber(backlog)}, 32 in flight, one receiver host`,
      metric: 'deliveries/s',
      value: counted / SETTINGS.durationS,
      display: `${fmtNumber(counted / SETTINGS.durationS)} /s`,
    });
    await drained(ctx, db, receiver);
    const [after] = await ctx.postgres.query<{ delivered: number }>(
      db.url,
      "select count(*) filter (where status = 'delivered')::int as delivered from notifications where url like '%/outbox-%'",
    );
    const outboxDelivered = (after?.delivered ?? 0) - (written?.delivered ?? 0);
    rows.push({
      scenario: 'notifications: the API-only replica\'s notifications, delivered afterwards by the other replica',
      metric: 'delivered / written',
      value: outboxDelivered,
      display: `${fmtNumber(outboxDelivered)} / ${fmtNumber(written?.n ?? 0)} (${fmtNumber(written?.delivered ?? 0)} sent before it started)`,
      target: { op: '==', value: written?.n ?? 0 },
    });
    await deliverer.handle.stop();
    return rows;
  },
};
