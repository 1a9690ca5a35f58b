import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, DIST_ROOT } from '../support/paths';
import { sleep } from '../support/processes';
import { migrateDatabase, warnLines } from '../support/services';
import { Teardown } from '../support/teardown';
import { account, markdownTable, renderAccounting, type CallbackEventView, type InboxRowView, type TaskRowView } from './accounting';
import { gitCommit, parseArgs, requireBuild, stablePort, startSimulator, SUITE_API_KEY, writePartners, writeResults } from './common';
import { CHAOS_SCRIPTS, CreateLoad, seededRandom } from './create-client';
import { LoadBalancer } from './load-balancer';
import { Replica } from './replica';
import { RestartablePostgres } from './restartable-postgres';

/**
 * `npm run test:chaos [-- --short] [--seconds N] [--replicas N] [--rate N] [--seed N]`
 *
 * Replicas of the service (real processes) over one PostgreSQL, behind a round-robin load balancer,
 * under a steady create load from a client that retries every create until it is answered. Meanwhile
 * replicas are SIGKILLed at random and restarted, the PostgreSQL (the suite's own, never the machine's
 * shared one) is crashed and restarted once, the partner is down for a while and then slower than its
 * timeout for a while. Then the load stops, everything comes back, and once the work has settled the
 * accounting checks that every task the client was told about exists and is final with the partner's
 * outcome, that the partner received no request twice (the ambiguity rule), that every stored callback
 * was applied once and that nothing is left claimed. Prints the accounting, writes
 * bench/results/chaos-latest.{md,json}, and exits 1 when any check fails.
 */

