import http from 'node:http';
import { randomBytes } from 'node:crypto';
import axios from 'axios';
import { Kysely, PostgresDialect, type CompiledQuery } from 'kysely';
import { Client, Pool } from 'pg';
import { DEFAULTS } from '../../src/config/config';
import type { Database } from '../../src/db/schema';
import { TaskRepository } from '../../src/tasks/task-repository';
import { CpuWindow, type CpuReport, type QuietResult } from '../support/cpu';
import type { FreshDatabase } from '../support/database';
import { cpuText, envNumber, ms, noiseNote, quietBeforePhase } from '../support/phase';
import { sleep } from '../support/processes';
import { RssSampler, type RssReport } from '../support/rss';
import {
  BENCH_PARTNER_ID,
  migrateDatabase,
  orderedUuidSql,
  simulatorTotals,
  startServiceProcess,
  startSimulatorProcess,
  warnLines,
  writePartnersFile,
} from '../support/services';
import { fmtNumber, summarize, type Summary } from '../support/stats';
import type { ResultRow, Scenario, ScenarioContext } from '../support/types';

/**
 * `reconciler`: one sweep over a backlog of due tasks against a simulator that answers every status query
 * at once (no rate limit), against the raw rate of the same GETs from a bare axios loop; the claim
 * statement's time at 10,000 and at 1,000,000 rows; the service's peak RSS during the sweep.
 */

const SETTINGS = {
  /** Due tasks the headline sweep works through. */
  sweepTasks: envNumber('BENCH_RECONCILE_TASKS', 100_000),
  /** The second sweep, where every check settles its task (set BENCH_RECONCILE_SUCCEEDED_TASKS=0... is refused: use BENCH_RECONCILE_SUCCEEDED=0 to skip). */
  succeededTasks: envNumber('BENCH_RECONCILE_SUCCEEDED_TASKS', 30_000),
  succeededVariant: process.env['BENCH_RECONCILE_SUCCEEDED'] !== '0',
  /** The service's defaults, stated so the report says what ran. */
  concurrency: DEFAULTS.reconcileConcurrency,
  batchSize: DEFAULTS.reconcileBatchSize,
  /** Concurrent loops of the raw axios baseline: the reconciler's concurrency. */
  rawLoops: DEFAULTS.reconcileConcurrency,
  rawWarmupS: 1,
  rawDurationS: envNumber('BENCH_RAW_DURATION_S', 10),
  pollMs: 250,
  sweepTimeoutS: envNumber('BENCH_SWEEP_TIMEOUT_S', 200),
  claimSmallRows: 10_000,
  claimBigRows: envNumber('BENCH_CLAIM_BIG_ROWS', 1_000_000),
  claimDue: 2_000,
  claimReps: envNumber('BENCH_CLAIM_REPS', 200),
  claimWarmupReps: 10,
};

export const TARGETS = Object.freeze({
  checksPerSecond: 2000,
  ratio: 0.6,
  claimGrowth: 2,
  peakRssMb: 150,
});

// ---------------------------------------------------------------------------------------------------------
// Seeding

/** `n` dispatched tasks, due since ~10 minutes ago (oldest first by request number), expiring in 30 days. */
async function seedDue(ctx: ScenarioContext, db: FreshDatabase, n: number): Promise<void> {
  await ctx.postgres.query(
    db.url,
    `insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at, created_at, updated_at, dispatched_at)
     select ${orderedUuidSql('2', 'i')}, $1, 'r' || i, 'dispatched', jsonb_build_object('n', i), md5('r' || i), 1,
            now() - interval '10 minutes' + i * interval '1 millisecond', now() + interval '30 days',
            now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
     from generate_series(0, $2::int - 1) as i`,
    [BENCH_PARTNER_ID, n],
  );
  await ctx.postgres.query(db.url, 'vacuum analyze tasks');
}

