import { sql } from 'kysely';
import { freePort } from '../../src/db/embedded-postgres';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_SECRET, writePartnersFile } from '../support/service';
import { uniqueRequestNo } from './helpers';
import {
  insertDispatchedTasks,
  logByRequestNo,
  scrapeUrl,
  seedSimulator,
  simPartner,
  smallestGap,
  startServiceProcess,
  statusCounts,
  sumOf,
  type ServiceProcess,
} from './reconciler-helpers';

/**
 * Three real service processes (`node --import tsx src/main.ts`, reconciler every second, lease 5 s) over
 * one database and one partner (an in-test simulator) reconcile 1,000 open tasks that only polling can
 * settle. Every task settles; no task is asked about twice within one schedule step (claims keep replicas
 * apart); every process does part of the work. One process is SIGKILLed mid-way while holding claims:
 * those tasks are left alone until their lease runs out, then taken over and settled by the others.
 *
 * Partner `sim`: schedule 2 s; the simulator answers status queries after 200 ms (so sweeps overlap and
 * claims are held), "processing" for the first 4 s after receipt, then "succeeded".
 */

const TASKS = 1000;
const LEASE_MS = 5000;
const SCHEDULE_S = 2;

let db: TestDatabase;
let simulator: Simulator;
const procs: ServiceProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET] });
  const partnersFile = writePartnersFile([
    simPartner('sim', { status: { path: '/requests/{requestNo}', timeoutMs: 5000 }, reconcile: { scheduleSeconds: [SCHEDULE_S] } }, simulator.url),
  ]);
  const ports = [await freePort(), await freePort(), await freePort()];
  procs.push(
    ...(await Promise.all(
      ports.map((port) =>
        startServiceProcess(
          {
            DATABASE_URL: db.url,
            PARTNERS_FILE: partnersFile,
            PORT: String(port),
            HOST: '127.0.0.1',
            LOG_LEVEL: 'warn',
            API_KEYS: TEST_API_KEY,
            RECONCILE_CRON: '* * * * * *',
            RECONCILE_LEASE_MS: String(LEASE_MS),
          },
          40_000,
        ),
      ),
    )),
  );
}, 60_000);
afterAll(async () => {
  for (const p of procs) await p.kill();
  await simulator?.close();
  await db?.drop();
});

const checksOf = (samples: Awaited<ReturnType<typeof scrapeUrl>>) => sumOf(samples, 'callback_reconciler_reconciler_checks_total');

test(`three processes settle ${TASKS} polled tasks, never ask twice within a step, share the work, and survive a SIGKILL`, async () => {
  const requestNos = Array.from({ length: TASKS }, () => uniqueRequestNo('spread'));
  await seedSimulator(simulator.url, requestNos, { callback: { mode: 'never' }, processingForMs: 4000, status: { mode: 'slow', delayMs: 200 } });
  const seededAt = Date.now();
  await insertDispatchedTasks(db, 'sim', requestNos, { dueAt: new Date() });

  // Mid-way: once the victim has done a share of the checks and holds claims right now, SIGKILL it.
  const victim = procs[2]!;
  const victimChecks = await eventually(
    async () => {
      const n = checksOf(await scrapeUrl(victim.url));
      if (n < 100) return undefined;
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from tasks where status in ('pending', 'dispatched') and lease_owner like ${`%:${victim.pid}:%`}`.execute(db.handle.db);
      return rows[0]!.n > 0 ? n : undefined;
    },
    'the victim process to be mid-sweep',
    30_000,
    20,
  );
  await victim.kill();
  const killedAt = Date.now();
  expect((await victim.exited).signal).toBe('SIGKILL');

  // What it held when it died.
  const { rows: orphans } = await sql<{ request_no: string; lease_expires_at: Date }>`
    select request_no, lease_expires_at from tasks
    where status in ('pending', 'dispatched') and lease_owner like ${`%:${victim.pid}:%`}`.execute(db.handle.db);
  expect(orphans.length).toBeGreaterThan(0);

  await eventually(async () => (await statusCounts(db, 'sim')).succeeded === TASKS, `all ${TASKS} tasks to settle`, 45_000, 250);
  expect(await statusCounts(db, 'sim')).toEqual({ succeeded: TASKS });
  const { rows: how } = await sql<{ settled_by: string; n: number }>`select settled_by, count(*)::int as n from tasks group by settled_by`.execute(db.handle.db);
  expect(how).toEqual([{ settled_by: 'poll', n: TASKS }]);

  const log = simulator.stats().requestLog.filter((e) => e.at > seededAt);
  const statusTimes = logByRequestNo(log, 'status');
  // Every task was asked, and only asked (no dispatches: all were dispatched before).
  expect(statusTimes.size).toBe(TASKS);
  expect(log.every((e) => e.kind === 'status')).toBe(true);
  // Never two status queries for one task within a second: claims and the schedule keep them apart.
  const closest = smallestGap(statusTimes);
  expect(closest === undefined || closest.gapMs >= 1000).toBe(true);

  // The dead process' claims were respected until they lapsed, then taken over.
  for (const o of orphans) {
    const leaseEnd = new Date(o.lease_expires_at).getTime();
    const times = statusTimes.get(o.request_no) ?? [];
    // Queries the victim had in flight may land just after the kill; after that, nobody until the lease ends …
    expect(times.filter((at) => at > killedAt + 250 && at < leaseEnd)).toEqual([]);
    // … and then another process took it over.
    expect(times.some((at) => at >= leaseEnd)).toBe(true);
  }

  // Everyone did part of the work.
  const survivors = await Promise.all(procs.slice(0, 2).map((p) => scrapeUrl(p.url)));
  const perProcess = [...survivors.map(checksOf), victimChecks];
  for (const n of perProcess) expect(n).toBeGreaterThan(0);
});
