import { randomBytes } from 'node:crypto';
import type autocannon from 'autocannon';
import { Pool } from 'pg';
import { Webhook } from 'standardwebhooks';
import { DEMO_PARTNER_SECRET } from '../../src/config/simulator-config';
import { CpuWindow, type CpuReport, type QuietResult } from '../support/cpu';
import type { FreshDatabase } from '../support/database';
import { keepAliveAgent, runPool, timedRequest } from '../support/http-client';
import { inFlightAtStop, runAutocannon, statusCodes } from '../support/load';
import { cpuText, envNumber, ms, noiseNote, quietBeforePhase } from '../support/phase';
import { sleep } from '../support/processes';
import { RssSampler, type RssReport } from '../support/rss';
import { sharedCeiling } from './create';
import {
  BENCH_PARTNER_ID,
  migrateDatabase,
  orderedUuidSql,
  startServiceProcess,
  startSimulatorProcess,
  warnLines,
  writePartnersFile,
  YEARLY_CRON,
  type RunningProcess,
} from '../support/services';
import { fmtNumber, summarize, type Summary } from '../support/stats';
import type { ResultRow, Scenario, ScenarioContext } from '../support/types';

/**
 * `callbacks`: how many matched partner callbacks per second `POST /v1/callbacks/{partner}` handles, and
 * how soon a callback that arrived before its task is answered once the task is committed, within one
 * service process and across two (plus a measured naive "sleep 1 s and look again" loop for reference).
 */

const SETTINGS = {
  connections: envNumber('BENCH_CONNECTIONS', 32),
  warmupS: envNumber('BENCH_WARMUP_S', 2),
  durationS: envNumber('BENCH_DURATION_S', 10),
  /** Tasks seeded for the matched-callback load; each request settles a different one. */
  seededTasks: envNumber('BENCH_CALLBACK_TASKS', 60_000),
  /** Early-callback samples per mode (one process, two processes). */
  latencySamples: envNumber('BENCH_LATENCY_SAMPLES', 200),
  /** Samples in flight at once. */
  latencyConcurrency: envNumber('BENCH_LATENCY_CONCURRENCY', 4),
  naiveSamples: envNumber('BENCH_NAIVE_SAMPLES', 60),
  naiveConcurrency: 20,
  naiveSleepMs: 1000,
  /** The create follows the callback after gapMs ± jitterMs (uniform), so it does not land in phase with the handler's re-lookup schedule. */
  gapMs: 50,
  gapJitterMs: 20,
};

export const TARGETS = Object.freeze({
  callbacksPerSecond: 2000,
  /** Matched callbacks/s ÷ the single-row insert ceiling of the same run (shared with the create scenario). */
  ratio: 0.4,
  peakRssMb: 150,
  p99Ms: 50,
  inProcessP50Ms: 5,
  crossProcessP50Ms: 60,
});

const webhook = new Webhook(DEMO_PARTNER_SECRET);

interface Signed {
  headers: Record<string, string>;
  body: string;
}

function signCallback(webhookId: string, body: string, at = new Date()): Signed {
  return {
    headers: {
      'content-type': 'application/json',
      'webhook-id': webhookId,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': webhook.sign(webhookId, at, body),
    },
    body,
  };
}

const gap = () => SETTINGS.gapMs + (Math.random() * 2 - 1) * SETTINGS.gapJitterMs;

// ---------------------------------------------------------------------------------------------------------
// Matched callbacks per second

interface OutcomeCounter {
  byOutcome: Record<string, number>;
}

interface MatchedRun {
  warmup: autocannon.Result;
  result: autocannon.Result;
  warmOutcomes: Record<string, number>;
  runOutcomes: Record<string, number>;
  applied: number;
  perSecond: number;
  exhausted: boolean;
  sent: number;
  dbSettledByCallback: number;
  dbOtherStatuses: Record<string, number>;
  inbox: Record<string, number>;
  expectedApplied: number;
  inflight: number;
  cpu: CpuReport;
  rss: RssReport;
  quiet: QuietResult;
  signMs: number;
  seedMs: number;
  warnings: { total: number; top: string[] };
}