/**
 * Rows `from`..`to-1` of the claim table: the first `due` of all are dispatched and due, the rest settled
 * (succeeded, no next check), created one second apart going back in time.
 */
async function seedClaimRows(ctx: ScenarioContext, db: FreshDatabase, from: number, to: number, due: number): Promise<void> {
  await ctx.postgres.query(
    db.url,
    `insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, check_attempts, settled_by, result,
                        next_check_at, expires_at, created_at, updated_at, dispatched_at, completed_at)
     select ${orderedUuidSql('3', 'i')}, $1, 'c' || i,
            case when i < $4 then 'dispatched' else 'succeeded' end,
            jsonb_build_object('n', i), md5('c' || i), 1,
            case when i < $4 then 0 else 1 end,
            case when i < $4 then null else 'poll' end,
            case when i < $4 then null else '{"ok": true}'::jsonb end,
            case when i < $4 then now() - interval '10 minutes' + i * interval '1 millisecond' else null end,
            now() + interval '30 days',
            now() - i * interval '1 second', now() - i * interval '1 second', now() - i * interval '1 second',
            case when i < $4 then null else now() - i * interval '1 second' + interval '1 minute' end
     from generate_series($2::int, $3::int - 1) as i`,
    [BENCH_PARTNER_ID, from, to, due],
  );
}

// ---------------------------------------------------------------------------------------------------------
// The raw rate: a bare axios loop against the simulator's status endpoint

interface RawRun {
  gets: number;
  perSecond: number;
  seconds: number;
  statuses: Record<string, number>;
  errors: number;
  latency: Summary;
  cpu: CpuReport;
  quiet: QuietResult;
}

async function runRaw(ctx: ScenarioContext, simulatorUrl: string, simulatorPid: number, n: number): Promise<RawRun> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: SETTINGS.rawLoops * 2 });
  const client = axios.create({ baseURL: simulatorUrl, httpAgent: agent, validateStatus: () => true, timeout: 3000 });
  let seq = 0;
  const phase = async (seconds: number) => {
    const statuses: Record<string, number> = {};
    const latencies: number[] = [];
    let errors = 0;
    const started = performance.now();
    const end = started + seconds * 1000;
    const loop = async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          const r = await client.get(`/requests/r${seq++ % n}`);
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          latencies.push(performance.now() - t0);
        } catch {
          errors++;
        }
      }
    };
    await Promise.all(Array.from({ length: SETTINGS.rawLoops }, loop));
    return { statuses, latencies, errors, seconds: (performance.now() - started) / 1000 };
  };
  try {
    const quiet = await quietBeforePhase(ctx);
    await phase(SETTINGS.rawWarmupS);
    const cpu = new CpuWindow({ simulator: simulatorPid }).start();
    const r = await phase(SETTINGS.rawDurationS);
    const cpuReport = cpu.stop();
    const gets = r.latencies.length;
    return { gets, perSecond: gets / r.seconds, seconds: r.seconds, statuses: r.statuses, errors: r.errors, latency: summarize(r.latencies), cpu: cpuReport, quiet };
  } finally {
    agent.destroy();
  }
}

// ---------------------------------------------------------------------------------------------------------
// The sweep

interface SweepRun {
  label: string;
  tasks: number;
  seconds: number;
  perSecond: number;
  /** From the service's own clock: the first and last check's updated_at. */
  dbSpanSeconds: number;
  checkedTwice: number;
  statuses: Record<string, number>;
  events: number;
  simulator: Record<string, number> | string;
  checksByOutcome: Record<string, number>;
  rss: RssReport;
  cpu: CpuReport;
  quiet: QuietResult;
  timedOut: boolean;
  seedMs: number;
  warnings: { total: number; top: string[] };
  progress: { s: number; checked: number }[];
  /** The runner's count queries during the sweep: how many and their summed duration (Postgres time spent on measuring). */
  polls: { count: number; totalMs: number };
}