const log = (message: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 23)}] ${message}\n`);

const PARTNER = 'chaos';
/** Partner timeouts: the "slow" phase answers later than these. */
const PARTNER_TIMEOUT_MS = 1000;
const SLOW_PARTNER_DELAY_MS = 1600;

interface Options {
  seconds: number;
  replicas: number;
  rate: number;
  seed: number;
  settleSeconds: number;
  /** Keep the service, simulator and PostgreSQL logs even when the run passes. */
  keepLogs: boolean;
}

function options(): Options {
  const a = parseArgs(process.argv.slice(2), { short: 'flag', 'keep-logs': 'flag', seconds: 'number', replicas: 'number', rate: 'number', seed: 'number', 'settle-seconds': 'number' });
  const short = a['short'] === true;
  return {
    seconds: (a['seconds'] as number | undefined) ?? (short ? 45 : 180),
    replicas: Math.max(2, (a['replicas'] as number | undefined) ?? 3),
    rate: (a['rate'] as number | undefined) ?? (short ? 6 : 12),
    seed: (a['seed'] as number | undefined) ?? Math.floor(Math.random() * 2 ** 31),
    settleSeconds: (a['settle-seconds'] as number | undefined) ?? 120,
    keepLogs: a['keep-logs'] === true,
  };
}

interface TimelineEntry {
  /** Seconds since the load started. */
  at: number;
  /** UTC time of day, to line up with task event times. */
  clock: string;
  event: string;
}

async function main(): Promise<number> {
  requireBuild();
  const opts = options();
  const random = seededRandom(opts.seed);
  const td = new Teardown(log);
  const tmpDir = await mkdtemp(path.join(os.tmpdir(), 'chaos-run-'));
  let keepTmp = true;
  const onSignal = () => {
    log('interrupted: tearing down');
    void td.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const timeline: TimelineEntry[] = [];
  let t0 = Date.now();
  const mark = (event: string) => {
    timeline.push({ at: (Date.now() - t0) / 1000, clock: new Date().toISOString().slice(11, 23), event });
    log(event);
  };

  try {
    log(`seed ${opts.seed}; ${opts.replicas} replicas, ${opts.rate} creates/s for ${opts.seconds} s; logs in ${tmpDir}`);
    const pg = await RestartablePostgres.create(log, path.join(tmpDir, 'postgres.log'));
    td.add('destroy PostgreSQL', () => pg.destroy());
    await pg.query('postgres', 'create database chaos');
    const databaseUrl = pg.urlFor('chaos');
    await migrateDatabase(databaseUrl);

    const sim = await startSimulator(path.join(tmpDir, 'simulator.log'), REPO_ROOT);
    td.add('stop simulator', () => sim.handle.stop());

    const ports: number[] = [];
    while (ports.length < opts.replicas) {
      const port = await stablePort();
      if (!ports.includes(port)) ports.push(port);
    }
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const balancer = await LoadBalancer.start(() => urls);
    td.add('close load balancer', () => balancer.close());

    const partnersFile = path.join(tmpDir, 'partners.json');
    await writePartners(partnersFile, PARTNER, sim.url, {
      dispatch: { path: '/requests', timeoutMs: PARTNER_TIMEOUT_MS, maxAttempts: 10 },
      status: { path: '/requests/{requestNo}', timeoutMs: PARTNER_TIMEOUT_MS },
      reconcile: { scheduleSeconds: [1, 2, 3, 5], maxAgeSeconds: 3600 },
      rateLimit: { perSecond: 500 },
    });
    const replicas = ports.map(
      (port, i) =>
        new Replica({
          name: `replica-${i + 1}`,
          port,
          distRoot: DIST_ROOT,
          repoRoot: REPO_ROOT,
          logFile: path.join(tmpDir, `replica-${i + 1}.log`),
          log,
          env: {
            DATABASE_URL: databaseUrl,
            PUBLIC_BASE_URL: balancer.url,
            PARTNERS_FILE: partnersFile,
            API_KEYS: SUITE_API_KEY,
            LOG_LEVEL: 'warn',
            RECONCILE_CRON: '* * * * * *',
            RECONCILE_LEASE_MS: '5000',
            DB_CONNECT_TIMEOUT_MS: '2000',
            SHUTDOWN_TIMEOUT_MS: '2000',
          },
        }),
    );
    td.add('stop replicas', () => Promise.all(replicas.map((r) => r.stop())));
    await Promise.all(replicas.map((r) => r.start()));
    log('replicas ready');

    // ---- load + chaos ----
    t0 = Date.now();
    const load = new CreateLoad({
      baseUrl: balancer.url,
      apiKey: SUITE_API_KEY,
      partner: PARTNER,
      ratePerSecond: opts.rate,
      scripts: CHAOS_SCRIPTS,
      random,
      prefix: `c${opts.seed.toString(36)}`,
      // A client that keeps trying as long as the run lasts: 'told' then depends on availability only.
      giveUpAfterMs: 300_000,
    });
    load.start();
    mark(`load started: ${opts.rate} creates/s through the load balancer`);

    const loadMs = opts.seconds * 1000;
    let chaosOn = true;
    const at = (fraction: number) => sleep(Math.max(0, t0 + fraction * loadMs - Date.now()));

    const killer = (async () => {
      const restarts: Promise<void>[] = [];
      for (;;) {
        await sleep(3000 + random() * 7000);
        if (!chaosOn) break;
        const ready = replicas.filter((r) => r.ready);
        // Keep one replica serving, as a platform's minimum availability would.
        if (ready.length < 2) continue;
        const victim = ready[Math.floor(random() * ready.length)]!;
        await victim.kill();
        mark(`SIGKILL ${victim.name}`);
        const downMs = 500 + random() * 3500;
        restarts.push(
          sleep(downMs).then(async () => {
            await victim.start();
            mark(`${victim.name} ready again`);
          }),
        );
      }
      await Promise.all(restarts);
    })();

    const database = (async () => {
      await at(0.25);
      mark('PostgreSQL: immediate shutdown (crash), restart after 2 s');
      const ms = await pg.restart({ mode: 'immediate', downMs: 2000 });
      mark(`PostgreSQL back after ${(ms / 1000).toFixed(1)} s`);
    })();

    const partner = (async () => {
      await at(0.4);
      await sim.setDown(true);
      mark('partner down (503 to dispatches and status queries)');
      await at(0.55);
      await sim.setDown(false);
      mark('partner up');
      await at(0.65);
      await sim.setSlow(SLOW_PARTNER_DELAY_MS);
      mark(`partner slow: answers after ${SLOW_PARTNER_DELAY_MS} ms, past its ${PARTNER_TIMEOUT_MS} ms timeout`);
      await at(0.8);
      await sim.setSlow(0);
      mark('partner fast again');
    })();

    await at(1);
    chaosOn = false;
    const loadStopped = load.stop();
    mark('chaos over, load stopping');
    await Promise.all([database, partner, killer]);
    await Promise.all(replicas.map((r) => r.start()));
    mark('every replica up');
    await loadStopped;
    mark(`load stopped: ${load.attempted.length} creates attempted, ${load.told.length} answered`);

    // ---- settle ----
    const settleDeadline = Date.now() + opts.settleSeconds * 1000;
    for (;;) {
      const [row] = await pg.query<{ open: number; claimed: number; queued: number }>(
        'chaos',
        `select (select count(*) from tasks where status in ('pending','dispatched','expired'))::int as open,
                (select count(*) from tasks where lease_owner is not null)::int as claimed,
                (select count(*) from callback_inbox where outcome = 'queued')::int as queued`,
      );
      if (row && row.open === 0 && row.claimed === 0 && row.queued === 0) {
        mark('settled: no open task, no claim, no queued callback');
        break;
      }
      if (Date.now() > settleDeadline) {
        mark(`not settled after ${opts.settleSeconds} s: ${JSON.stringify(row)}`);
        break;
      }
      await sleep(2000);
    }

    // ---- accounting ----
    const tasks = await pg.query<TaskRowView & Record<string, unknown>>('chaos', 'select id, request_no, status, lease_owner, settled_by, dispatch_attempts from tasks');
    const inbox = await pg.query<InboxRowView & Record<string, unknown>>('chaos', 'select webhook_id, request_no, outcome from callback_inbox');
    const callbackEvents = await pg.query<CallbackEventView & Record<string, unknown>>(
      'chaos',
      `select detail->>'webhookId' as webhook_id from task_events where source = 'callback' and detail->>'type' = 'callback'`,
    );
    const [conflicts] = await pg.query<{ n: number }>('chaos', `select count(*)::int as n from task_events where detail->>'type' = 'conflict'`);
    const simStats = await sim.stats();
    const result = account({
      client: { attempted: load.attempted, told: load.told, answers: load.answers },
      tasks,
      partner: simStats.byRequestNo,
      inbox,
      callbackEvents,
      conflictEvents: conflicts?.n ?? 0,
    });

    const chaosFigures: Array<[string, string | number]> = [
      ['replicas', opts.replicas],
      ['load', `${opts.rate} creates/s for ${opts.seconds} s (seed ${opts.seed})`],
      ['SIGKILLs / starts / failed starts', replicas.map((r) => `${r.name} ${r.kills}/${r.starts}/${r.failedStarts}`).join(', ')],
      ['PostgreSQL restarts', 1],
      ['load balancer: requests / refused and re-routed / 502', `${balancer.stats.requests} / ${balancer.stats.refusedRetried} / ${balancer.stats.badGateway}`],
      ['partner: refused while down', simStats.totals['rejectedWhileDown'] ?? 0],
    ];
    const logFindings: string[] = [];
    for (const r of replicas) {
      const w = await warnLines(path.join(tmpDir, `${r.name}.log`));
      if (w.total > 0) logFindings.push(`${r.name}: ${w.total} warn/error lines, top: ${w.top.join('; ')}`);
    }

    // The trail of each offending task, so a failure can be understood after the database is gone.
    const offenders = new Set(
      result.checks
        .filter((c) => !c.ok)
        .flatMap((c) => c.examples.map((e) => e.split(' ')[0]!))
        .slice(0, 10),
    );
    const trails: string[] = [];
    for (const requestNo of offenders) {
      const events = await pg.query<Record<string, unknown>>(
        'chaos',
        `select e.at, e.from_status, e.to_status, e.source, e.detail from task_events e join tasks t on t.id = e.task_id
         where t.request_no = $1 order by e.id`,
        [requestNo],
      );
      const [task] = await pg.query<Record<string, unknown>>('chaos', 'select * from tasks where request_no = $1', [requestNo]);
      if (!task && events.length === 0) continue;
      trails.push(
        `#### ${requestNo}\n\npartner: ${JSON.stringify(simStats.byRequestNo[requestNo] ?? null)}\n\ntask: ${JSON.stringify(task ?? null)}\n\n` +
          markdownTable(
            ['at', 'from', 'to', 'source', 'detail'],
            events.map((e) => [new Date(e['at'] as string).toISOString().slice(11, 23), String(e['from_status']), String(e['to_status']), String(e['source']), JSON.stringify(e['detail'])]),
          ),
      );
    }

    const commit = gitCommit();
    const markdown = [
      `## Chaos run (${new Date().toISOString()}, commit ${commit})`,
      '',
      markdownTable(['chaos', 'value'], chaosFigures),
      '',
      renderAccounting(result),
      '',
      '<details><summary>timeline</summary>',
      '',
      markdownTable(['t (s)', 'UTC', 'event'], timeline.map((e) => [e.at.toFixed(1), e.clock, e.event])),
      '',
      '</details>',
      '',
      ...(trails.length ? ['### Offending tasks', '', ...trails, ''] : []),
      ...(logFindings.length ? ['Service log lines at warn or above:', '', ...logFindings.map((l) => `- ${l}`), ''] : []),
      `**${result.ok ? 'PASS' : 'FAIL'}**: ${result.checks.filter((c) => !c.ok).map((c) => c.name).join(', ') || 'every check holds'}`,
    ].join('\n');
    process.stdout.write(`${markdown}\n`);
    const files = await writeResults('chaos-latest', markdown, { commit, options: opts, chaos: chaosFigures, accounting: result, timeline, logFindings, simulatorTotals: simStats.totals });
    log(`written: ${files.join(', ')}`);
    keepTmp = !result.ok || opts.keepLogs;
    if (keepTmp) log(`service, simulator and PostgreSQL logs kept in ${tmpDir}`);
    return result.ok ? 0 : 1;
  } finally {
    await td.run();
    if (!keepTmp) await rm(tmpDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(2);
  },
);
