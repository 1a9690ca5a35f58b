import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openBenchPostgres } from '../support/database';
import { DIST_ROOT, REPO_ROOT } from '../support/paths';
import { sleep } from '../support/processes';
import { readMemoryKb } from '../support/rss';
import { migrateDatabase, warnLines } from '../support/services';
import { percentile } from '../support/stats';
import { Teardown } from '../support/teardown';
import { markdownTable } from './accounting';
import { gitCommit, parseArgs, requireBuild, stablePort, startSimulator, SUITE_API_KEY, writePartners, writeResults } from './common';
import { pickScript, seededRandom, type TaskScript } from './create-client';
import { poolFlat, rssFlat } from './flatness';
import { Replica } from './replica';
import { serviceEnvOverrides } from '../support/start-flags';

/**
 * `npm run soak -- --minutes N [--warmup M] [--rate R] [--seed S]`
 *
 * One service process under a steady mixed load for N minutes: creates (settled by callbacks, by polls
 * after the partner worked a while, or failed), long-polls on fresh tasks, reads by id and by request
 * number, list pages and event trails. Every 5 s it samples the service's RSS (/proc), event-loop delay
 * and pool counts (/metrics); every minute it adds table sizes and prints one row. After the warm-up it
 * judges RSS and the pool's waiting count flat (bench/reliability/flatness.ts) and exits 1 when they are
 * not, or when more than 1 % of requests failed. Writes bench/results/soak-latest.{md,json}.
 *
 * Database: BENCH_DATABASE_URL (a fresh database on it) or an embedded PostgreSQL.
 */

