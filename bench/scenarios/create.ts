import { randomBytes, randomUUID } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type autocannon from 'autocannon';
import { v7 as uuidv7 } from 'uuid';
import { DEFAULTS } from '../../src/config/config';
import { parsePartners } from '../../src/config/partners';
import { DEMO_PARTNER_SECRET } from '../../src/config/simulator-config';
import { openDatabase } from '../../src/db/database';
import { migrateToLatest } from '../../src/db/migrator';
import { TaskRepository, type NewTask } from '../../src/tasks/task-repository';
import { bodyHash, DISPATCH_LEASE_GRACE_MS } from '../../src/tasks/task-service';
import { CpuWindow, waitForQuiet, type CpuReport, type QuietResult } from '../support/cpu';
import { profileMarkdown, summariseCpuProfile, type ProfileSummary } from '../support/cpuprofile';
import type { FreshDatabase } from '../support/database';
import { inFlightAtStop, runAutocannon, statusCodes, statusCount } from '../support/load';
import { freePort } from '../support/ports';
import { baseEnv, sleep, startProcess, waitForHttpOk, type StopResult } from '../support/processes';
import { RssSampler, type RssReport } from '../support/rss';
import { serviceEnvOverrides, serviceNodeFlags } from '../support/start-flags';
import { fmtNumber, summarize, type Summary } from '../support/stats';
import type { ResultRow, Scenario, ScenarioContext } from '../support/types';

/**
 * `create`: how many tasks per second `POST /v1/tasks` creates with the service, the partner simulator
 * and Postgres as separate processes, against the ceiling of the same insert statement run with no HTTP.
 */

const envNumber = (name: string, fallback: number): number => {
  const raw = process.env[name];
  const v = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return v;
};

const SETTINGS = {
  connections: envNumber('BENCH_CONNECTIONS', 32),
  warmupS: envNumber('BENCH_WARMUP_S', 2),
  durationS: envNumber('BENCH_DURATION_S', 10),
  /** The LOG_LEVEL=info variant only quantifies the logging cost, so it is shorter. */
  infoDurationS: envNumber('BENCH_INFO_DURATION_S', 5),
  /** The `--profile` pass. */
  profileDurationS: envNumber('BENCH_PROFILE_DURATION_S', 10),
  /** Before each measured phase, wait up to this long for the machine to be at most BENCH_QUIET_BUSY_PCT busy (0: don't wait). */
  quietMaxWaitS: Number(process.env['BENCH_QUIET_MAX_WAIT_S'] ?? 30),
  quietBusyPct: envNumber('BENCH_QUIET_BUSY_PCT', 25),
  /** Other processes using more than this (% of one core) during a phase get the phase flagged as noisy. */
  noisyOthersPct: 25,
  /** Tasks already stored in the `--big` comparison. */
  bigRows: envNumber('BENCH_BIG_ROWS', 10_000_000),
  /** Same as the service's default pool, so the ceiling is what the service could reach. */
  poolSize: DEFAULTS.dbPoolSize,
};

export const TARGETS = Object.freeze({
  createdPerSecond: 1500,
  p99Ms: 50,
  /** Created and dispatched (the partner answers at once, no callback) ÷ the insert ceiling of the same run. */
  ratio: 0.25,
  /** Created, dispatched and settled by the partner's callback ÷ the ceiling. */
  ratioWithCallbacks: 0.15,
  peakRssMb: 150,
  /** The create rate with BENCH_BIG_ROWS tasks stored, relative to an empty table: at least this. */
  bigTableRatio: 0.8,
});

const PARTNER_ID = 'bench';

function partnersDocument(simulatorUrl: string) {
  return {
    partners: [{ id: PARTNER_ID, baseUrl: simulatorUrl, callback: { secret: DEMO_PARTNER_SECRET, verify: 'signature' }, headers: {} }],
  };
}

// ---------------------------------------------------------------------------------------------------------
// The service under load

async function quietBeforePhase(ctx: ScenarioContext): Promise<QuietResult> {
  if (!(SETTINGS.quietMaxWaitS > 0)) return { busyPct: Number.NaN, waitedS: 0, quiet: true };
  return waitForQuiet({ maxBusyPct: SETTINGS.quietBusyPct, maxWaitS: SETTINGS.quietMaxWaitS, log: ctx.log });
}

/** Flags a phase that ran while other processes took a noticeable share of the CPU. */
function noiseNote(ctx: ScenarioContext, phase: string, cpu: CpuReport, quiet: QuietResult): void {
  const parts: string[] = [];
  if (!quiet.quiet) parts.push(`the machine was still ${quiet.busyPct.toFixed(0)} % busy after waiting ${quiet.waitedS.toFixed(0)} s for quiet`);
  if (cpu.othersPct > SETTINGS.noisyOthersPct) parts.push(`other processes used ${cpu.othersPct.toFixed(0)} % of a core during the measurement`);
  if (parts.length > 0) ctx.note(`⚠ ${phase}: NOISY, ${parts.join('; ')}; its figures are not comparable with a quiet run`);
}

interface ServiceRunOptions {
  label: string;
  logLevel: 'warn' | 'info';
  warmupS: number;
  durationS: number;
  /** Extra node flags for the service process (e.g. --cpu-prof). */
  nodeFlags?: string[];
  /** `dispatch`: the simulator is told never to call back, so each task is created and dispatched only. */
  work?: 'callback' | 'dispatch';
  /** Runs on the migrated database before the service starts (e.g. the 10-million-row fill). */
  prepare?: (db: FreshDatabase) => Promise<void>;
  /**
   * After the measured run (and its statistics), one more run paced at this fraction of the rate just
   * measured: the latency a client sees when the service is not at its limit.
   */
  pacedFraction?: number;
}

