import net from 'node:net';
import { sql } from 'kysely';
import { ManualClock } from '../../src/clock';
import { freePort } from '../../src/db/embedded-postgres';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { DISPATCH_LEASE_GRACE_MS } from '../../src/tasks/task-service';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_API_KEY, TEST_SECRET, writePartnersFile, type TestService } from '../support/service';
import { uniqueRequestNo } from './helpers';
import { getEvents, getTask, simPartner, startServiceProcess, trail, type ServiceProcess } from './reconciler-helpers';

/**
 * A process killed (SIGKILL) after committing a task and before its dispatch was recorded: another replica
 * takes the task over once the dispatcher's lease lapses, asks the partner first (never a blind re-send),
 * and dispatches it exactly once.
 *
 * The doomed replica is a real process (`node --import tsx src/main.ts`) whose partner `sim` points at a
 * black hole (accepts connections, never answers), so its dispatch hangs and never reaches the real
 * partner; it is killed while it hangs. The surviving replica is an in-process service on the same
 * database with the simulator as `sim`, on a ManualClock so the lease expiry is reached without sleeping.
 */

let db: TestDatabase;
let simulator: Simulator;
let blackHole: net.Server;
const held: net.Socket[] = [];
let dispatchBytesSeen = 0;
let doomed: ServiceProcess | undefined;
let survivor: TestService | undefined;

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET], defaultCallbackDelayMs: 100 });
  blackHole = net.createServer((socket) => {
    held.push(socket);
    socket.on('data', (c: Buffer) => (dispatchBytesSeen += c.length));
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  await doomed?.kill();
  await survivor?.stop();
  for (const s of held) s.destroy();
  await new Promise<void>((resolve) => blackHole.close(() => resolve()));
  await simulator?.close();
  await db?.drop();
});

test('SIGKILL between commit and dispatch: another replica dispatches the task exactly once after the lease and it settles', async () => {
  const port = await freePort();
  const blackHoleUrl = `http://127.0.0.1:${(blackHole.address() as net.AddressInfo).port}`;
  const DOOMED_DISPATCH_TIMEOUT_MS = 3000;
  doomed = await startServiceProcess({
    DATABASE_URL: db.url,
    PARTNERS_FILE: writePartnersFile([simPartner('sim', { dispatch: { path: '/requests', timeoutMs: DOOMED_DISPATCH_TIMEOUT_MS, maxAttempts: 3 } }, blackHoleUrl)]),
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    API_KEYS: TEST_API_KEY,
    // Its reconciler never ticks during the test.
    RECONCILE_CRON: '0 0 1 1 *',
  });

  const requestNo = uniqueRequestNo('killed');
  const created = await doomed.api.post('/v1/tasks', { partner: 'sim', requestNo, payload: { simulate: {} } });
  expect(created.status).toBe(201);
  const id = created.data.id as string;
  // The create answer means committed; its dispatch is now hanging in the black hole. Kill it there.
  await eventually(async () => dispatchBytesSeen > 0, 'the doomed dispatch to be in flight', 5000);
  await doomed.kill();
  expect(await doomed.exited).toEqual({ code: null, signal: 'SIGKILL' });

  // What it left behind: committed, never recorded as dispatched, still leased by the dead process.
  const { rows } = await sql<{ status: string; dispatch_attempts: number; lease_owner: string | null; lease_expires_at: Date; next_check_at: Date; created_at: Date }>`
    select status, dispatch_attempts, lease_owner, lease_expires_at, next_check_at, created_at from tasks where id = ${id}::uuid`.execute(db.handle.db);
  const left = rows[0]!;
  expect(left).toMatchObject({ status: 'pending', dispatch_attempts: 0 });
  expect(left.lease_owner).toContain(`:${doomed.pid}:`);
  // Due (the app's clock) when the lease ends; the lease itself runs by the database's clock (now() at
  // the insert), which on this one machine is the same clock give or take the insert's own duration.
  const dueAt = new Date(left.next_check_at).getTime();
  expect(dueAt).toBe(new Date(left.created_at).getTime() + DOOMED_DISPATCH_TIMEOUT_MS + DISPATCH_LEASE_GRACE_MS);
  const leaseEnd = new Date(left.lease_expires_at).getTime();
  expect(Math.abs(leaseEnd - dueAt)).toBeLessThan(5000);
  expect(simulator.stats().byRequestNo[requestNo]).toBeUndefined();

  // The surviving replica, with the working partner.
  const clock = new ManualClock(Date.now());
  survivor = await startTestService({ db, simulator, clock, background: false });

  // While the dead process' lease lasts, the task is not touched, however late the survivor's clock says it is.
  clock.set(dueAt + 3_600_000);
  const { rows: live } = await sql<{ live: boolean }>`select lease_expires_at > now() + interval '3 seconds' as live from tasks where id = ${id}::uuid`.execute(db.handle.db);
  // (On a machine slow enough that the lease ran out during the set-up, there is nothing to see here.)
  if (live[0]!.live) {
    expect((await survivor.runtime.reconciler.runOnce()).claimed).toBe(0);
    expect(simulator.stats().byRequestNo[requestNo]).toBeUndefined();
  }

  // Once it lapses (by the database's clock: real time passes here): claimed, the partner asked first
  // (404: never received), then dispatched once.
  await eventually(async () => ((await survivor!.runtime.reconciler.runOnce()).claimed === 1 ? true : undefined), 'the dead lease to lapse and the task to be claimed', 30_000, 250);
  const settled = await eventually(async () => {
    const t = await getTask(survivor!.api, id);
    return t.status === 'succeeded' ? t : undefined;
  }, 'the taken-over task to settle');
  expect(settled).toMatchObject({ status: 'succeeded', settledBy: 'callback', dispatchAttempts: 1 });
  expect(simulator.stats().byRequestNo[requestNo]).toMatchObject({ dispatches: 1, statusQueries: 1, lastIdempotencyKey: requestNo });
  expect(simulator.stats().requestLog.filter((e) => e.requestNo === requestNo).map((e) => e.kind)).toEqual(['status', 'dispatch']);
  expect(trail(await getEvents(survivor.api, id))).toEqual([
    [null, 'pending', 'api'],
    ['pending', 'dispatched', 'dispatch'],
    ['dispatched', 'succeeded', 'callback'],
  ]);
  // Only the one (dead) dispatch ever went to the black hole.
  expect(held).toHaveLength(1);
});