async function runSweep(ctx: ScenarioContext, label: string, unknownStatus: 'processing' | 'succeeded', n: number, raw?: (simUrl: string, simPid: number) => Promise<void>): Promise<SweepRun> {
  const td = ctx.teardown.child(`sweep ${label}`);
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    await migrateDatabase(db.url);
    const seed0 = performance.now();
    await seedDue(ctx, db, n);
    const seedMs = performance.now() - seed0;
    const simulator = await startSimulatorProcess(ctx, td, `sweep-${label}`, { SIM_UNKNOWN_STATUS: unknownStatus });
    ctx.log(`sweep ${label}: ${fmtNumber(n)} due tasks seeded in ${(seedMs / 1000).toFixed(1)} s (db ${db.name}); simulator ${simulator.url} answers unknown requests "${unknownStatus}"`);

    if (raw) {
      await raw(simulator.url, simulator.handle.pid);
      await fetch(`${simulator.url}/_sim/reset`, { method: 'POST' }); // the sweep starts from clean simulator stats
    }

    const partnersFile = await writePartnersFile(ctx, `sweep-${label}`, simulator.url, {
      // A checked task's next check is an hour away, so no task is checked twice during the run.
      reconcile: { scheduleSeconds: [3600], maxAgeSeconds: 30 * 86_400 },
    });
    const quiet = await quietBeforePhase(ctx);
    // One connection for the polling (not one per poll), so the figures carry no connection set-up.
    const poller = new Client({ connectionString: db.url, application_name: 'bench-poll' });
    await poller.connect();
    td.add('close poller', () => poller.end());
    const polls = { count: 0, totalMs: 0 };
    const count = async () => {
      const t0 = performance.now();
      const r = await poller.query<{ n: string }>('select count(*) as n from tasks where check_attempts >= 1');
      polls.count++;
      polls.totalMs += performance.now() - t0;
      return Number(r.rows[0]?.n ?? 0);
    };

    const service = await startServiceProcess(ctx, td, { label: `sweep-${label}`, databaseUrl: db.url, partnersFile, env: { RECONCILE_CRON: '* * * * * *' } });
    const rss = new RssSampler(service.handle.pid, 100).start();
    ctx.log(`sweep ${label}: service ready on ${service.url}; RECONCILE_CRON every second, concurrency ${SETTINGS.concurrency}, batch ${SETTINGS.batchSize}`);

    let first: number | undefined;
    let done: number | undefined;
    let cpu: CpuWindow | undefined;
    let cpuReport: CpuReport | undefined;
    const progress: { s: number; checked: number }[] = [];
    const deadline = performance.now() + SETTINGS.sweepTimeoutS * 1000;
    let lastLogged = 0;
    for (;;) {
      const checked = await count();
      const now = performance.now();
      if (checked > 0 && first === undefined) {
        first = now;
        cpu = new CpuWindow({ service: service.handle.pid, simulator: simulator.handle.pid }, db.name).start();
      }
      if (first !== undefined) progress.push({ s: Math.round((now - first) / 100) / 10, checked });
      if (checked >= n) {
        done = now;
        cpuReport = cpu?.stop();
        break;
      }
      if (service.handle.exitInfo()) throw new Error(`the service exited during the sweep:\n${service.handle.tail()}`);
      if (now > deadline) break;
      if (first !== undefined && now - lastLogged > 10_000) {
        lastLogged = now;
        ctx.log(`sweep ${label}: ${fmtNumber(checked)} checked after ${((now - first) / 1000).toFixed(0)} s`);
      }
      await sleep(SETTINGS.pollMs);
    }
    const rssReport = rss.stop();
    cpuReport ??= cpu?.stop();
    const timedOut = done === undefined;
    const checkedAtEnd = timedOut ? await count() : n;
    const seconds = ((done ?? performance.now()) - (first ?? performance.now())) / 1000;

    const pollsDuringSweep = { ...polls };
    const metricsText = await fetch(`${service.url}/metrics`).then((r) => r.text()).catch(() => '');
    const checksByOutcome: Record<string, number> = {};
    for (const m of metricsText.matchAll(/^callback_reconciler_reconciler_checks_total\{[^}]*outcome="([^"]+)"[^}]*\} (\S+)$/gm)) {
      checksByOutcome[m[1]!] = (checksByOutcome[m[1]!] ?? 0) + Number(m[2]);
    }
    const sim = await simulatorTotals(simulator.url);
    await service.handle.stop(); // nothing more happens to the tasks while they are counted
    const [span] = await ctx.postgres.query<{ span: number | null; twice: string }>(
      db.url,
      `select extract(epoch from max(updated_at) - min(updated_at))::float8 as span, count(*) filter (where check_attempts >= 2) as twice
       from tasks where check_attempts >= 1`,
    );
    const statusRows = await ctx.postgres.query<{ status: string; n: string }>(db.url, 'select status, count(*) as n from tasks group by 1 order by 1');
    const [events] = await ctx.postgres.query<{ n: string }>(db.url, 'select count(*) as n from task_events');
    const warnings = await warnLines(service.logFile);
    await td.run();
    return {
      label,
      tasks: n,
      seconds,
      perSecond: checkedAtEnd / seconds,
      dbSpanSeconds: span?.span ?? Number.NaN,
      checkedTwice: Number(span?.twice ?? 0),
      statuses: Object.fromEntries(statusRows.map((r) => [r.status, Number(r.n)])),
      events: Number(events?.n ?? 0),
      simulator: sim,
      checksByOutcome,
      rss: rssReport,
      cpu: cpuReport ?? new CpuWindow({}).start().stop(),
      quiet,
      timedOut,
      seedMs,
      warnings,
      progress,
      polls: pollsDuringSweep,
    };
  } finally {
    await td.run();
  }
}