interface ServiceRun {
  opts: ServiceRunOptions;
  database: string;
  result: autocannon.Result;
  warmup: autocannon.Result;
  created: number;
  createdPerSecond: number;
  /** The run paced at `pacedFraction` of createdPerSecond, when asked for. */
  paced?: { rate: number; result: autocannon.Result };
  /** pg_stat_database deltas per task created in the run (its dispatch and callback included). */
  dbPerTask: Record<keyof DbStats, number>;
  tablesPerTask: Record<string, Record<string, number>>;
  rowsBefore: number;
  rowsAfter: number;
  statusesAtEnd: Record<string, number>;
  cpu: CpuReport;
  rss: RssReport;
  simulatorTotals: unknown;
  log: LogSummary;
  stop: StopResult | undefined;
  simulatorStop: StopResult | undefined;
  serviceLogFile: string;
  quiet: QuietResult;
}

interface LogSummary {
  bytes: number;
  lines: number;
  byLevel: Record<string, number>;
  /** The most frequent messages at warn or above, with counts. */
  topWarnings: { msg: string; count: number }[];
}

const LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };

async function summariseLog(file: string): Promise<LogSummary> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const byLevel: Record<string, number> = {};
  const warnings = new Map<string, number>();
  let lines = 0;
  for (const line of text.split('\n')) {
    if (!line) continue;
    lines += 1;
    let level = 'text';
    let msg = line.slice(0, 120);
    try {
      const rec = JSON.parse(line) as { level?: number; msg?: string; req?: { method?: string; url?: string }; res?: { statusCode?: number } };
      level = LEVELS[rec.level ?? 0] ?? String(rec.level);
      const route = rec.req?.url ? ` (${rec.req.method} ${rec.req.url.replace(/\/[^/]+$/, '/…')} → ${rec.res?.statusCode ?? '?'})` : '';
      msg = `${rec.msg ?? ''}${route}`;
    } catch {
      // a plain text line (e.g. a Node warning): counted as "text"
    }
    byLevel[level] = (byLevel[level] ?? 0) + 1;
    if (level !== 'info' && level !== 'debug' && level !== 'trace') warnings.set(msg, (warnings.get(msg) ?? 0) + 1);
  }
  const topWarnings = [...warnings.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([msg, count]) => ({ msg, count }));
  return { bytes: Buffer.byteLength(text), lines, byLevel, topWarnings };
}

interface DbStats {
  xact_commit: number;
  xact_rollback: number;
  tup_inserted: number;
  tup_updated: number;
  tup_deleted: number;
  tup_fetched: number;
}

/** Per-table scan counters, to see which table is read more than a task's own rows. */
async function tableStats(ctx: ScenarioContext, db: FreshDatabase): Promise<Record<string, Record<string, number>>> {
  const rows = await ctx.postgres.query<Record<string, string>>(
    db.url,
    // Per table, then per index of `tasks` (entries read), to tell which index a growing cost comes from.
    `select relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables
     union all
     select 'index ' || indexrelname, 0, 0, idx_scan, idx_tup_read, 0, 0, 0 from pg_stat_user_indexes where relname = 'tasks'`,
  );
  return Object.fromEntries(rows.map(({ relname, ...r }) => [String(relname), Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Number(v)]))]));
}

function tableStatsPerTask(a: Record<string, Record<string, number>>, b: Record<string, Record<string, number>>, units: number) {
  return Object.fromEntries(
    Object.entries(b).map(([table, cols]) => [
      table,
      Object.fromEntries(Object.entries(cols).map(([k, v]) => [k, Number(((v - (a[table]?.[k] ?? 0)) / Math.max(units, 1)).toFixed(2))])),
    ]),
  );
}

/** Counters of pg_stat_database for one database (flushed by backends about once a second). */
async function dbStats(ctx: ScenarioContext, db: FreshDatabase): Promise<DbStats> {
  const [row] = await ctx.postgres.query<Record<keyof DbStats, string>>(
    db.url,
    'select xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched from pg_stat_database where datname = current_database()',
  );
  return Object.fromEntries(Object.entries(row ?? {}).map(([k, v]) => [k, Number(v)])) as unknown as DbStats;
}

function statsPerUnit(a: DbStats, b: DbStats, units: number): Record<keyof DbStats, number> {
  return Object.fromEntries((Object.keys(b) as (keyof DbStats)[]).map((k) => [k, (b[k] - a[k]) / Math.max(units, 1)])) as Record<keyof DbStats, number>;
}

const statsText = (s: Record<keyof DbStats, number>) =>
  `${s.xact_commit.toFixed(1)} commits, ${s.tup_inserted.toFixed(1)} rows inserted, ${s.tup_updated.toFixed(1)} updated, ${s.tup_fetched.toFixed(1)} fetched`;

/**
 * Tasks created in the last day: every task a run creates, none of the `--big` fill (30 days old), and read
 * through tasks_created_idx, so counting does not scan a 10-million-row table (a count(*) of the whole
 * table took 2.4 s there, three times per phase, and its statistics landed in the measured window).
 */
const RECENT_TASKS = "select count(*)::int as n from tasks where created_at > now() - interval '1 day'";

async function countRows(ctx: ScenarioContext, db: FreshDatabase): Promise<number> {
  const [row] = await ctx.postgres.query<{ n: number }>(db.url, RECENT_TASKS);
  return row?.n ?? 0;
}