async function seedDispatched(ctx: ScenarioContext, db: FreshDatabase, n: number): Promise<void> {
  await ctx.postgres.query(
    db.url,
    `insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at, created_at, updated_at, dispatched_at)
     select ${orderedUuidSql('1', 'i')}, $1, 'r' || i, 'dispatched', jsonb_build_object('n', i), md5('r' || i), 1,
            now() + interval '300 days', now() + interval '365 days', now() - interval '1 minute', now() - interval '1 minute', now() - interval '1 minute'
     from generate_series(0, $2::int - 1) as i`,
    [BENCH_PARTNER_ID, n],
  );
  await ctx.postgres.query(db.url, 'vacuum analyze tasks');
}

async function runMatched(ctx: ScenarioContext, simulator: RunningProcess): Promise<MatchedRun> {
  const td = ctx.teardown.child('matched callbacks');
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    await migrateDatabase(db.url);
    const seed0 = performance.now();
    await seedDispatched(ctx, db, SETTINGS.seededTasks);
    const seedMs = performance.now() - seed0;

    const partnersFile = await writePartnersFile(ctx, 'matched', simulator.url);
    const service = await startServiceProcess(ctx, td, { label: 'matched', databaseUrl: db.url, partnersFile, env: { RECONCILE_CRON: YEARLY_CRON } });

    // Every body signed up front: the load generator only picks the next one.
    const runId = randomBytes(4).toString('hex');
    const sign0 = performance.now();
    const signed: Signed[] = new Array<Signed>(SETTINGS.seededTasks);
    const at = new Date();
    for (let i = 0; i < SETTINGS.seededTasks; i++) {
      signed[i] = signCallback(`bench-${runId}-${i}`, JSON.stringify({ requestNo: `r${i}`, status: 'succeeded', result: { n: i } }), at);
    }
    const signMs = performance.now() - sign0;
    ctx.log(`matched: ${fmtNumber(SETTINGS.seededTasks)} dispatched tasks seeded in ${(seedMs / 1000).toFixed(1)} s, bodies signed in ${fmtNumber(signMs)} ms; service on ${service.url} (db ${db.name})`);

    let seq = 0;
    let exhausted = false;
    let counter: OutcomeCounter = { byOutcome: {} };
    const outcomeRe = /"outcome":"([a-z_]+)"/;
    const load: autocannon.Options = {
      url: `${service.url}/v1/callbacks/${BENCH_PARTNER_ID}`,
      method: 'POST',
      connections: SETTINGS.connections,
      timeout: 10,
      requests: [
        {
          method: 'POST',
          setupRequest: (req) => {
            const s = signed[seq];
            if (s === undefined) {
              exhausted = true;
              return { ...req, ...signed[signed.length - 1]! };
            }
            seq++;
            return { ...req, headers: s.headers, body: s.body };
          },
          onResponse: (status, body) => {
            const outcome = `${status} ${outcomeRe.exec(body)?.[1] ?? '?'}`;
            counter.byOutcome[outcome] = (counter.byOutcome[outcome] ?? 0) + 1;
          },
        },
      ],
    };

    const quiet = await quietBeforePhase(ctx);
    const warmCounter = counter;
    const warmup = await runAutocannon({ ...load, duration: SETTINGS.warmupS });
    counter = { byOutcome: {} };
    await sleep(1000);
    ctx.log(`matched: warm-up ${fmtNumber(warmup['2xx'])} 2xx; run ${SETTINGS.durationS} s, ${SETTINGS.connections} connections`);
    const cpu = new CpuWindow({ service: service.handle.pid }, db.name).start();
    const rss = new RssSampler(service.handle.pid, 100).start();
    const result = await runAutocannon({ ...load, duration: SETTINGS.durationS });
    const rssReport = rss.stop();
    const cpuReport = cpu.stop();
    if (service.handle.exitInfo()) throw new Error(`the service exited during the run:\n${service.handle.tail()}`);

    // Requests unanswered at stop may still land: wait for the count to hold still.
    const settledCount = async () =>
      Number((await ctx.postgres.query<{ n: string }>(db.url, `select count(*) as n from tasks where status = 'succeeded' and settled_by = 'callback'`))[0]?.n ?? 0);
    let dbSettledByCallback = await settledCount();
    for (let stable = 0, tries = 0; stable < 2 && tries < 50; tries++) {
      await sleep(200);
      const n = await settledCount();
      stable = n === dbSettledByCallback ? stable + 1 : 0;
      dbSettledByCallback = n;
    }
    const others = await ctx.postgres.query<{ status: string; settled_by: string | null; n: string }>(
      db.url,
      `select status, settled_by, count(*) as n from tasks where not (status = 'succeeded' and settled_by = 'callback') group by 1, 2`,
    );
    const inbox = await ctx.postgres.query<{ outcome: string; n: string }>(db.url, 'select outcome, count(*) as n from callback_inbox group by 1');
    await td.run();

    const applied = counter.byOutcome['200 applied'] ?? 0;
    const warmApplied = warmCounter.byOutcome['200 applied'] ?? 0;
    return {
      warmup,
      result,
      warmOutcomes: warmCounter.byOutcome,
      runOutcomes: counter.byOutcome,
      applied,
      perSecond: applied / result.duration,
      exhausted,
      sent: seq,
      dbSettledByCallback,
      dbOtherStatuses: Object.fromEntries(others.map((r) => [`${r.status}/${r.settled_by ?? '-'}`, Number(r.n)])),
      inbox: Object.fromEntries(inbox.map((r) => [r.outcome, Number(r.n)])),
      expectedApplied: warmApplied + applied,
      inflight: inFlightAtStop(warmup) + inFlightAtStop(result),
      cpu: cpuReport,
      rss: rssReport,
      quiet,
      signMs,
      seedMs,
      warnings: await warnLines(service.logFile),
    };
  } finally {
    await td.run();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Early callbacks: callback first, the task ~50 ms later

interface EarlySample {
  callbackStatus: number;
  callbackOutcome: string;
  createStatus: number;
  /** Callback answer − the create's 201 (may be ≤ 0). */
  fromCommitMs: number;
  /** Callback answer − sending the create (an upper bound that includes the insert itself). */
  fromCreateSentMs: number;
  /** The create's answer when it was not a 201 (for the report). */
  createProblem?: string;
}

interface EarlyRun {
  label: string;
  samples: EarlySample[];
  latency: Summary;
  upperBound: Summary;
  nonPositive: number;
  answers: Record<string, number>;
  badCreates: number;
  earlyInDb: number;
  matchedInDb: number;
  seconds: number;
  quiet: QuietResult;
  cpu: CpuReport;
}

async function runEarly(
  ctx: ScenarioContext,
  mode: 'one' | 'two',
  label: string,
  db: FreshDatabase,
  callbackTo: RunningProcess,
  createOn: RunningProcess,
  watched: Record<string, number>,
  runId: string,
): Promise<EarlyRun> {
  const agent = keepAliveAgent(SETTINGS.latencyConcurrency * 2 + 2);
  const prefix = `early-${mode}-${runId}-`;
  const sample = async (i: number): Promise<EarlySample> => {
    const requestNo = `${prefix}${i}`;
    const cb = signCallback(`${prefix}${i}`, JSON.stringify({ requestNo, status: 'succeeded', result: { n: i } }));
    const createBody = JSON.stringify({ partner: BENCH_PARTNER_ID, requestNo, payload: { simulate: { callback: { mode: 'never' } } } });
    const callback = timedRequest(agent, `${callbackTo.url}/v1/callbacks/${BENCH_PARTNER_ID}`, { method: 'POST', headers: cb.headers, body: cb.body });
    await sleep(gap());
    const createSent = performance.now();
    const created = await timedRequest(agent, `${createOn.url}/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: createBody });
    const answer = await callback;
    let outcome = '?';
    try {
      outcome = String((JSON.parse(answer.body) as { outcome?: unknown }).outcome);
    } catch {
      outcome = answer.body.slice(0, 60);
    }
    return {
      callbackStatus: answer.status,
      callbackOutcome: outcome,
      createStatus: created.status,
      fromCommitMs: answer.at - created.at,
      fromCreateSentMs: answer.at - createSent,
      ...(created.status !== 201 ? { createProblem: `${created.status} ${created.body.slice(0, 200)}` } : {}),
    };
  };

  const quiet = await quietBeforePhase(ctx);
  const cpu = new CpuWindow(watched, db.name).start();
  const started = performance.now();
  const samples = await runPool(SETTINGS.latencySamples, SETTINGS.latencyConcurrency, sample);
  const seconds = (performance.now() - started) / 1000;
  const cpuReport = cpu.stop();
  agent.destroy();

  const [check] = await ctx.postgres.query<{ early: string; total: string }>(
    db.url,
    `select count(*) filter (where i.received_at < t.created_at) as early, count(*) as total
     from callback_inbox i join tasks t on t.partner = i.partner and t.request_no = i.request_no
     where i.partner = $1 and i.request_no like $2`,
    [BENCH_PARTNER_ID, `${prefix}%`],
  );
  const answers: Record<string, number> = {};
  for (const s of samples) answers[`${s.callbackStatus} ${s.callbackOutcome}`] = (answers[`${s.callbackStatus} ${s.callbackOutcome}`] ?? 0) + 1;
  return {
    label,
    samples,
    latency: summarize(samples.map((s) => Math.max(0, s.fromCommitMs))),
    upperBound: summarize(samples.map((s) => s.fromCreateSentMs)),
    nonPositive: samples.filter((s) => s.fromCommitMs <= 0).length,
    answers,
    badCreates: samples.filter((s) => s.createStatus !== 201).length,
    earlyInDb: Number(check?.early ?? 0),
    matchedInDb: Number(check?.total ?? 0),
    seconds,
    quiet,
    cpu: cpuReport,
  };
}

/** The naive handler: look the task up, and while it is absent sleep 1 s and look again (measured against the same DB). */
async function runNaive(ctx: ScenarioContext, db: FreshDatabase, service: RunningProcess, runId: string): Promise<{ latency: Summary; found: number; badCreates: number }> {
  const pool = new Pool({ connectionString: db.url, max: SETTINGS.naiveConcurrency, application_name: 'bench-naive' });
  const agent = keepAliveAgent(SETTINGS.naiveConcurrency + 2);
  try {
    const prefix = `naive-${runId}-`;
    const sample = async (i: number) => {
      const requestNo = `${prefix}${i}`;
      const waiter = (async () => {
        for (let tries = 0; tries < 10; tries++) {
          const r = await pool.query('select id from tasks where partner = $1 and request_no = $2', [BENCH_PARTNER_ID, requestNo]);
          if ((r.rowCount ?? 0) > 0) return performance.now();
          await sleep(SETTINGS.naiveSleepMs);
        }
        return Number.NaN;
      })();
      await sleep(gap());
      const created = await timedRequest(agent, `${service.url}/v1/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ partner: BENCH_PARTNER_ID, requestNo, payload: { simulate: { callback: { mode: 'never' } } } }),
      });
      const found = await waiter;
      return { ms: Math.max(0, found - created.at), ok: created.status === 201, found: Number.isFinite(found) };
    };
    const samples = await runPool(SETTINGS.naiveSamples, SETTINGS.naiveConcurrency, sample);
    return {
      latency: summarize(samples.filter((s) => s.found).map((s) => s.ms)),
      found: samples.filter((s) => s.found).length,
      badCreates: samples.filter((s) => !s.ok).length,
    };
  } finally {
    agent.destroy();
    await pool.end();
  }
}