// ---------------------------------------------------------------------------------------------------------
// The claim statement at 10,000 and 1,000,000 rows

interface ClaimRun {
  rows: number;
  latency: Summary;
  firstHalfMedian: number;
  secondHalfMedian: number;
  claimed: number;
  plan: string[];
  planSummary: string;
  executionMs: number;
}

function planSummary(plan: string[]): { summary: string; executionMs: number } {
  const text = plan.join('\n');
  const indexes = [...new Set([...text.matchAll(/(Index(?: Only)? Scan(?: Backward)?) using (\S+)/g)].map((m) => `${m[1]} using ${m[2]}`))];
  const seq = [...new Set([...text.matchAll(/Seq Scan on (\S+)/g)].map((m) => `Seq Scan on ${m[1]}`))];
  const sort = /\bSort\b/.test(text) ? ', a Sort' : '';
  const execution = Number(/Execution Time: ([\d.]+) ms/.exec(text)?.[1] ?? Number.NaN);
  const buffers = /Buffers: ([^\n]+)/.exec(text)?.[1]?.trim() ?? '?';
  return { summary: `${[...indexes, ...seq].join(', ') || 'no scan found'}${sort}; top node buffers: ${buffers}; execution ${execution.toFixed(2)} ms`, executionMs: execution };
}