/** Requests still in flight when autocannon stopped may commit a moment later: wait until the count holds still. */
async function settledRowCount(ctx: ScenarioContext, db: FreshDatabase): Promise<number> {
  let last = await countRows(ctx, db);
  for (let stable = 0, tries = 0; stable < 2 && tries < 50; tries += 1) {
    await sleep(200);
    const n = await countRows(ctx, db);
    stable = n === last ? stable + 1 : 0;
    last = n;
  }
  return last;
}

/** Bodies with a unique requestNo each, shared by warm-up and run so no requestNo repeats. */
function uniqueBodies(work: 'callback' | 'dispatch'): NonNullable<autocannon.Options['requests']> {
  const prefix = `bench-${randomBytes(4).toString('hex')}-`;
  let seq = 0;
  const simulate = work === 'dispatch' ? { simulate: { callback: { mode: 'never' } } } : {};
  return [
    {
      method: 'POST',
      setupRequest: (req) => {
        const i = seq++;
        return { ...req, body: JSON.stringify({ partner: PARTNER_ID, requestNo: `${prefix}${i}`, payload: { n: i, ...simulate } }) };
      },
    },
  ];
}

async function runService(ctx: ScenarioContext, opts: ServiceRunOptions): Promise<ServiceRun> {
  const td = ctx.teardown.child(`service run ${opts.label}`);
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    if (opts.prepare) await opts.prepare(db);

    const simPort = await freePort();
    const simulatorUrl = `http://127.0.0.1:${simPort}`;
    const simulator = startProcess({
      name: 'simulator',
      command: process.execPath,
      args: [path.join(ctx.distRoot, 'src', 'simulator', 'main.js')],
      env: { ...baseEnv(), SIM_HOST: '127.0.0.1', SIM_PORT: String(simPort), SIM_SECRETS: DEMO_PARTNER_SECRET, LOG_LEVEL: 'warn' },
      cwd: ctx.repoRoot,
      logFile: path.join(ctx.tmpDir, `simulator-${opts.label}.log`),
    });
    let simulatorStop: StopResult | undefined;
    td.add('stop simulator', async () => {
      simulatorStop = await simulator.stop();
    });
    await waitForHttpOk(`${simulatorUrl}/_sim/stats`, { process: simulator });

    const partnersFile = path.join(ctx.tmpDir, `partners-${opts.label}.json`);
    await writeFile(partnersFile, JSON.stringify(partnersDocument(simulatorUrl), null, 2));
    const port = await freePort();
    const serviceUrl = `http://127.0.0.1:${port}`;
    const serviceLogFile = path.join(ctx.tmpDir, `service-${opts.label}.log`);
    const service = startProcess({
      name: 'service',
      command: process.execPath,
      args: [...serviceNodeFlags(ctx.repoRoot), ...(opts.nodeFlags ?? []), path.join(ctx.distRoot, 'src', 'main.js')],
      // DB_POOL_SIZE and everything else left at the service's defaults (unless BENCH_SERVICE_ENV says otherwise).
      env: { ...baseEnv(), ...serviceEnvOverrides(), DATABASE_URL: db.url, PORT: String(port), HOST: '127.0.0.1', PARTNERS_FILE: partnersFile, LOG_LEVEL: opts.logLevel },
      cwd: ctx.repoRoot,
      logFile: serviceLogFile,
    });
    let stop: StopResult | undefined;
    td.add('stop service', async () => {
      stop = await service.stop();
    });
    await waitForHttpOk(`${serviceUrl}/readyz`, { process: service, timeoutMs: 60_000 });
    ctx.log(`${opts.label}: service ready on ${serviceUrl} (db ${db.name}); warm-up ${opts.warmupS} s, run ${opts.durationS} s, ${SETTINGS.connections} connections`);

    const load = {
      url: `${serviceUrl}/v1/tasks`,
      method: 'POST' as const,
      headers: { 'content-type': 'application/json' },
      connections: SETTINGS.connections,
      timeout: 10,
      requests: uniqueBodies(opts.work ?? 'callback'),
    };
    const quiet = await quietBeforePhase(ctx);
    const warmup = await runAutocannon({ ...load, duration: opts.warmupS });
    const rowsBefore = await settledRowCount(ctx, db);
    await sleep(1000); // let backends flush their statistics
    const stats0 = await dbStats(ctx, db);
    const tables0 = await tableStats(ctx, db);

    const cpu = new CpuWindow({ service: service.pid, simulator: simulator.pid }, db.name).start();
    const rss = new RssSampler(service.pid, 100).start();
    const result = await runAutocannon({ ...load, duration: opts.durationS });
    const rssReport = rss.stop();
    const cpuReport = cpu.stop();
    if (service.exitInfo()) throw new Error(`the service exited during the run:\n${service.tail()}`);

    // Statistics first: the row counts below scan the tasks table and would show up in them.
    await sleep(1000);
    const stats1 = await dbStats(ctx, db);
    const tables1 = await tableStats(ctx, db);
    const rowsAfter = await settledRowCount(ctx, db);
    const statusRows = await ctx.postgres.query<{ status: string; n: number }>(db.url, "select status, count(*)::int as n from tasks where created_at > now() - interval '1 day' group by status order by status");
    const statusesAtEnd = Object.fromEntries(statusRows.map((r) => [r.status, r.n]));
    const simulatorTotals = await fetch(`${simulatorUrl}/_sim/stats`)
      .then(async (r) => ((await r.json()) as { totals?: unknown }).totals)
      .catch((err: Error) => `unavailable: ${err.message}`);
    let paced: ServiceRun['paced'];
    if (opts.pacedFraction) {
      const rate = Math.max(1, Math.round((result['2xx'] / result.duration) * opts.pacedFraction));
      ctx.log(`${opts.label}: paced run at ${fmtNumber(rate)} /s (${Math.round(opts.pacedFraction * 100)} % of the rate just measured), ${opts.durationS} s`);
      // Few connections: autocannon paces each connection on its own timer, so 32 of them send in bursts of
      // up to 32 at once (the last of a burst waits for the other 31); 8 keep arrivals nearly even.
      paced = { rate, result: await runAutocannon({ ...load, connections: PACED_CONNECTIONS, duration: opts.durationS, overallRate: rate }) };
    }

    await td.run(); // stop the service (drain), the simulator, drop the database: frees the CPU for what follows
    const log = await summariseLog(serviceLogFile);
    const created = statusCount(result, 201);
    return {
      opts,
      database: db.name,
      result,
      warmup,
      created,
      createdPerSecond: result['2xx'] / result.duration,
      ...(paced ? { paced } : {}),
      dbPerTask: statsPerUnit(stats0, stats1, rowsAfter - rowsBefore),
      tablesPerTask: tableStatsPerTask(tables0, tables1, rowsAfter - rowsBefore),
      rowsBefore,
      rowsAfter,
      statusesAtEnd,
      cpu: cpuReport,
      rss: rssReport,
      simulatorTotals,
      log,
      stop,
      simulatorStop,
      serviceLogFile,
      quiet,
    };
  } finally {
    await td.run();
  }
}