const log = (message: string) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${message}\n`);

const PARTNER = 'soak';
const SAMPLE_EVERY_MS = 5000;
const MAX_ERROR_FRACTION = 0.01;

const SOAK_SCRIPTS: readonly TaskScript[] = [
  { name: 'callback', weight: 60, simulate: {}, outcome: 'succeeded' },
  { name: 'callback-failed', weight: 10, simulate: { outcome: 'failed', error: { code: 'E1', message: 'declined' } }, outcome: 'failed' },
  { name: 'poll', weight: 20, simulate: { callback: { mode: 'never' } }, outcome: 'succeeded' },
  { name: 'poll-after-work', weight: 10, simulate: { callback: { mode: 'never' }, processingForMs: 8000 }, outcome: 'succeeded' },
];

interface Sample {
  at: number;
  rssMb: number;
  heapUsedMb: number;
  lagP99Ms: number;
  lagMaxMs: number;
  poolBusy: number;
  poolIdle: number;
  poolWaiting: number;
}

interface Counters {
  requests: Record<string, number>;
  errors: number;
  createMs: number[];
  longPollFinal: number;
  longPollTimedOut: number;
}

const emptyCounters = (): Counters => ({ requests: {}, errors: 0, createMs: [], longPollFinal: 0, longPollTimedOut: 0 });

interface MinuteRow {
  minute: number;
  warmup: boolean;
  requests: number;
  creates: number;
  errors: number;
  createP50Ms: number;
  createP99Ms: number;
  longPolls: string;
  rssMb: number;
  rssMaxMb: number;
  heapUsedMb: number;
  lagP99Ms: number;
  lagMaxMs: number;
  poolBusyMax: number;
  poolWaitingMean: number;
  poolWaitingMax: number;
  tasks: number;
  events: number;
  inbox: number;
  openTasks: number;
  tablesMb: number;
}

function options() {
  const a = parseArgs(process.argv.slice(2), { minutes: 'number', warmup: 'number', rate: 'number', seed: 'number' });
  const minutes = Math.max(2, Math.round((a['minutes'] as number | undefined) ?? 30));
  return {
    minutes,
    warmup: Math.min(minutes - 2, Math.round((a['warmup'] as number | undefined) ?? Math.min(5, Math.max(1, Math.floor(minutes / 4))))),
    rate: (a['rate'] as number | undefined) ?? 20,
    seed: (a['seed'] as number | undefined) ?? Math.floor(Math.random() * 2 ** 31),
  };
}

async function main(): Promise<number> {
  requireBuild();
  // The code under test is the build made when the run began; a commit made during a long run is not in it.
  const commit = gitCommit();
  const opts = options();
  const random = seededRandom(opts.seed);
  const td = new Teardown(log);
  const tmpDir = await mkdtemp(path.join(os.tmpdir(), 'soak-run-'));
  const onSignal = () => {
    log('interrupted: tearing down');
    void td.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let keepTmp = true;

  try {
    log(`${opts.minutes} min (${opts.warmup} warm-up), ${opts.rate} creates/s, seed ${opts.seed}; logs in ${tmpDir}`);
    const postgres = await openBenchPostgres(log);
    td.add('close postgres', () => postgres.close());
    const database = await postgres.createDatabase('soak');
    await migrateDatabase(database.url);

    const sim = await startSimulator(path.join(tmpDir, 'simulator.log'), REPO_ROOT);
    td.add('stop simulator', () => sim.handle.stop());
    const partnersFile = path.join(tmpDir, 'partners.json');
    await writePartners(partnersFile, PARTNER, sim.url, {
      dispatch: { path: '/requests', timeoutMs: 5000, maxAttempts: 8 },
      status: { path: '/requests/{requestNo}', timeoutMs: 3000 },
      reconcile: { scheduleSeconds: [2, 5, 10], maxAgeSeconds: 3600 },
    });
    const service = new Replica({
      name: 'service',
      port: await stablePort(),
      distRoot: DIST_ROOT,
      repoRoot: REPO_ROOT,
      logFile: path.join(tmpDir, 'service.log'),
      log,
      env: {
        DATABASE_URL: database.url,
        PARTNERS_FILE: partnersFile,
        API_KEYS: SUITE_API_KEY,
        LOG_LEVEL: 'warn',
        RECONCILE_CRON: '*/2 * * * * *',
        ...serviceEnvOverrides(),
      },
    });
    td.add('stop service', () => service.stop());
    await service.start();
    const pid = service.pid!;
    const poolSize = 10;

    // ---- load ----
    const base = service.url;
    let counters = emptyCounters();
    const recent: Array<{ id: string; requestNo: string }> = [];
    const inFlight = new Set<Promise<void>>();
    let running = true;

    const call = async (method: string, route: string, body?: unknown, timeoutMs = 15_000): Promise<{ status: number; data: unknown } | undefined> => {
      const started = performance.now();
      const kind = `${method} ${route.split('?')[0]!.replace(/\/[0-9a-f-]{36}/, '/{id}').replace(/\/tasks\/[^/]+$/, '/tasks/{requestNo}')}`;
      counters.requests[kind] = (counters.requests[kind] ?? 0) + 1;
      try {
        const res = await fetch(`${base}${route}`, {
          method,
          headers: { authorization: `Bearer ${SUITE_API_KEY}`, ...(body ? { 'content-type': 'application/json' } : {}) },
          ...(body ? { body: JSON.stringify(body) } : {}),
          signal: AbortSignal.timeout(timeoutMs),
        });
        const data = (await res.json().catch(() => undefined)) as unknown;
        if (res.status >= 500 || (res.status >= 400 && res.status !== 404)) counters.errors += 1;
        if (method === 'POST' && route === '/v1/tasks') counters.createMs.push(performance.now() - started);
        return { status: res.status, data };
      } catch {
        counters.errors += 1;
        return undefined;
      }
    };
    const spawnJob = (job: () => Promise<void>) => {
      if (inFlight.size > 500) return; // the service is falling behind; the error/latency figures will say so
      const p = job().finally(() => inFlight.delete(p));
      inFlight.add(p);
    };

    let n = 0;
    const createOne = async () => {
      n += 1;
      const requestNo = `s${opts.seed.toString(36)}-${n}`;
      const script = pickScript(SOAK_SCRIPTS, random);
      const r = await call('POST', '/v1/tasks', { partner: PARTNER, requestNo, kind: script.name, payload: { n, simulate: script.simulate } });
      const id = (r?.data as { id?: string } | undefined)?.id;
      if (r?.status !== 201 || !id) return;
      recent.push({ id, requestNo });
      if (recent.length > 1000) recent.splice(0, recent.length - 1000);
      // One create in five is followed by a long-poll until it is final (or 10 s pass).
      if (random() < 0.2) {
        const w = await call('GET', `/v1/tasks/${id}?waitSeconds=10`, undefined, 20_000);
        const status = (w?.data as { status?: string } | undefined)?.status;
        if (status && !['pending', 'dispatched'].includes(status)) counters.longPollFinal += 1;
        else counters.longPollTimedOut += 1;
      }
    };
    const readOne = async () => {
      const t = recent[Math.floor(random() * recent.length)];
      if (!t) return;
      const pick = random();
      if (pick < 0.5) await call('GET', `/v1/tasks/${t.id}`);
      else if (pick < 0.8) await call('GET', `/v1/partners/${PARTNER}/tasks/${t.requestNo}`);
      else await call('GET', `/v1/tasks/${t.id}/events`);
    };

    const started = Date.now();
    const loadLoop = (async () => {
      const intervalMs = 1000 / opts.rate;
      let launched = 0;
      while (running) {
        const due = Math.floor((Date.now() - started) / intervalMs) + 1;
        while (launched < due) {
          launched += 1;
          spawnJob(createOne);
          // Two reads per create, and a list page every second.
          spawnJob(readOne);
          spawnJob(readOne);
          if (launched % Math.max(1, Math.round(opts.rate)) === 0) spawnJob(async () => void (await call('GET', '/v1/tasks?limit=50')));
        }
        await sleep(intervalMs);
      }
    })();

    // ---- sampling ----
    const samples: Sample[] = [];
    const sampleOnce = async () => {
      // RSS comes from /proc and is kept even when the scrape fails (a saturated service answers late).
      const mem = readMemoryKb(pid);
      const metrics = await scrape(`${base}/metrics`).catch((err: Error) => {
        log(`metrics scrape failed: ${err.message}`);
        return new Map<string, number>();
      });
      const get = (name: string) => metrics.get(name) ?? Number.NaN;
      samples.push({
        at: Date.now(),
        rssMb: (mem?.rssKb ?? Number.NaN) / 1024,
        heapUsedMb: get('nodejs_heap_size_used_bytes') / 2 ** 20,
        lagP99Ms: get('nodejs_eventloop_lag_p99_seconds') * 1000,
        lagMaxMs: get('nodejs_eventloop_lag_max_seconds') * 1000,
        poolBusy: get('callback_reconciler_db_pool_connections{state="busy"}'),
        poolIdle: get('callback_reconciler_db_pool_connections{state="idle"}'),
        poolWaiting: get('callback_reconciler_db_pool_waiting'),
      });
    };
    const rows: MinuteRow[] = [];
    const header = ['min', 'req', 'creates', 'err', 'create p50/p99 ms', 'long-polls final/timed out', 'RSS MB (max)', 'heap MB', 'loop p99/max ms', 'pool busy max', 'pool waiting mean/max', 'tasks', 'events', 'inbox', 'open', 'tables MB'];
    process.stderr.write(`${header.join(' | ')}\n`);
    for (let minute = 1; minute <= opts.minutes; minute++) {
      const minuteStart = Date.now();
      const minuteSamples: Sample[] = [];
      while (Date.now() - minuteStart < 60_000 - SAMPLE_EVERY_MS / 2) {
        await sleep(SAMPLE_EVERY_MS);
        await sampleOnce();
        const s = samples.at(-1);
        if (s && s.at >= minuteStart) minuteSamples.push(s);
      }
      const c = counters;
      counters = emptyCounters();
      const [sizes] = await postgres.query<{ tasks: number; events: number; inbox: number; open: number; bytes: number }>(
        database.url,
        `select (select count(*) from tasks)::int as tasks, (select count(*) from task_events)::int as events,
                (select count(*) from callback_inbox)::int as inbox,
                (select count(*) from tasks where status in ('pending','dispatched'))::int as open,
                (pg_total_relation_size('tasks') + pg_total_relation_size('task_events') + pg_total_relation_size('callback_inbox'))::bigint as bytes`,
      );
      const med = (xs: number[]) => percentile(xs.filter(Number.isFinite), 50);
      const max = (xs: number[]) => Math.max(...xs.filter(Number.isFinite));
      const mean = (xs: number[]) => {
        const finite = xs.filter(Number.isFinite);
        return finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : Number.NaN;
      };
      const row: MinuteRow = {
        minute,
        warmup: minute <= opts.warmup,
        requests: Object.values(c.requests).reduce((a, b) => a + b, 0),
        creates: c.createMs.length,
        errors: c.errors,
        createP50Ms: percentile(c.createMs, 50),
        createP99Ms: percentile(c.createMs, 99),
        longPolls: `${c.longPollFinal}/${c.longPollTimedOut}`,
        rssMb: med(minuteSamples.map((s) => s.rssMb)),
        rssMaxMb: max(minuteSamples.map((s) => s.rssMb)),
        heapUsedMb: med(minuteSamples.map((s) => s.heapUsedMb)),
        lagP99Ms: max(minuteSamples.map((s) => s.lagP99Ms)),
        lagMaxMs: max(minuteSamples.map((s) => s.lagMaxMs)),
        poolBusyMax: max(minuteSamples.map((s) => s.poolBusy)),
        poolWaitingMean: mean(minuteSamples.map((s) => s.poolWaiting)),
        poolWaitingMax: max(minuteSamples.map((s) => s.poolWaiting)),
        tasks: sizes?.tasks ?? 0,
        events: sizes?.events ?? 0,
        inbox: sizes?.inbox ?? 0,
        openTasks: sizes?.open ?? 0,
        tablesMb: Number(sizes?.bytes ?? 0) / 2 ** 20,
      };
      rows.push(row);
      process.stderr.write(`${renderRow(row).join(' | ')}\n`);
    }
    running = false;
    await loadLoop;
    await Promise.allSettled([...inFlight]);
    const serviceAlive = service.alive;

    // ---- verdict ----
    const after = rows.filter((r) => !r.warmup);
    const rss = rssFlat(after.map((r) => r.rssMb));
    const pool = poolFlat(after.map((r) => r.poolWaitingMean));
    const totalRequests = rows.reduce((a, r) => a + r.requests, 0);
    const totalErrors = rows.reduce((a, r) => a + r.errors, 0);
    const errorFraction = totalRequests ? totalErrors / totalRequests : 1;
    const errorsOk = errorFraction <= MAX_ERROR_FRACTION;
    const ok = rss.ok && pool.ok && errorsOk && serviceAlive;
    const logs = await warnLines(path.join(tmpDir, 'service.log'));

    const markdown = [
      `## Soak run (${new Date().toISOString()}, commit ${commit} when the run began)`,
      '',
      `${opts.minutes} minutes, the first ${opts.warmup} warm-up (marked *); ${opts.rate} creates/s (mix: ${SOAK_SCRIPTS.map((s) => `${s.name} ${s.weight}%`).join(', ')}), 1 in 5 followed by a 10 s long-poll, 2 reads per create (by id, by request number, events) and a list page per second. One service process (pool ${poolSize}), the simulator in another; samples every ${SAMPLE_EVERY_MS / 1000} s, RSS is the minute's median.`,
      '',
      markdownTable(header, rows.map(renderRow)),
      '',
      markdownTable(
        ['rule (after warm-up)', 'verdict', 'detail'],
        [
          ['RSS flat', rss.ok ? '✅' : '❌', rss.detail],
          ['pool waiting flat', pool.ok ? '✅' : '❌', pool.detail],
          [`errors ≤ ${MAX_ERROR_FRACTION * 100}% of requests`, errorsOk ? '✅' : '❌', `${totalErrors} of ${totalRequests} (${(errorFraction * 100).toFixed(2)}%)`],
          ['service still running', serviceAlive ? '✅' : '❌', serviceAlive ? `pid ${pid}` : 'the service exited during the run'],
        ],
      ),
      '',
      `Service log lines at warn or above: ${logs.total}${logs.top.length ? ` (top: ${logs.top.join('; ')})` : ''}`,
      '',
      `**${ok ? 'PASS' : 'FAIL'}**`,
    ].join('\n');
    process.stdout.write(`${markdown}\n`);
    const files = await writeResults('soak-latest', markdown, { options: opts, rows, samples, verdict: { rss, pool, errorFraction, serviceAlive, ok } });
    log(`written: ${files.join(', ')}`);
    keepTmp = !ok;
    if (keepTmp) log(`logs kept in ${tmpDir}`);
    return ok ? 0 : 1;
  } finally {
    await td.run();
    if (!keepTmp) await rm(tmpDir, { recursive: true, force: true });
  }
}

function renderRow(r: MinuteRow): string[] {
  const f0 = (v: number) => (Number.isFinite(v) ? Math.round(v).toString() : '—');
  const f1 = (v: number) => (Number.isFinite(v) ? (Math.round(v * 10) / 10).toString() : '—');
  return [
    `${r.minute}${r.warmup ? '*' : ''}`,
    String(r.requests),
    String(r.creates),
    String(r.errors),
    `${f0(r.createP50Ms)}/${f0(r.createP99Ms)}`,
    r.longPolls,
    `${f0(r.rssMb)} (${f0(r.rssMaxMb)})`,
    f0(r.heapUsedMb),
    `${f0(r.lagP99Ms)}/${f0(r.lagMaxMs)}`,
    f0(r.poolBusyMax),
    `${f1(r.poolWaitingMean)}/${f0(r.poolWaitingMax)}`,
    String(r.tasks),
    String(r.events),
    String(r.inbox),
    String(r.openTasks),
    f1(r.tablesMb),
  ];
}

/** Prometheus text → map of `name` or `name{labels}` to value. */
async function scrape(url: string): Promise<Map<string, number>> {
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(2);
  },
);