async function measureClaim(db: FreshDatabase, rows: number): Promise<ClaimRun> {
  const pool = new Pool({ connectionString: db.url, max: 2, application_name: 'bench-claim' });
  let capture = false;
  let captured: CompiledQuery | undefined;
  const kysely = new Kysely<Database>({
    dialect: new PostgresDialect({ pool }),
    log: (event) => {
      if (capture && event.level === 'query') captured = event.query;
    },
  });
  try {
    const owner = `bench:claim:${randomBytes(3).toString('hex')}`;
    const times: number[] = [];
    let claimed = 0;
    for (let rep = 0; rep < SETTINGS.claimWarmupReps + SETTINGS.claimReps; rep++) {
      const trx = await kysely.startTransaction().execute();
      try {
        const now = new Date();
        capture = rep === 0;
        const t0 = performance.now();
        const got = await new TaskRepository(trx).claimDue(now, DEFAULTS.reconcileBatchSize, owner, DEFAULTS.reconcileLeaseMs, [BENCH_PARTNER_ID]);
        const t = performance.now() - t0;
        capture = false;
        if (rep >= SETTINGS.claimWarmupReps) {
          times.push(t);
          claimed = got.length;
        }
      } finally {
        await trx.rollback().execute();
      }
    }
    if (!captured) throw new Error('the claim statement was not captured');
    // The same statement under EXPLAIN (ANALYZE, BUFFERS), rolled back as well.
    const client = new Client({ connectionString: db.url, application_name: 'bench-claim-explain' });
    await client.connect();
    let plan: string[];
    try {
      await client.query('begin');
      const now = new Date();
      const params = [...captured.parameters];
      // Parameters of claimDue in order: now, limit, owner, leaseUntil (×2); fresh times so the due set is the same as in the timed runs.
      const fresh = params.map((p) => (p instanceof Date ? (p.getTime() > Date.now() ? new Date(now.getTime() + DEFAULTS.reconcileLeaseMs) : now) : p));
      const r = await client.query<{ 'QUERY PLAN': string }>(`explain (analyze, buffers) ${captured.sql}`, fresh);
      plan = r.rows.map((x) => x['QUERY PLAN']);
      await client.query('rollback');
    } finally {
      await client.end();
    }
    const half = Math.floor(times.length / 2);
    const { summary, executionMs } = planSummary(plan);
    return {
      rows,
      latency: summarize(times),
      firstHalfMedian: summarize(times.slice(0, half)).p50,
      secondHalfMedian: summarize(times.slice(half)).p50,
      claimed,
      plan,
      planSummary: summary,
      executionMs,
    };
  } finally {
    await kysely.destroy();
  }
}

async function runClaim(ctx: ScenarioContext): Promise<{ small: ClaimRun; big: ClaimRun; growMs: number }> {
  const td = ctx.teardown.child('claim statement');
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    await migrateDatabase(db.url);
    await seedClaimRows(ctx, db, 0, SETTINGS.claimSmallRows, SETTINGS.claimDue);
    await ctx.postgres.query(db.url, 'vacuum analyze tasks');
    ctx.log(`claim: ${fmtNumber(SETTINGS.claimSmallRows)} rows (${fmtNumber(SETTINGS.claimDue)} due); ${SETTINGS.claimReps} claims, each rolled back (db ${db.name})`);
    const small = await measureClaim(db, SETTINGS.claimSmallRows);

    const grow0 = performance.now();
    const step = 250_000;
    for (let from = SETTINGS.claimSmallRows; from < SETTINGS.claimBigRows; from += step) {
      await seedClaimRows(ctx, db, from, Math.min(from + step, SETTINGS.claimBigRows), SETTINGS.claimDue);
    }
    await ctx.postgres.query(db.url, 'vacuum analyze tasks');
    const growMs = performance.now() - grow0;
    ctx.log(`claim: grown to ${fmtNumber(SETTINGS.claimBigRows)} rows in ${(growMs / 1000).toFixed(1)} s (vacuum analyze included)`);
    const big = await measureClaim(db, SETTINGS.claimBigRows);
    await td.run();
    return { small, big, growMs };
  } finally {
    await td.run();
  }
}

// ---------------------------------------------------------------------------------------------------------