const ms = (v: number) => `${fmtNumber(v)} ms`;
const pct = (v: number) => `${v.toFixed(0)} %`;

function cpuText(c: CpuReport, names: string[]): string {
  const parts = names.map((n) => `${n} ${pct(c.processes[n] ?? Number.NaN)}`);
  parts.push(`postgres ${pct(c.postgresPct)} (this database's backends ${pct(c.postgresOwnPct)})`, `runner${names.length ? '/autocannon' : ''} ${pct(c.runnerPct)}`, `other processes ${pct(c.othersPct)}`);
  const waits = names.filter((n) => Number.isFinite(c.runQueueWaitPct[n])).map((n) => `${n} ${pct(c.runQueueWaitPct[n]!)}`);
  return `${parts.join(', ')} of one core; machine ${pct(c.machineBusyPct)} busy${waits.length ? `; waiting for a CPU: ${waits.join(', ')} of the time` : ''}`;
}

/** CPU milliseconds per task created in the window (a steady state: each task's dispatch and callback land in it too). */
function cpuMsPerTask(pctOfCore: number, r: ServiceRun): number {
  return ((pctOfCore / 100) * r.cpu.seconds * 1000) / Math.max(r.result['2xx'], 1);
}

/** The paced run's rate, as a fraction of the saturated rate measured just before it on the same service. */
const PACED_FRACTION = 0.5;
const PACED_CONNECTIONS = 8;

/**
 * The same work paced below the limit (autocannon overallRate over PACED_CONNECTIONS): the latency a client
 * sees when the service has headroom, as opposed to the saturated closed-loop run, whose mean latency is
 * 32 ÷ throughput by construction. Informational: the targets are the saturated run's.
 */
function pacedRows(r: ServiceRun): ResultRow[] {
  if (!r.paced) return [];
  const { rate, result } = r.paced;
  const scenario = `create: created + dispatched, paced at ${fmtNumber(rate)} /s (${Math.round(PACED_FRACTION * 100)} % of the saturated rate above) over ${PACED_CONNECTIONS} connections, same service, ${result.duration} s`;
  return [
    { scenario, metric: 'tasks created/s', value: result['2xx'] / result.duration, display: `${fmtNumber(result['2xx'] / result.duration)} /s (non-2xx ${result.non2xx}, errors ${result.errors}, timeouts ${result.timeouts})` },
    { scenario, metric: 'latency p50 / p99', value: result.latency.p99, display: `${ms(result.latency.p50)} / ${ms(result.latency.p99)} (max ${ms(result.latency.max)})` },
  ];
}

function serviceRows(scenario: string, r: ServiceRun): ResultRow[] {
  const res = r.result;
  const codes = statusCodes(res);
  const others = Object.entries(codes).filter(([c]) => c !== '201');
  const inflight = inFlightAtStop(res);
  const delta = r.rowsAfter - r.rowsBefore;
  const rssJudged = Math.max(r.rss.peakSampledMb, Number.isFinite(r.rss.hwmMb) ? r.rss.hwmMb : 0);
  return [
    { scenario, metric: 'tasks created/s (2xx ÷ duration)', value: r.createdPerSecond, display: `${fmtNumber(r.createdPerSecond)} /s (${fmtNumber(res['2xx'])} in ${res.duration} s)`, target: { op: '>=', value: TARGETS.createdPerSecond } },
    { scenario, metric: 'latency p50', value: res.latency.p50, display: ms(res.latency.p50) },
    { scenario, metric: 'latency p99', value: res.latency.p99, display: `${ms(res.latency.p99)} (max ${ms(res.latency.max)})`, target: { op: '<', value: TARGETS.p99Ms } },
    {
      scenario,
      metric: 'service peak RSS',
      value: rssJudged,
      display: `${r.rss.peakSampledMb.toFixed(1)} MB sampled (${r.rss.firstMb.toFixed(1)} MB at run start, ${r.rss.lastMb.toFixed(1)} MB at the end; VmHWM ${r.rss.hwmMb.toFixed(1)} MB)`,
      target: { op: '<', value: TARGETS.peakRssMb },
    },
    {
      scenario,
      metric: 'non-2xx responses',
      value: res.non2xx,
      display: others.length ? `${res.non2xx} (${others.map(([c, n]) => `${c}: ${n}`).join(', ')})` : String(res.non2xx),
      target: { op: '==', value: 0 },
      assertion: true,
    },
    { scenario, metric: 'errors / timeouts', value: res.errors, display: `${res.errors} / ${res.timeouts}`, target: { op: '==', value: 0 }, assertion: true },
    {
      scenario,
      metric: 'DB rows added by the run vs 201s',
      value: delta,
      display: `${fmtNumber(delta)} rows; 201s ${fmtNumber(r.created)}${delta !== r.created ? ` (+${delta - r.created} of ${inflight} unanswered at stop)` : ''}`,
      targetText: `= 201s (+ ≤ ${inflight} in flight at stop)`,
      ok: delta >= r.created && delta <= r.created + inflight,
      assertion: true,
    },
    { scenario, metric: 'CPU during the run', value: r.cpu.processes['service'] ?? null, display: cpuText(r.cpu, ['service', 'simulator']) },
    {
      scenario,
      metric: 'per created task (create + dispatch + callback)',
      value: cpuMsPerTask(r.cpu.processes['service'] ?? Number.NaN, r),
      display: `${statsText(r.dbPerTask)}; CPU: service ${ms(cpuMsPerTask(r.cpu.processes['service'] ?? Number.NaN, r))}, postgres backends of its database ${ms(cpuMsPerTask(r.cpu.postgresOwnPct, r))} (simulator ${ms(cpuMsPerTask(r.cpu.processes['simulator'] ?? Number.NaN, r))}) → the service alone on one core ≈ ${fmtNumber(1000 / cpuMsPerTask(r.cpu.processes['service'] ?? Number.NaN, r))} tasks/s`,
    },
  ];
}