// ---------------------------------------------------------------------------------------------------------

function matchedRows(r: MatchedRun): ResultRow[] {
  const scenario = `callbacks: matched, ${SETTINGS.connections} connections, ${SETTINGS.durationS} s`;
  const res = r.result;
  const codes = statusCodes(res);
  const warmCodes = statusCodes(r.warmup);
  const non2xx = res.non2xx + r.warmup.non2xx;
  const notApplied = Object.entries({ ...r.runOutcomes })
    .filter(([k]) => k !== '200 applied')
    .concat(Object.entries(r.warmOutcomes).filter(([k]) => k !== '200 applied').map(([k, v]) => [`warm-up ${k}`, v]));
  const serviceCpu = r.cpu.processes['service'] ?? Number.NaN;
  const cpuMsPer = ((serviceCpu / 100) * r.cpu.seconds * 1000) / Math.max(r.applied, 1);
  const pgMsPer = ((r.cpu.postgresOwnPct / 100) * r.cpu.seconds * 1000) / Math.max(r.applied, 1);
  const dbOk =
    r.dbSettledByCallback >= r.expectedApplied &&
    r.dbSettledByCallback <= r.expectedApplied + r.inflight &&
    (r.inbox['applied'] ?? 0) === r.dbSettledByCallback &&
    Object.keys(r.inbox).every((k) => k === 'applied');
  return [
    {
      scenario,
      metric: 'callbacks applied/s (200 applied ÷ duration)',
      value: r.perSecond,
      display: `${fmtNumber(r.perSecond)} /s (${fmtNumber(r.applied)} in ${res.duration} s)`,
      target: { op: '>=', value: TARGETS.callbacksPerSecond },
    },
    { scenario, metric: 'latency p50', value: res.latency.p50, display: ms(res.latency.p50) },
    { scenario, metric: 'latency p99', value: res.latency.p99, display: `${ms(res.latency.p99)} (max ${ms(res.latency.max)})`, target: { op: '<', value: TARGETS.p99Ms } },
    {
      scenario,
      metric: 'non-2xx responses (warm-up + run)',
      value: non2xx,
      display: non2xx ? `${non2xx} (run ${JSON.stringify(codes)}, warm-up ${JSON.stringify(warmCodes)})` : '0',
      target: { op: '==', value: 0 },
      assertion: true,
    },
    {
      scenario,
      metric: 'answers other than 200 applied; errors / timeouts',
      value: notApplied.length + res.errors + res.timeouts,
      display: `${notApplied.length ? notApplied.map(([k, v]) => `${k}: ${v}`).join(', ') : '0'}; ${res.errors + r.warmup.errors} / ${res.timeouts + r.warmup.timeouts}${r.exhausted ? '; SEEDED TASKS EXHAUSTED (raise BENCH_CALLBACK_TASKS)' : ''}`,
      targetText: '0; 0 / 0',
      ok: notApplied.length === 0 && res.errors + r.warmup.errors === 0 && res.timeouts + r.warmup.timeouts === 0 && !r.exhausted,
      assertion: true,
    },
    {
      scenario,
      metric: 'DB: tasks succeeded by callback, inbox rows applied',
      value: r.dbSettledByCallback,
      display:
        `${fmtNumber(r.dbSettledByCallback)} tasks, ${fmtNumber(r.inbox['applied'] ?? 0)} inbox applied` +
        ` (answers 200 applied: ${fmtNumber(r.expectedApplied)} incl. warm-up; other inbox outcomes ${JSON.stringify(Object.fromEntries(Object.entries(r.inbox).filter(([k]) => k !== 'applied')))};` +
        ` other tasks ${JSON.stringify(r.dbOtherStatuses)})`,
      targetText: `= applied answers (+ ≤ ${r.inflight} in flight at stop), inbox = tasks`,
      ok: dbOk,
      assertion: true,
    },
    {
      scenario,
      metric: 'service peak RSS',
      value: Math.max(r.rss.peakSampledMb, Number.isFinite(r.rss.hwmMb) ? r.rss.hwmMb : 0),
      display: `${r.rss.peakSampledMb.toFixed(1)} MB sampled (${r.rss.firstMb.toFixed(1)} MB at run start, ${r.rss.lastMb.toFixed(1)} MB at the end; VmHWM ${r.rss.hwmMb.toFixed(1)} MB)`,
      target: { op: '<', value: TARGETS.peakRssMb },
    },
    { scenario, metric: 'CPU during the run', value: serviceCpu, display: cpuText(r.cpu, ['service'], 'runner/autocannon') },
    {
      scenario,
      metric: 'CPU per applied callback',
      value: cpuMsPer,
      display: `service ${ms(cpuMsPer)}, postgres backends of its database ${ms(pgMsPer)} → the service alone on one core ≈ ${fmtNumber(1000 / cpuMsPer)} callbacks/s`,
    },
  ];
}

