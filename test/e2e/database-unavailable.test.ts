import net from 'node:net';
import { Client } from 'pg';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_SECRET, type TestService } from '../support/service';
import { newRequestNo, postCallback, report, signCallback } from './callback-helpers';
import { createTask, expectProblem, NO_CALLBACK, rawRequest, uniqueRequestNo } from './helpers';

/**
 * Issue 7, item 11: while the database is unreachable every route that needs it answers 503 with
 * Retry-After, /readyz says 503, and no answer carries driver text, SQL or a stack; a statement that
 * waits on a lock and a request that waits for a pool connection are both bounded.
 */

/** A TCP proxy in front of Postgres that the test can cut (existing connections reset, new ones refused). */
class CuttableProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async up(): Promise<void> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async down(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server?.close(() => resolve()));
    for (const s of this.sockets) s.resetAndDestroy();
    await closed;
  }
}

let db: TestDatabase;
let proxy: CuttableProxy;
let svc: TestService;

/** Text that must never appear in an answer: driver and server messages, SQL, stack frames. */
const LEAKS = /ECONNREFUSED|ECONNRESET|terminated|timeout exceeded|select |insert |update |\bfrom\b.*\bwhere\b|at .*\.(js|ts):\d+|postgres|canceling statement|127\.0\.0\.1:\d+/i;

beforeAll(async () => {
  db = await createTestDatabase();
  const u = new URL(db.url);
  proxy = new CuttableProxy({ host: u.hostname, port: Number(u.port || 5432) });
  await proxy.up();
  u.host = `127.0.0.1:${proxy.port}`;
  svc = await startTestService({
    db: { ...db, url: u.toString() },
    background: false,
    env: { DB_POOL_SIZE: '1', DB_CONNECT_TIMEOUT_MS: '500', DB_STATEMENT_TIMEOUT_MS: '1500', CALLBACK_LOOKUP_TIMEOUT_MS: '100' },
  });
});
afterAll(async () => {
  await svc?.stop();
  await proxy?.down();
  await db?.drop();
});

function expectUnavailable(res: { status: number; headers: Record<string, unknown>; data: unknown; text?: string }): void {
  expectProblem(res, 503);
  expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
  expect(JSON.stringify(res.data)).not.toMatch(LEAKS);
}

test('every route that needs the database answers 503 with Retry-After while it is unreachable, then recovers', async () => {
  const existing = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('before'), payload: { simulate: NO_CALLBACK } });
  await eventually(async () => (svc.runtime.dispatcher.activeCount === 0 ? true : undefined), 'the dispatch to finish');
  await proxy.down();

  expectUnavailable(await svc.api.post('/v1/tasks', { partner: 'sim', requestNo: uniqueRequestNo('down'), payload: {} }));
  expectUnavailable(await svc.api.get(`/v1/tasks/${existing.id}`));
  expectUnavailable(await svc.api.get(`/v1/tasks/${existing.id}?waitSeconds=1`));
  expectUnavailable(await svc.api.get(`/v1/tasks/${existing.id}/events`));
  expectUnavailable(await svc.api.get('/v1/tasks'));
  expectUnavailable(await svc.api.post(`/v1/tasks/${existing.id}/reconcile`));
  expectUnavailable(await svc.api.get(`/v1/partners/sim/tasks/${existing.requestNo}`));
  expectUnavailable(await postCallback(svc.url, 'sim', signCallback(report(newRequestNo('down'), 'succeeded'), { secret: TEST_SECRET })));
  const ready = await eventually(async () => {
    const r = await rawRequest(`${svc.url}/readyz`, {});
    return r.status === 503 ? r : undefined;
  }, '/readyz to say 503');
  expectUnavailable(ready);
  // Routes that do not need the database still answer.
  expect((await svc.api.get('/healthz')).status).toBe(200);
  expect((await svc.api.get('/v1/partners')).status).toBe(200);

  await proxy.up();
  await eventually(async () => ((await svc.api.get('/readyz')).status === 200 ? true : undefined), '/readyz to recover');
  expect((await svc.api.post('/v1/tasks', { partner: 'sim', requestNo: uniqueRequestNo('after'), payload: { simulate: NO_CALLBACK } })).status).toBe(201);
});

test('a statement stuck on a lock and a request waiting for a pool connection are both bounded: 503, not a hang', async () => {
  const task = await createTask(svc.api, { partner: 'sim', requestNo: uniqueRequestNo('locked'), payload: { simulate: NO_CALLBACK } });
  await eventually(async () => (svc.runtime.dispatcher.activeCount === 0 ? true : undefined), 'the dispatch to finish');
  const locker = new Client({ connectionString: db.url });
  await locker.connect();
  try {
    await locker.query('begin');
    await locker.query('select id from tasks where id = $1 for update', [task.id]);
    // The reconcile request holds the pool's only connection while its update waits on the lock ...
    const stuck = svc.api.post(`/v1/tasks/${task.id}/reconcile`);
    await eventually(async () => (svc.runtime.database.pool.totalCount === 1 && svc.runtime.database.pool.idleCount === 0 ? true : undefined), 'the reconcile to hold the connection', 5000, 5);
    // ... so this one waits for a connection, and is refused at the pool's wait limit.
    expectUnavailable(await svc.api.get(`/v1/tasks/${task.id}`));
    // The stuck statement is cut by statement_timeout.
    expectUnavailable(await stuck);
  } finally {
    await locker.query('rollback').catch(() => undefined);
    await locker.end();
  }
  expect((await svc.api.get(`/v1/tasks/${task.id}`)).status).toBe(200);
});
