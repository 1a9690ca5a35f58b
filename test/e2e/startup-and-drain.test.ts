import { spawn } from 'node:child_process';
import path from 'node:path';
import axios from 'axios';
import pino from 'pino';
import { loadConfig } from '../../src/config/config';
import { DatabaseStartupTimeout } from '../../src/db/wait-for-database';
import { freePort } from '../../src/db/embedded-postgres';
import { startRuntime, type Runtime } from '../../src/runtime';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_SECRET, writePartnersFile } from '../support/service';
import { reserveTcpProxy, type TcpProxy } from '../support/tcp-proxy';
import { expectProblem } from './helpers';

/**
 * Start-up waits for the database (readiness 503, API 503 + Retry-After meanwhile) instead of exiting;
 * SIGTERM keeps serving with /readyz at 503 for the readiness delay before the listener closes.
 */

const ROOT = path.resolve(__dirname, '../..');
let db: TestDatabase;
let simulator: Simulator;
const proxies: TcpProxy[] = [];
const runtimes: Runtime[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET] });
});
afterAll(async () => {
  for (const r of runtimes) await r.stop({ readinessDelayMs: 0 });
  for (const p of proxies) await p.close();
  await simulator?.close();
  await db?.drop();
});

function partnersFile(): string {
  return writePartnersFile([
    {
      id: 'sim',
      baseUrl: simulator.url,
      dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 3 },
      status: { path: '/requests/{requestNo}', timeoutMs: 1000 },
      callback: { secret: TEST_SECRET, verify: 'signature' },
    },
  ]);
}

/** The test database's URL, reached through `port` instead. */
function urlThrough(port: number): string {
  const u = new URL(db.url);
  u.hostname = '127.0.0.1';
  u.port = String(port);
  return u.toString();
}

const get = (url: string, headers: Record<string, string> = {}) => axios.get(url, { headers, validateStatus: () => true });

test('start-up waits for a database that is not there yet: readiness 503, the API 503 with Retry-After, then ready', async () => {
  const proxy = await reserveTcpProxy();
  proxies.push(proxy);
  const port = await freePort();
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: String(port),
    API_KEYS: TEST_API_KEY,
    PARTNERS_FILE: partnersFile(),
    DATABASE_URL: urlThrough(proxy.port),
    DB_STARTUP_TIMEOUT_MS: '120000',
    DB_CONNECT_TIMEOUT_MS: '1000',
    LOG_LEVEL: 'silent',
  });
  let listening: string | undefined;
  const starting = startRuntime({ config, logger: pino({ level: 'silent' }), onListening: (url) => (listening = url) });
  starting.then((r) => runtimes.push(r), () => undefined);
  const url = await eventually(async () => listening, 'the listener');

  const ready = await get(`${url}/readyz`);
  expect(expectProblem(ready, 503).detail).toMatch(/waiting for the database/);
  expect(ready.headers['retry-after']).toMatch(/^\d+$/);
  expect((await get(`${url}/healthz`)).status).toBe(200);
  const api = await get(`${url}/v1/tasks`, { authorization: `Bearer ${TEST_API_KEY}` });
  expectProblem(api, 503);
  expect(api.headers['retry-after']).toMatch(/^\d+$/);
  // Still waiting after a while: it did not give up and exit.
  await new Promise((r) => setTimeout(r, 1500));
  expect((await get(`${url}/readyz`)).status).toBe(503);

  const target = new URL(db.url);
  await proxy.open({ host: target.hostname, port: Number(target.port || 5432) });
  const runtime = await starting;
  expect((await get(`${url}/readyz`)).status).toBe(200);
  expect((await get(`${url}/v1/tasks`, { authorization: `Bearer ${TEST_API_KEY}` })).status).toBe(200);
  await runtime.stop({ readinessDelayMs: 0 });
});

test('start-up gives up after DB_STARTUP_TIMEOUT_MS and closes its listener', async () => {
  const proxy = await reserveTcpProxy(); // never opened: nothing listens there
  const port = await freePort();
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: String(port),
    API_KEYS: TEST_API_KEY,
    PARTNERS_FILE: partnersFile(),
    DATABASE_URL: urlThrough(proxy.port),
    DB_STARTUP_TIMEOUT_MS: '1000',
    LOG_LEVEL: 'silent',
  });
  await expect(startRuntime({ config, logger: pino({ level: 'silent' }) })).rejects.toBeInstanceOf(DatabaseStartupTimeout);
  const after = await axios.get(`http://127.0.0.1:${port}/healthz`).then(
    () => 'answered',
    (e: { code?: string }) => e.code,
  );
  expect(after).toBe('ECONNREFUSED');
});

test('on stop, /readyz answers 503 for the readiness delay while requests are still served, then the listener closes', async () => {
  const port = await freePort();
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: String(port),
    API_KEYS: TEST_API_KEY,
    PARTNERS_FILE: partnersFile(),
    DATABASE_URL: db.url,
    // Long enough for the two requests below even on a loaded machine.
    SHUTDOWN_READINESS_DELAY_MS: '8000',
    LOG_LEVEL: 'silent',
  });
  const runtime = await startRuntime({ config, logger: pino({ level: 'silent' }) });
  runtimes.push(runtime);
  const url = runtime.url;
  expect((await get(`${url}/readyz`)).status).toBe(200);
  let stoppedAt: number | undefined;
  const stopping = runtime.stop().then(() => (stoppedAt = Date.now()));
  const stopAskedAt = Date.now();
  // New connections are still accepted during the delay: readiness says no, the API still answers.
  const ready = await get(`${url}/readyz`);
  expect(expectProblem(ready, 503).detail).toMatch(/shutting down/);
  expect((await get(`${url}/v1/partners`, { authorization: `Bearer ${TEST_API_KEY}` })).status).toBe(200);
  expect(stoppedAt).toBeUndefined();
  await stopping;
  // The listener stayed open for the whole delay.
  expect(stoppedAt! - stopAskedAt).toBeGreaterThanOrEqual(7900);
  const after = await axios.get(`${url}/healthz`).then(
    () => 'answered',
    (e: { code?: string }) => e.code,
  );
  expect(after).toBe('ECONNREFUSED');
});

test('a SIGTERM while the process waits for its database exits 0 at once', async () => {
  const proxy = await reserveTcpProxy();
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      DATABASE_URL: urlThrough(proxy.port),
      PARTNERS_FILE: partnersFile(),
      PORT: String(port),
      HOST: '127.0.0.1',
      API_KEYS: TEST_API_KEY,
      LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await eventually(async () => out.includes('waiting for the database'), 'the service to wait for its database', 60_000, 100);
    expect((await get(`http://127.0.0.1:${port}/readyz`)).status).toBe(503);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toContain('stopping during start-up');
  } finally {
    await proxy.close();
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}, 120_000);