function earlyRows(r: EarlyRun, target: number | undefined): ResultRow[] {
  const scenario = `callbacks: early callback → answer after the task's commit, ${r.label} (${r.samples.length} samples, ${SETTINGS.latencyConcurrency} at a time)`;
  const applied = r.answers['200 applied'] ?? 0;
  return [
    {
      scenario,
      metric: 'match latency p50 (answer − create 201, clamped at 0)',
      value: r.latency.p50,
      display: ms(r.latency.p50),
      ...(target !== undefined ? { target: { op: '<' as const, value: target } } : {}),
    },
    { scenario, metric: 'match latency p99', value: r.latency.p99, display: `${ms(r.latency.p99)} (max ${ms(r.latency.max)}; ${r.nonPositive} of ${r.samples.length} answered before the create's 201 arrived)` },
    {
      scenario,
      metric: 'upper bound: answer − create sent, p50 / p99',
      value: r.upperBound.p50,
      display: `${ms(r.upperBound.p50)} / ${ms(r.upperBound.p99)} (includes the create's own insert and queued-callback apply)`,
    },
    {
      scenario,
      metric: 'callback answers; creates; callbacks stored before their task',
      value: applied,
      display:
        `${Object.entries(r.answers).map(([k, v]) => `${k}: ${v}`).join(', ')}; ${r.samples.length - r.badCreates} × 201` +
        `${r.badCreates ? ` (first other: ${r.samples.find((s) => s.createProblem)?.createProblem})` : ''}; ${r.earlyInDb} of ${r.matchedInDb} early in the DB`,
      targetText: 'all 200 applied; all 201; all early',
      ok: applied === r.samples.length && r.badCreates === 0 && r.earlyInDb === r.samples.length && r.matchedInDb === r.samples.length,
      assertion: true,
    },
  ];
}

