import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import axios from 'axios';
import { freePort } from '../../src/db/embedded-postgres';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_SECRET, writePartnersFile } from '../support/service';
import { sleep } from './helpers';

/** The real process: `node --import tsx src/main.ts`, started, used, and stopped with SIGTERM. */

const ROOT = path.resolve(__dirname, '../..');

interface Spawned {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function spawnService(env: Record<string, string>): Spawned {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

let db: TestDatabase;
let simulator: Simulator;
const started: ChildProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  simulator = await startSimulator({ secrets: [TEST_SECRET] });
});
afterAll(async () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await simulator?.close();
  await db?.drop();
});

test('SIGTERM drains: new connections refused, the request in flight answered, JSON logs, exit 0', async () => {
  const port = await freePort();
  const partnersFile = writePartnersFile([
    {
      id: 'sim',
      baseUrl: simulator.url,
      dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 3 },
      status: { path: '/requests/{requestNo}', timeoutMs: 1000 },
      callback: { secret: TEST_SECRET, verify: 'signature' },
    },
  ]);
  const svc = spawnService({
    DATABASE_URL: db.url,
    PARTNERS_FILE: partnersFile,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    API_KEYS: TEST_API_KEY,
    // This test is about the drain itself; the readiness delay before it is tested in startup-and-drain.test.ts.
    SHUTDOWN_READINESS_DELAY_MS: '0',
  });
  started.push(svc.child);
  const url = `http://127.0.0.1:${port}`;
  // No keep-alive: this test is about the drain, not about idle connections.
  const agent = new http.Agent({ keepAlive: false });
  const api = axios.create({ baseURL: url, httpAgent: agent, headers: { authorization: `Bearer ${TEST_API_KEY}` }, validateStatus: () => true });

  await eventually(
    async () => {
      if (svc.child.exitCode !== null) throw new Error(`service exited early (${svc.child.exitCode}): ${svc.stderr()}${svc.stdout()}`);
      const r = await api.get('/readyz').catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    },
    'the spawned service to be ready',
    30_000,
    100,
  );

  const created = await api.post('/v1/tasks', { partner: 'sim', payload: { simulate: { callback: { mode: 'never' } } } });
  expect(created.status).toBe(201);
  const id = created.data.id as string;
  await eventually(async () => ((await api.get(`/v1/tasks/${id}`)).data.dispatchAttempts >= 1 ? true : undefined), 'the dispatch');

  const inFlight = api.get(`/v1/tasks/${id}?waitSeconds=4`);
  // Give the held request time to reach the server even on a loaded machine before the signal.
  await sleep(1500);
  expect(svc.child.kill('SIGTERM')).toBe(true);

  // Stops accepting: a new connection is refused while the long-poll is still being held.
  const refused = await eventually(
    async () => {
      const r = await api.get('/healthz').then(
        () => undefined,
        (e: { code?: string }) => e.code,
      );
      return r === 'ECONNREFUSED' || r === 'ECONNRESET' ? r : undefined;
    },
    'new connections to be refused',
    5_000,
  );
  expect(refused).toBeDefined();

  const answer = await inFlight;
  expect(answer.status).toBe(200);
  expect(answer.data).toMatchObject({ id, status: 'dispatched' });

  const exit = await svc.exited;
  agent.destroy();
  expect(exit).toEqual({ code: 0, signal: null });

  const lines = svc.stdout().split('\n').filter((l) => l.trim() !== '');
  const logs = lines.map((l) => JSON.parse(l) as { msg?: string; level?: number; req?: { url?: string }; res?: { statusCode?: number } });
  const msgs = logs.map((l) => l.msg);
  expect(msgs).toContain('draining');
  expect(msgs).toContain('stopped');
  const drainingAt = msgs.indexOf('draining');
  const stoppedAt = msgs.lastIndexOf('stopped');
  expect(drainingAt).toBeLessThan(stoppedAt);
  // The held request was answered (and logged) during the drain, before the process said it stopped.
  const pollLog = logs.findIndex((l) => l.req?.url?.includes('waitSeconds=4') && l.res?.statusCode === 200);
  expect(pollLog).toBeGreaterThan(drainingAt);
  expect(pollLog).toBeLessThan(stoppedAt);
  // The partner's configured secret never reached the logs.
  expect(svc.stdout()).not.toContain(TEST_SECRET);
  expect(svc.stdout()).not.toContain(TEST_API_KEY);
});

test('a bad configuration stops the process at start with a non-zero exit naming the culprit', async () => {
  const badPartners = writePartnersFile([{ id: 'sim', baseUrl: 'not-a-url', callback: { verify: 'poll' } }]);
  const goodPartners = writePartnersFile([{ id: 'sim', baseUrl: simulator.url, callback: { verify: 'poll' } }]);
  const badPort = spawnService({ DATABASE_URL: db.url, PARTNERS_FILE: goodPartners, PORT: 'abc', HOST: '127.0.0.1', LOG_LEVEL: 'info' });
  const badFile = spawnService({ DATABASE_URL: db.url, PARTNERS_FILE: badPartners, PORT: String(await freePort()), HOST: '127.0.0.1', LOG_LEVEL: 'info' });
  started.push(badPort.child, badFile.child);

  const [portExit, fileExit] = await Promise.all([badPort.exited, badFile.exited]);
  expect(portExit.code).not.toBe(0);
  expect(portExit.code).not.toBeNull();
  expect(badPort.stderr()).toContain('PORT');
  expect(fileExit.code).not.toBe(0);
  expect(fileExit.code).not.toBeNull();
  expect(badFile.stderr()).toContain('baseUrl');
});
