import { sql } from 'kysely';
import { freePort } from '../../src/db/embedded-postgres';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_SECRET, writePartnersFile } from '../support/service';
import { uniqueRequestNo } from './helpers';
import { insertDispatchedTasks, seedSimulator, simPartner, startServiceProcess, type ServiceProcess } from './reconciler-helpers';

/**
 * Issue 7 item 6: SIGTERM stops claiming, lets the checks and dispatches in flight finish, hands every
 * other claim back (due at once, for another replica), and exits 0 within SHUTDOWN_TIMEOUT_MS. The
 * service is a real process; its partner (the simulator, in this process) answers status queries and
 * dispatches slowly, so a sweep of 30 tasks two at a time would take far longer than the drain allows.
 */

const SLOW_MS = 1500;
const SHUTDOWN_TIMEOUT_MS = 6000;

let db: TestDatabase;
let simulator: Simulator;
let proc: ServiceProcess | undefined;

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET] });
});
afterAll(async () => {
  await proc?.kill();
  await simulator?.close();
  await db?.drop();
});

test('SIGTERM mid-sweep and mid-dispatch: in-flight work finishes, the rest is handed back due at once, nothing stays claimed, exit 0', async () => {
  const slow = { callback: { mode: 'never' }, status: { mode: 'slow', delayMs: SLOW_MS }, processingForMs: 600_000 };
  const checkNos = Array.from({ length: 30 }, () => uniqueRequestNo('drain-check'));
  await seedSimulator(simulator.url, checkNos, slow);
  await insertDispatchedTasks(db, 'sim', checkNos, { dueAt: new Date(Date.now() - 1000) });

  const port = await freePort();
  proc = await startServiceProcess({
    DATABASE_URL: db.url,
    PARTNERS_FILE: writePartnersFile([simPartner('sim', { dispatch: { path: '/requests', timeoutMs: 3000, maxAttempts: 3 }, status: { path: '/requests/{requestNo}', timeoutMs: 3000 } }, simulator.url)]),
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    API_KEYS: TEST_API_KEY,
    RECONCILE_CRON: '* * * * * *',
    RECONCILE_CONCURRENCY: '2',
    RECONCILE_BATCH_SIZE: '50',
    DISPATCH_CONCURRENCY: '1',
    SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
  });

  // Three creates: one dispatch in flight (slow), two queued behind it.
  const createNos = Array.from({ length: 3 }, () => uniqueRequestNo('drain-create'));
  for (const requestNo of createNos) {
    const res = await proc.api.post('/v1/tasks', { partner: 'sim', requestNo, payload: { simulate: { callback: { mode: 'never' }, dispatch: { delayMs: SLOW_MS } } } });
    expect(res.status).toBe(201);
  }
  await eventually(async () => simulator.stats().totals.statusQueries >= 1 && simulator.stats().totals.dispatches >= 1, 'a check and a dispatch to be in flight', 15_000);

  proc.child.kill('SIGTERM');
  const exit = await proc.exited;
  expect(exit).toEqual({ code: 0, signal: null });

  // Nothing is left claimed: every lease was recorded away or handed back.
  const { rows: leased } = await sql<{ n: number }>`select count(*)::int as n from tasks where lease_owner is not null`.execute(db.handle.db);
  expect(leased[0]!.n).toBe(0);
  // Checks that never started were handed back untouched: still due (now), not checked, for another replica.
  const { rows: checks } = await sql<{ request_no: string; check_attempts: number; next_check_at: Date }>`
    select request_no, check_attempts, next_check_at from tasks where request_no = any(${checkNos}::text[])`.execute(db.handle.db);
  const unchecked = checks.filter((c) => c.check_attempts === 0);
  expect(unchecked.length).toBeGreaterThan(0);
  for (const c of unchecked) expect(new Date(c.next_check_at).getTime()).toBeLessThanOrEqual(Date.now());
  // Each check the partner saw was recorded (none cut off by the pool closing).
  const queried = checkNos.filter((r) => (simulator.stats().byRequestNo[r]?.statusQueries ?? 0) > 0);
  expect(checks.filter((c) => c.check_attempts > 0).map((c) => c.request_no).sort()).toEqual(queried.sort());
  // The dispatch in flight was recorded; the queued ones were handed back, due at once.
  const { rows: created } = await sql<{ request_no: string; status: string; dispatch_attempts: number; next_check_at: Date }>`
    select request_no, status, dispatch_attempts, next_check_at from tasks where request_no = any(${createNos}::text[])`.execute(db.handle.db);
  expect(created).toHaveLength(3);
  for (const t of created) {
    const sent = simulator.stats().byRequestNo[t.request_no]?.dispatches ?? 0;
    if (sent > 0) expect(t).toMatchObject({ status: 'dispatched', dispatch_attempts: 1 });
    else {
      expect(t).toMatchObject({ status: 'pending', dispatch_attempts: 0 });
      expect(new Date(t.next_check_at).getTime()).toBeLessThanOrEqual(Date.now());
    }
  }
  expect(proc.output()).toContain('"msg":"stopped"');
});