async function run(ctx: ScenarioContext): Promise<ResultRow[]> {
  const rows: ResultRow[] = [];
  const simulator = await startSimulatorProcess(ctx, ctx.teardown, 'callbacks');

  // 1. Matched callbacks per second.
  const matched = await runMatched(ctx, simulator);
  rows.push(...matchedRows(matched));
  const ceiling = await sharedCeiling(ctx);
  rows.push({
    scenario: 'callbacks',
    metric: 'ratio matched callbacks/s ÷ ceiling inserts/s (same run)',
    value: matched.perSecond / ceiling.perSecond,
    display: `${(matched.perSecond / ceiling.perSecond).toFixed(2)} (${fmtNumber(matched.perSecond)} vs ${fmtNumber(ceiling.perSecond)} inserts/s; p99 ${ms(matched.result.latency.p99)})`,
    target: { op: '>=', value: TARGETS.ratio },
  });

  // 2. Early callbacks: one database, two service processes A and B.
  const td = ctx.teardown.child('early callbacks');
  let inProcess: EarlyRun | undefined;
  let cross: EarlyRun | undefined;
  let naive: Awaited<ReturnType<typeof runNaive>> | undefined;
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    await migrateDatabase(db.url);
    const partnersFile = await writePartnersFile(ctx, 'early', simulator.url);
    const env = { RECONCILE_CRON: YEARLY_CRON };
    const [a, b] = await Promise.all([
      startServiceProcess(ctx, td, { label: 'early-A', databaseUrl: db.url, partnersFile, env }),
      startServiceProcess(ctx, td, { label: 'early-B', databaseUrl: db.url, partnersFile, env }),
    ]);
    const runId = randomBytes(4).toString('hex');
    ctx.log(`early: services A ${a.url}, B ${b.url} (db ${db.name}); ${SETTINGS.latencySamples} samples per mode`);
    // A few unmeasured samples first, so neither process pays for its first requests in the figures.
    await runPool(8, 4, async (i) => {
      const r = `warm-${runId}-${i}`;
      const cb = signCallback(r, JSON.stringify({ requestNo: r, status: 'succeeded' }));
      const agent = keepAliveAgent(4);
      const p = timedRequest(agent, `${(i % 2 ? a : b).url}/v1/callbacks/${BENCH_PARTNER_ID}`, { method: 'POST', headers: cb.headers, body: cb.body });
      await sleep(20);
      await timedRequest(agent, `${(i % 2 ? b : a).url}/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ partner: BENCH_PARTNER_ID, requestNo: r, payload: {} }) });
      await p;
      agent.destroy();
    });

    const watched = { 'service A': a.handle.pid, 'service B': b.handle.pid };
    inProcess = await runEarly(ctx, 'one', 'one process (callback and create to A)', db, a, a, watched, runId);
    rows.push(...earlyRows(inProcess, TARGETS.inProcessP50Ms));
    cross = await runEarly(ctx, 'two', 'two processes (callback to A, create to B)', db, a, b, watched, runId);
    rows.push(...earlyRows(cross, TARGETS.crossProcessP50Ms));

    naive = await runNaive(ctx, db, a, runId);
    const ns = `callbacks: naive reference, SELECT then sleep ${SETTINGS.naiveSleepMs} ms and retry (measured, ${SETTINGS.naiveSamples} samples)`;
    rows.push(
      { scenario: ns, metric: 'match latency p50 (found − create 201)', value: naive.latency.p50, display: `${ms(naive.latency.p50)} (computed: ≈ ${SETTINGS.naiveSleepMs - SETTINGS.gapMs} ms for a task created ~${SETTINGS.gapMs} ms after the first miss; ≈ ${SETTINGS.naiveSleepMs / 2} ms for a uniformly random moment)` },
      {
        scenario: ns,
        metric: 'match latency p99; found',
        value: naive.latency.p99,
        display: `${ms(naive.latency.p99)}; ${naive.found} of ${SETTINGS.naiveSamples} found, ${naive.badCreates} creates not 201`,
        ok: naive.found === SETTINGS.naiveSamples && naive.badCreates === 0,
        targetText: 'all found',
        assertion: true,
      },
    );
    const warns = await Promise.all([warnLines(a.logFile), warnLines(b.logFile)]);
    warns.forEach((w, i) => {
      if (w.total > 0) ctx.note(`early phase: service ${i ? 'B' : 'A'} logged ${w.total} warn+ lines: ${w.top.join('; ')}`);
    });
    await td.run();
  } finally {
    await td.run();
  }

  ctx.note(
    `matched: ${fmtNumber(SETTINGS.seededTasks)} tasks seeded straight into a fresh database (status dispatched, next check in 300 days) in ${(matched.seedMs / 1000).toFixed(1)} s, before the service started; every request settles a different task with its own webhook-id; ` +
      `bodies pre-signed with standardwebhooks (${fmtNumber(matched.signMs)} ms for all of them, not in the load generator's hot path); RECONCILE_CRON yearly; ${SETTINGS.warmupS} s warm-up on other tasks; autocannon in the runner process; latency percentiles are autocannon's (1 ms resolution).`,
  );
  ctx.note(
    `early callbacks: the callback is sent first, the create follows ${SETTINGS.gapMs} ± ${SETTINGS.gapJitterMs} ms later (uniform), payload simulate.callback.mode=never; ` +
      `"match latency" = callback answer arrival − the create's 201 arrival (a proxy just after the commit; clamped at 0), the upper bound = callback answer − create sent. ` +
      `Same database for both modes; services A and B at default CALLBACK_LOOKUP_TIMEOUT_MS, RECONCILE_CRON yearly. "early in the DB" checks callback_inbox.received_at < tasks.created_at for every sample.`,
  );
  noiseNote(ctx, 'matched callbacks', matched.cpu, matched.quiet);
  for (const r of [inProcess, cross]) {
    if (!r) continue;
    ctx.note(`early, ${r.label}: ${r.samples.length} samples in ${r.seconds.toFixed(1)} s; CPU ${cpuText(r.cpu, ['service A', 'service B'])}`);
    noiseNote(ctx, `early, ${r.label}`, r.cpu, r.quiet);
  }
  if (matched.warnings.total > 0) ctx.note(`matched: the service logged ${matched.warnings.total} warn+ lines: ${matched.warnings.top.join('; ')}`);
  ctx.detail('settings', SETTINGS);
  ctx.detail('targets', TARGETS);
  ctx.detail('matched', { ...matched, warmup: { '2xx': matched.warmup['2xx'], non2xx: matched.warmup.non2xx, latency: matched.warmup.latency }, result: { latency: matched.result.latency, requests: matched.result.requests, duration: matched.result.duration, statusCodes: statusCodes(matched.result) } });
  for (const r of [inProcess, cross]) if (r) ctx.detail(`early ${r.label}`, { ...r, samples: undefined, raw: r.samples.map((s) => Math.round(s.fromCommitMs * 10) / 10) });
  if (naive) ctx.detail('naive', naive);
  return rows;
}

export const scenario: Scenario = {
  name: 'callbacks',
  description: 'matched callbacks/s, and early-callback match latency in one process and across two (vs a naive 1 s retry loop)',
  run,
};