function sweepRows(s: SweepRun, headline: boolean): ResultRow[] {
  const scenario = `reconciler: sweep over ${fmtNumber(s.tasks)} due tasks, simulator answers "${s.label}"${headline ? ' (headline)' : ''}`;
  const rssJudged = Math.max(s.rss.peakSampledMb, Number.isFinite(s.rss.hwmMb) ? s.rss.hwmMb : 0);
  const serviceCpu = s.cpu.processes['service'] ?? Number.NaN;
  const perCheck = ((serviceCpu / 100) * s.cpu.seconds * 1000) / Math.max(s.tasks, 1);
  const pgPerCheck = ((s.cpu.postgresOwnPct / 100) * s.cpu.seconds * 1000) / Math.max(s.tasks, 1);
  const simQueries = typeof s.simulator === 'string' ? Number.NaN : (s.simulator['statusQueries'] ?? Number.NaN);
  const rows: ResultRow[] = [
    {
      scenario,
      metric: 'checks/s (tasks with check_attempts ≥ 1 ÷ time from the first check to the last)',
      value: s.perSecond,
      display: `${fmtNumber(s.perSecond)} /s (${fmtNumber(s.tasks)} in ${s.seconds.toFixed(1)} s by 250 ms polling; ${s.dbSpanSeconds.toFixed(1)} s between the first and last check's updated_at)${s.timedOut ? ' — TIMED OUT' : ''}`,
      ...(headline ? { target: { op: '>=' as const, value: TARGETS.checksPerSecond } } : {}),
    },
    {
      scenario,
      metric: 'service peak RSS during the sweep',
      value: rssJudged,
      display: `${s.rss.peakSampledMb.toFixed(1)} MB sampled (${s.rss.firstMb.toFixed(1)} MB when ready, ${s.rss.lastMb.toFixed(1)} MB at the end; VmHWM ${s.rss.hwmMb.toFixed(1)} MB)`,
      target: { op: '<', value: TARGETS.peakRssMb },
    },
    {
      scenario,
      metric: 'each task checked once; what the checks did',
      value: s.checkedTwice,
      display:
        `${s.checkedTwice} checked twice; simulator status queries ${fmtNumber(simQueries)}; checks by outcome ${JSON.stringify(s.checksByOutcome)}; ` +
        `tasks ${JSON.stringify(s.statuses)}; ${fmtNumber(s.events)} event rows`,
      targetText: `0 twice; ${fmtNumber(s.tasks)} queries${s.label === 'processing' ? '; 0 events' : ''}`,
      ok: s.checkedTwice === 0 && !s.timedOut && simQueries === s.tasks && (s.label !== 'processing' || s.events === 0),
      assertion: true,
    },
    { scenario, metric: 'CPU during the sweep', value: serviceCpu, display: cpuText(s.cpu, ['service', 'simulator'], 'runner (polling)') },
    {
      scenario,
      metric: 'CPU per check',
      value: perCheck,
      display:
        `service ${ms(perCheck)}, postgres backends of its database ${ms(pgPerCheck)} → the service alone on one core ≈ ${fmtNumber(1000 / perCheck)} checks/s, Postgres alone ≈ ${fmtNumber(1000 / pgPerCheck)} checks/s ` +
        `(the runner's ${s.polls.count} count polls took ${fmtNumber(s.polls.totalMs)} ms of wall time in all, ≤ ${ms(s.polls.totalMs / Math.max(s.tasks, 1))} per check of the Postgres figure)`,
    },
  ];
  return rows;
}

