import net from 'node:net';
import { sql } from 'kysely';
import { openDatabase, type DatabaseHandle } from '../../src/db/database';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * A connection reset in the middle of a query (a network blip, a proxy or a failover cutting sockets)
 * must fail that query, not the process. pg emits 'error' on a client whose socket breaks; pg-pool
 * listens only while the client is idle, and Kysely adds no listener while it is lent out, so the event
 * was an uncaught exception that ended the service (seen in CI as "write ECONNRESET" out of the call
 * log's insert while database-unavailable cut its proxy).
 */

let db: TestDatabase;
let handle: DatabaseHandle | undefined;
const sockets = new Set<net.Socket>();
let proxy: net.Server;

beforeAll(async () => {
  db = await createTestDatabase();
  const target = new URL(db.url);
  proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  await handle?.close();
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => proxy.close(() => resolve()));
  await db?.drop();
});

test('a query whose connection is reset is rejected, and the process lives on', async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  // Jest turns an uncaught exception into a failure of this test; counting them here says what happened.
  process.prependListener('uncaughtException', onUncaught);
  try {
    const url = new URL(db.url);
    url.host = `127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    handle = openDatabase({ url: url.toString(), poolSize: 1, connectTimeoutMs: 2000 });
    await sql`select 1`.execute(handle.db);
    const slow = sql`select pg_sleep(5)`.execute(handle.db);
    const outcome = slow.then(() => 'answered', (err: Error) => err.message);
    await new Promise((r) => setTimeout(r, 300));
    for (const s of sockets) s.resetAndDestroy();
    expect(await outcome).toMatch(/ECONNRESET|Connection terminated|terminated unexpectedly/);
    await new Promise((r) => setTimeout(r, 200));
    expect(uncaught).toEqual([]);
    // The pool replaces the broken client: the next query works.
    expect((await sql<{ n: number }>`select 1 as n`.execute(handle.db)).rows).toEqual([{ n: 1 }]);
  } finally {
    process.removeListener('uncaughtException', onUncaught);
  }
});