// ---------------------------------------------------------------------------------------------------------
// The ceiling: the service's own insert, no HTTP

interface CeilingRun {
  inserted: number;
  perSecond: number;
  seconds: number;
  latency: Summary;
  errors: number;
  firstError?: string;
  rows: number;
  cpu: CpuReport;
  quiet: QuietResult;
  dbPerInsert: Record<keyof DbStats, number>;
}

async function runCeiling(ctx: ScenarioContext): Promise<CeilingRun> {
  const td = ctx.teardown.child('ceiling');
  try {
    const db = await ctx.postgres.createDatabase();
    td.add(`drop ${db.name}`, () => db.drop());
    const handle = openDatabase({ url: db.url, poolSize: SETTINGS.poolSize, connectTimeoutMs: DEFAULTS.dbConnectTimeoutMs, applicationName: 'bench-ceiling' });
    td.add('close pool', () => handle.close());
    await migrateToLatest(handle.db);
    const repo = new TaskRepository(handle.db);
    const partner = parsePartners(partnersDocument('http://127.0.0.1:9'), {})[0]!;
    const instanceId = `bench:${process.pid}:${randomBytes(3).toString('hex')}`;
    const prefix = `ceil-${randomBytes(4).toString('hex')}-`;
    let seq = 0;

    // The same row TaskService.create builds for {partner, requestNo, payload}.
    const newTask = (): NewTask => {
      const i = seq++;
      const body = { partner: PARTNER_ID, requestNo: `${prefix}${i}`, payload: { n: i } };
      const now = new Date();
      return {
        id: uuidv7({ msecs: now.getTime() }),
        partner: body.partner,
        requestNo: body.requestNo,
        kind: null,
        payload: body.payload,
        notifyUrl: null,
        metadata: null,
        bodyHash: bodyHash(body),
        createdAt: now,
        expiresAt: new Date(now.getTime() + partner.reconcile.maxAgeSeconds * 1000),
        leaseOwner: `${instanceId}:dispatch:${randomUUID()}`,
        leaseMs: partner.dispatch.timeoutMs + DISPATCH_LEASE_GRACE_MS,
        nextCheckAt: new Date(now.getTime() + partner.dispatch.timeoutMs + DISPATCH_LEASE_GRACE_MS),
      };
    };

    const phase = async (seconds: number) => {
      const latencies: number[] = [];
      let errors = 0;
      let firstError: string | undefined;
      const started = performance.now();
      const end = started + seconds * 1000;
      const loop = async () => {
        while (performance.now() < end) {
          const t0 = performance.now();
          try {
            const r = await repo.insert(newTask());
            if (!r.inserted) throw new Error('insert reported an existing row');
            latencies.push(performance.now() - t0);
          } catch (err) {
            errors += 1;
            firstError ??= (err as Error).message;
          }
        }
      };
      await Promise.all(Array.from({ length: SETTINGS.connections }, loop));
      return { latencies, errors, firstError, seconds: (performance.now() - started) / 1000 };
    };

    ctx.log(`ceiling: TaskRepository.insert, pool ${SETTINGS.poolSize}, ${SETTINGS.connections} loops; warm-up ${SETTINGS.warmupS} s, run ${SETTINGS.durationS} s (db ${db.name})`);
    const quiet = await quietBeforePhase(ctx);
    const warm = await phase(SETTINGS.warmupS);
    await sleep(1000);
    const stats0 = await dbStats(ctx, db);
    const cpu = new CpuWindow({}, db.name).start();
    const run = await phase(SETTINGS.durationS);
    const cpuReport = cpu.stop();
    await sleep(1000);
    const stats1 = await dbStats(ctx, db);
    const [count] = await ctx.postgres.query<{ n: number }>(db.url, 'select count(*)::int as n from tasks');
    await td.run();
    const inserted = run.latencies.length;
    return {
      inserted,
      // Inserts that completed inside the window (the last ones finish just after `end`; it is counted in `seconds`).
      perSecond: inserted / run.seconds,
      seconds: run.seconds,
      latency: summarize(run.latencies),
      errors: run.errors + warm.errors,
      ...(run.firstError ?? warm.firstError ? { firstError: run.firstError ?? warm.firstError } : {}),
      rows: (count?.n ?? 0) - warm.latencies.length,
      cpu: cpuReport,
      quiet,
      dbPerInsert: statsPerUnit(stats0, stats1, run.latencies.length),
    };
  } finally {
    await td.run();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Profiling pass (--profile)

async function profileService(ctx: ScenarioContext): Promise<ProfileSummary | undefined> {
  const dir = path.join(ctx.tmpDir, 'cpu-prof');
  const r = await runService(ctx, {
    label: 'profile',
    logLevel: 'warn',
    warmupS: SETTINGS.warmupS,
    durationS: SETTINGS.profileDurationS,
    nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`],
  });
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) {
    ctx.note('profile: the service wrote no .cpuprofile (did it exit cleanly?)');
    return undefined;
  }
  // One file per process; the biggest is the service (a worker thread, if any, writes its own).
  const sized = await Promise.all(files.map(async (f) => ({ f, size: (await stat(path.join(dir, f))).size })));
  const file = path.join(dir, sized.sort((a, b) => b.size - a.size)[0]!.f);
  const kept = path.join(ctx.resultsDir, 'create-service.cpuprofile');
  await mkdir(ctx.resultsDir, { recursive: true }); // a fresh clone has no bench/results yet
  await copyFile(file, kept);
  const summary = summariseCpuProfile(file, ctx.repoRoot);
  ctx.note(
    `profile pass (node --cpu-prof, LOG_LEVEL=warn, ${SETTINGS.profileDurationS} s): ${fmtNumber(r.createdPerSecond)} tasks/s under the profiler; ` +
      `profile kept in ${path.relative(ctx.repoRoot, kept)} (open in Chrome DevTools → Performance, or speedscope)`,
  );
  ctx.detail('profile', summary);
  noiseNote(ctx, 'profile pass', r.cpu, r.quiet);
  ctx.section('create: service CPU profile (hot spots)', profileMarkdown(summary));
  return summary;
}

// ---------------------------------------------------------------------------------------------------------

let ceilingOfThisRun: Promise<CeilingRun> | undefined;

/**
 * The insert ceiling, measured once per bench run and shared by the scenarios that compare against it
 * (create, callbacks), so every ratio in one run has the same denominator.
 */
export function sharedCeiling(ctx: ScenarioContext): Promise<CeilingRun> {
  ceilingOfThisRun ??= runCeiling(ctx);
  return ceilingOfThisRun;
}

/**
 * Fills `tasks` with `rows` settled tasks in one INSERT … SELECT generate_series with every index in place
 * (what a service that has run for months holds): ids and created_at ascend like uuidv7 ids, request
 * numbers are unique. Events are not filled (their table is append-only: its size does not change the
 * cost of an insert). Returns the seconds taken by the insert and by VACUUM ANALYZE after it.
 */
async function fillTasks(ctx: ScenarioContext, db: FreshDatabase, rows: number): Promise<{ insertS: number; vacuumS: number; checkpointS: number }> {
  const handle = openDatabase({ url: db.url, poolSize: 1, connectTimeoutMs: DEFAULTS.dbConnectTimeoutMs, applicationName: 'bench-fill' });
  try {
    await migrateToLatest(handle.db);
    ctx.log(`big table: inserting ${fmtNumber(rows)} settled tasks with one INSERT … generate_series (indexes in place)`);
    const t0 = performance.now();
    await handle.pool.query(
      `insert into tasks (id, partner, request_no, kind, status, payload, body_hash, dispatch_attempts, settled_by,
                          next_check_at, expires_at, created_at, updated_at, dispatched_at, completed_at)
       select (lpad(to_hex(b.ms + g), 12, '0') || '7000' || '8000' || lpad(to_hex(g), 12, '0'))::uuid,
              $2, 'fill-' || g, null, 'succeeded', jsonb_build_object('n', g), 'fill', 1, 'callback',
              null, now() + interval '1 day', b.at0 + g * interval '1 millisecond', now(), now(), now()
       from generate_series(1, $1::bigint) as g,
            (select (extract(epoch from now() - interval '30 days') * 1000)::bigint as ms, now() - interval '30 days' as at0) as b`,
      [rows, PARTNER_ID],
    );
    const insertS = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    await handle.pool.query('vacuum analyze tasks');
    const vacuumS = (performance.now() - t1) / 1000;
    // The fill leaves gigabytes of dirty pages; without a checkpoint their write-back would run during the
    // measured phase and be charged to the service (a table that grew over months has no such backlog).
    const t2 = performance.now();
    await handle.pool.query('checkpoint');
    const checkpointS = (performance.now() - t2) / 1000;
    ctx.log(`big table: ${fmtNumber(rows)} rows in ${insertS.toFixed(1)} s, VACUUM ANALYZE ${vacuumS.toFixed(1)} s, CHECKPOINT ${checkpointS.toFixed(1)} s`);
    return { insertS, vacuumS, checkpointS };
  } finally {
    await handle.close();
  }
}

async function run(ctx: ScenarioContext): Promise<ResultRow[]> {
  const rows: ResultRow[] = [];
  const dispatchOnly = await runService(ctx, { label: 'dispatch', logLevel: 'warn', work: 'dispatch', warmupS: SETTINGS.warmupS, durationS: SETTINGS.durationS, pacedFraction: PACED_FRACTION });
  rows.push(...serviceRows(`create: created + dispatched (partner answers at once, no callback), LOG_LEVEL=warn, ${SETTINGS.durationS} s`, dispatchOnly));
  rows.push(...pacedRows(dispatchOnly));
  const main = await runService(ctx, { label: 'warn', logLevel: 'warn', warmupS: SETTINGS.warmupS, durationS: SETTINGS.durationS });
  rows.push(...serviceRows(`create: created + dispatched + settled by callback, LOG_LEVEL=warn, ${SETTINGS.durationS} s`, main));

  const ceiling = await sharedCeiling(ctx);
  const cs = `create: ceiling, TaskRepository.insert (single row) × ${SETTINGS.connections} loops, pool ${SETTINGS.poolSize}, no HTTP, ${SETTINGS.durationS} s`;
  rows.push(
    { scenario: cs, metric: 'inserts/s', value: ceiling.perSecond, display: `${fmtNumber(ceiling.perSecond)} /s (${fmtNumber(ceiling.inserted)} in ${ceiling.seconds.toFixed(2)} s)` },
    { scenario: cs, metric: 'insert latency p50 / p99', value: ceiling.latency.p99, display: `${ms(ceiling.latency.p50)} / ${ms(ceiling.latency.p99)}` },
    {
      scenario: cs,
      metric: 'errors; rows = inserts',
      value: ceiling.errors,
      display: `${ceiling.errors}${ceiling.firstError ? ` (${ceiling.firstError})` : ''}; ${fmtNumber(ceiling.rows)} rows`,
      targetText: '0; = inserts',
      ok: ceiling.errors === 0 && ceiling.rows === ceiling.inserted,
      assertion: true,
    },
    {
      scenario: cs,
      metric: 'CPU during the run',
      value: ceiling.cpu.postgresOwnPct,
      display: `${cpuText(ceiling.cpu, [])}; per insert: ${statsText(ceiling.dbPerInsert)}, postgres backends ${ms(((ceiling.cpu.postgresOwnPct / 100) * ceiling.cpu.seconds * 1000) / Math.max(ceiling.inserted, 1))}, runner ${ms(((ceiling.cpu.runnerPct / 100) * ceiling.cpu.seconds * 1000) / Math.max(ceiling.inserted, 1))}`,
    },
    {
      scenario: 'create',
      metric: 'ratio created+dispatched/s ÷ ceiling inserts/s',
      value: dispatchOnly.createdPerSecond / ceiling.perSecond,
      display: `${(dispatchOnly.createdPerSecond / ceiling.perSecond).toFixed(2)} (p99 ${ms(dispatchOnly.result.latency.p99)})`,
      target: { op: '>=', value: TARGETS.ratio },
    },
    {
      scenario: 'create',
      metric: 'ratio created+dispatched+callback/s ÷ ceiling inserts/s',
      value: main.createdPerSecond / ceiling.perSecond,
      display: (main.createdPerSecond / ceiling.perSecond).toFixed(2),
      target: { op: '>=', value: TARGETS.ratioWithCallbacks },
    },
  );

  let bigRun: Awaited<ReturnType<typeof runService>> | undefined;
  if (ctx.options.big) {
    let fill: { insertS: number; vacuumS: number; checkpointS: number } | undefined;
    const big = (bigRun = await runService(ctx, {
      label: 'big',
      logLevel: 'warn',
      work: 'dispatch',
      warmupS: SETTINGS.warmupS,
      durationS: SETTINGS.durationS,
      prepare: async (db) => {
        fill = await fillTasks(ctx, db, SETTINGS.bigRows);
      },
    }));
    const bs = `create: created + dispatched with ${fmtNumber(SETTINGS.bigRows)} tasks already stored, ${SETTINGS.durationS} s`;
    rows.push(...serviceRows(bs, big));
    rows.push(
      {
        scenario: bs,
        metric: 'fill time',
        value: fill?.insertS ?? null,
        display: fill ? `${fill.insertS.toFixed(1)} s for one INSERT … SELECT generate_series of ${fmtNumber(SETTINGS.bigRows)} rows with indexes in place (${fmtNumber(SETTINGS.bigRows / fill.insertS)} rows/s), then VACUUM ANALYZE ${fill.vacuumS.toFixed(1)} s and CHECKPOINT ${fill.checkpointS.toFixed(1)} s` : 'not filled',
      },
      {
        scenario: 'create',
        metric: `rate with ${fmtNumber(SETTINGS.bigRows)} rows ÷ rate on an empty table`,
        value: big.createdPerSecond / dispatchOnly.createdPerSecond,
        display: `${(big.createdPerSecond / dispatchOnly.createdPerSecond).toFixed(2)} (${fmtNumber(big.createdPerSecond)} vs ${fmtNumber(dispatchOnly.createdPerSecond)} /s)`,
        target: { op: '>=', value: TARGETS.bigTableRatio },
      },
    );
    ctx.detail('big', { fill, createdPerSecond: big.createdPerSecond, latency: big.result.latency, rss: big.rss });
  } else {
    ctx.note(`the ${fmtNumber(SETTINGS.bigRows)}-row comparison was skipped (opt-in: npm run bench -- create --big; BENCH_BIG_ROWS sets the size)`);
  }

  const info = await runService(ctx, { label: 'info', logLevel: 'info', warmupS: SETTINGS.warmupS, durationS: SETTINGS.infoDurationS });
  const is = `create: service, LOG_LEVEL=info (request logging on), ${SETTINGS.infoDurationS} s`;
  rows.push(...serviceRows(is, info));
  const cost = (1 - info.createdPerSecond / main.createdPerSecond) * 100;
  const cpuWarn = cpuMsPerTask(main.cpu.processes['service'] ?? Number.NaN, main);
  const cpuInfo = cpuMsPerTask(info.cpu.processes['service'] ?? Number.NaN, info);
  rows.push({
    scenario: is,
    metric: 'logging cost vs LOG_LEVEL=warn',
    value: cpuInfo - cpuWarn,
    display:
      `service CPU per task ${ms(cpuInfo)} vs ${ms(cpuWarn)} (${cpuInfo >= cpuWarn ? '+' : '−'}${Math.abs(((cpuInfo - cpuWarn) / cpuWarn) * 100).toFixed(0)} %); ` +
      `tasks/s ${cost >= 0 ? '−' : '+'}${Math.abs(cost).toFixed(0)} %, p99 ${ms(info.result.latency.p99)} vs ${ms(main.result.latency.p99)} (throughput and latency swing with the machine's load; CPU per task less so); ` +
      `${fmtNumber(info.log.bytes / 1e6 / (info.opts.durationS + info.opts.warmupS))} MB/s of log, ${fmtNumber(info.log.lines)} lines`,
  });

  // Notes: what was measured and anything worth a second look.
  ctx.note(
    `request logging at info was OFF in the headline run (LOG_LEVEL=warn; pino-http still runs, it only skips writing); the LOG_LEVEL=info row quantifies it (shorter run). Service logs go to a file.`,
  );
  ctx.note(
    `each service run: fresh database, fresh simulator process (it calls back about 100 ms after each dispatch), ${SETTINGS.connections} autocannon connections in the runner process, ${SETTINGS.warmupS} s warm-up then the measured run; every request has a unique requestNo. DB_POOL_SIZE default (${DEFAULTS.dbPoolSize}). Latency percentiles are autocannon's (HDR histogram, 1 ms resolution).`,
  );
  noiseNote(ctx, 'service LOG_LEVEL=warn', main.cpu, main.quiet);
  noiseNote(ctx, 'ceiling', ceiling.cpu, ceiling.quiet);
  noiseNote(ctx, 'service LOG_LEVEL=info', info.cpu, info.quiet);
  for (const r of [dispatchOnly, main, ...(bigRun ? [bigRun] : []), info]) {
    const st = Object.entries(r.statusesAtEnd).map(([s, n]) => `${s} ${fmtNumber(n)}`).join(', ');
    ctx.note(`run ${r.opts.label} (LOG_LEVEL=${r.opts.logLevel}): task statuses right after the run: ${st}; simulator totals ${JSON.stringify(r.simulatorTotals)}`);
    const reads = Object.entries(r.tablesPerTask)
      .filter(([, t]) => (t['idx_scan'] ?? 0) + (t['seq_scan'] ?? 0) + (t['n_tup_ins'] ?? 0) + (t['n_tup_upd'] ?? 0) > 0)
      .map(
        ([table, t]) =>
          `${table}: ${t['idx_scan']} index scans (${t['idx_tup_fetch']} rows), ${t['seq_scan']} seq scans (${t['seq_tup_read']} rows), ${t['n_tup_ins']} inserts, ${t['n_tup_upd']} updates`,
      );
    ctx.note(`run ${r.opts.label} (LOG_LEVEL=${r.opts.logLevel}): per created task (pg_stat_user_tables): ${reads.join('; ')}`);
    const warnLines = Object.entries(r.log.byLevel).filter(([l]) => !['info', 'debug', 'trace'].includes(l));
    if (warnLines.length > 0) {
      ctx.note(`run ${r.opts.label} (LOG_LEVEL=${r.opts.logLevel}): service logged ${warnLines.map(([l, n]) => `${fmtNumber(n)} ${l}`).join(', ')} lines; most frequent: ${r.log.topWarnings.map((w) => `"${w.msg}" ×${fmtNumber(w.count)}`).join('; ')}`);
    }
    if (r.stop && (r.stop.code !== 0 || r.stop.forced)) {
      ctx.note(`run ${r.opts.label} (LOG_LEVEL=${r.opts.logLevel}): the service did not drain cleanly on SIGTERM: exit code ${r.stop.code}, signal ${r.stop.signal}, forced ${r.stop.forced}, after ${r.stop.ms} ms`);
    } else if (r.stop) {
      ctx.note(`run ${r.opts.label} (LOG_LEVEL=${r.opts.logLevel}): SIGTERM drain took ${r.stop.ms} ms, exit 0`);
    }
  }
  ctx.detail('settings', SETTINGS);
  ctx.detail('targets', TARGETS);
  for (const r of [dispatchOnly, main, ...(bigRun ? [bigRun] : []), info]) {
    ctx.detail(`service_${r.opts.label}`, {
      createdPerSecond: r.createdPerSecond,
      statusCodes: statusCodes(r.result),
      latency: r.result.latency,
      requests: r.result.requests,
      duration: r.result.duration,
      errors: r.result.errors,
      timeouts: r.result.timeouts,
      warmup2xx: r.warmup['2xx'],
      rowsBefore: r.rowsBefore,
      rowsAfter: r.rowsAfter,
      statusesAtEnd: r.statusesAtEnd,
      cpu: r.cpu,
      rss: r.rss,
      simulatorTotals: r.simulatorTotals,
      log: r.log,
      stop: r.stop,
      quiet: r.quiet,
      dbPerTask: r.dbPerTask,
      tablesPerTask: r.tablesPerTask,
    });
  }
  ctx.detail('ceiling', ceiling);

  if (ctx.options.profile) await profileService(ctx);
  return rows;
}

export const scenario: Scenario = {
  name: 'create',
  description: 'POST /v1/tasks throughput, latency and RSS against the raw insert ceiling',
  run,
};