async function run(ctx: ScenarioContext): Promise<ResultRow[]> {
  const rows: ResultRow[] = [];

  // 1. The headline sweep, with the raw axios rate measured against the same simulator first.
  let raw: RawRun | undefined;
  const sweep = await runSweep(ctx, 'processing', 'processing', SETTINGS.sweepTasks, async (simUrl, simPid) => {
    ctx.log(`raw: ${SETTINGS.rawLoops} axios loops GET ${simUrl}/requests/r<i>, ${SETTINGS.rawWarmupS} s warm-up + ${SETTINGS.rawDurationS} s`);
    raw = await runRaw(ctx, simUrl, simPid, SETTINGS.sweepTasks);
  });
  rows.push(...sweepRows(sweep, true));
  if (!raw) throw new Error('the raw rate was not measured');
  const rs = `reconciler: raw status GETs, bare axios × ${SETTINGS.rawLoops} loops, keep-alive, same simulator, ${SETTINGS.rawDurationS} s`;
  rows.push(
    {
      scenario: rs,
      metric: 'GETs/s',
      value: raw.perSecond,
      display: `${fmtNumber(raw.perSecond)} /s (${fmtNumber(raw.gets)} in ${raw.seconds.toFixed(2)} s; p50 ${ms(raw.latency.p50)}, p99 ${ms(raw.latency.p99)})`,
    },
    {
      scenario: rs,
      metric: 'answers; errors',
      value: raw.errors,
      display: `${JSON.stringify(raw.statuses)}; ${raw.errors}`,
      targetText: 'all 200; 0',
      ok: raw.errors === 0 && Object.keys(raw.statuses).every((k) => k === '200'),
      assertion: true,
    },
    { scenario: rs, metric: 'CPU', value: raw.cpu.runnerPct, display: cpuText(raw.cpu, ['simulator'], 'runner (axios)') },
    {
      scenario: 'reconciler',
      metric: 'ratio sweep checks/s ÷ raw GETs/s',
      value: sweep.perSecond / raw.perSecond,
      display: (sweep.perSecond / raw.perSecond).toFixed(2),
      target: { op: '>=', value: TARGETS.ratio },
    },
  );

  // 2. Every check settles its task (an event row each).
  let settled: SweepRun | undefined;
  if (SETTINGS.succeededVariant) {
    settled = await runSweep(ctx, 'succeeded', 'succeeded', SETTINGS.succeededTasks);
    rows.push(...sweepRows(settled, false));
  }

  // 3. The claim statement.
  const claim = await runClaim(ctx);
  const cs = (c: ClaimRun) => `reconciler: claim statement (TaskRepository.claimDue, limit ${DEFAULTS.reconcileBatchSize}), ${fmtNumber(c.rows)} rows, ${fmtNumber(SETTINGS.claimDue)} due`;
  for (const c of [claim.small, claim.big]) {
    rows.push({
      scenario: cs(c),
      metric: `median / p99 over ${SETTINGS.claimReps} (each rolled back)`,
      value: c.latency.p50,
      display: `${ms(c.latency.p50)} / ${ms(c.latency.p99)} (server execution ${ms(c.executionMs)} under EXPLAIN ANALYZE; ${c.claimed} rows claimed each time)`,
      ok: c.claimed === DEFAULTS.reconcileBatchSize,
      targetText: `claims ${DEFAULTS.reconcileBatchSize}`,
    });
  }
  rows.push({
    scenario: 'reconciler',
    metric: `claim median at ${fmtNumber(claim.big.rows)} ÷ at ${fmtNumber(claim.small.rows)} rows`,
    value: claim.big.latency.p50 / claim.small.latency.p50,
    display: `${(claim.big.latency.p50 / claim.small.latency.p50).toFixed(2)}×`,
    target: { op: '<=', value: TARGETS.claimGrowth },
  });

  // Notes.
  ctx.note(
    `sweep: tasks seeded straight into a fresh database (status dispatched, due since ~10 min, lease null, check_attempts 0); the simulator (SIM_UNKNOWN_STATUS) answers every status query at once, no rate limit; ` +
      `partner reconcile.scheduleSeconds [3600]; service RECONCILE_CRON every second (sweeps do not overlap; one sweep claims batch after batch until a short claim), RECONCILE_CONCURRENCY ${SETTINGS.concurrency}, RECONCILE_BATCH_SIZE ${SETTINGS.batchSize}, DB_POOL_SIZE ${DEFAULTS.dbPoolSize} (defaults), LOG_LEVEL=warn. ` +
      `Timing: the runner counts check_attempts ≥ 1 every ${SETTINGS.pollMs} ms (a scan of the table, in the Postgres figures); the clock starts at the first non-zero count. ` +
      `"processing" is the headline: each check is a status GET and a write that reschedules the task, no event row; "succeeded" settles each task with an event row${settled ? ` (${fmtNumber(settled.tasks)} tasks, to keep the scenario short)` : ' (skipped: BENCH_RECONCILE_SUCCEEDED=0)'}.`,
  );
  ctx.note(
    `raw rate: measured in the same run, against the same simulator process before the service started (the simulator's stats were reset afterwards), ${SETTINGS.rawLoops} async loops in the runner over one keep-alive agent, request numbers r0…r${SETTINGS.sweepTasks - 1} in turn; the simulator was ${pct0(raw.cpu.processes['simulator'])} busy and the runner ${pct0(raw.cpu.runnerPct)}.`,
  );
  ctx.note(
    `claim: fresh database; ${fmtNumber(SETTINGS.claimDue)} due (dispatched) tasks and the rest settled (succeeded, next_check_at null); VACUUM ANALYZE before each size; ${SETTINGS.claimWarmupReps} unmeasured claims then ${SETTINGS.claimReps} timed ones, each in its own transaction that is rolled back (BEGIN/ROLLBACK not timed), through Kysely as the service runs it. ` +
      `Median first half / second half: ${ms(claim.small.firstHalfMedian)} / ${ms(claim.small.secondHalfMedian)} at ${fmtNumber(claim.small.rows)}, ${ms(claim.big.firstHalfMedian)} / ${ms(claim.big.secondHalfMedian)} at ${fmtNumber(claim.big.rows)} (rolled-back updates leave dead tuples behind). Growing the table took ${(claim.growMs / 1000).toFixed(0)} s.`,
  );
  ctx.note(`claim plan at ${fmtNumber(claim.small.rows)} rows: ${claim.small.planSummary}`);
  ctx.note(`claim plan at ${fmtNumber(claim.big.rows)} rows: ${claim.big.planSummary}`);
  ctx.section(`reconciler: EXPLAIN (ANALYZE, BUFFERS) of the claim at ${fmtNumber(claim.big.rows)} rows`, ['```', ...claim.big.plan, '```'].join('\n'));
  for (const s of [sweep, settled]) {
    if (!s) continue;
    noiseNote(ctx, `sweep ${s.label}`, s.cpu, s.quiet);
    ctx.note(`sweep ${s.label}: seeded in ${(s.seedMs / 1000).toFixed(1)} s; checked over time (s → tasks): ${thin(s.progress)}`);
    if (s.warnings.total > 0) ctx.note(`sweep ${s.label}: the service logged ${s.warnings.total} warn+ lines: ${s.warnings.top.join('; ')}`);
  }
  noiseNote(ctx, 'raw GETs', raw.cpu, raw.quiet);
  ctx.detail('settings', SETTINGS);
  ctx.detail('targets', TARGETS);
  ctx.detail('sweep', sweep);
  if (settled) ctx.detail('sweepSucceeded', settled);
  ctx.detail('raw', raw);
  ctx.detail('claim', claim);
  return rows;
}

const pct0 = (v: number | undefined) => `${(v ?? Number.NaN).toFixed(0)} %`;

/** About ten points of the progress curve. */
function thin(points: { s: number; checked: number }[]): string {
  if (points.length === 0) return 'n/a';
  const every = Math.max(1, Math.ceil(points.length / 10));
  const picked = points.filter((_, i) => i % every === 0);
  if (picked[picked.length - 1] !== points[points.length - 1]) picked.push(points[points.length - 1]!);
  return picked.map((p) => `${p.s.toFixed(1)} → ${fmtNumber(p.checked)}`).join(', ');
}

export const scenario: Scenario = {
  name: 'reconciler',
  description: 'one sweep over 100,000 due tasks vs the raw status-GET rate; claim statement at 10k vs 1M rows; RSS during the sweep',
  run,
};
