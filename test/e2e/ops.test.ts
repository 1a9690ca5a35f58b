import http from 'node:http';
import axios from 'axios';
import { sql } from 'kysely';
import { REQUEST_NO_PATTERN } from '../../src/tasks/task-schemas';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, type TestService } from '../support/service';
import { createTask, expectProblem, NO_CALLBACK, parseMetrics, sleep, waitForFirstDispatch } from './helpers';

/** Ops endpoints: health, readiness (database, migrations, draining), metrics and the OpenAPI document. */

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

/** Ops endpoints need no key. */
const noKey = (path: string) => axios.get(`${svc.url}${path}`, { validateStatus: () => true });

test('/healthz answers 200 without a key', async () => {
  const res = await noKey('/healthz');
  expect(res.status).toBe(200);
  expect(res.data).toEqual({ status: 'ok' });
});

test('/readyz answers 200 without a key when the database answers and migrations are current', async () => {
  const res = await noKey('/readyz');
  expect(res.status).toBe(200);
  expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
});

describe('/metrics', () => {
  test('is Prometheus text with every metric of the contract, of the right type', async () => {
    // Touch the task metrics once so the labelled series exist.
    const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
    await waitForFirstDispatch(svc.api, t.id);
    const res = await axios.get(`${svc.url}/metrics`, { responseType: 'text', transformResponse: (d: unknown) => d, validateStatus: () => true });
    expect(res.status).toBe(200);
    expect(String(res.headers['content-type'])).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = String(res.data);
    const types = new Map<string, string>();
    for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1]!, m[2]!);
    const P = 'callback_reconciler_';
    expect(Object.fromEntries([
      'tasks_created_total',
      'task_transitions_total',
      'dispatch_duration_seconds',
      'partner_errors_total',
      'callbacks_total',
      'callback_lookup_wait_seconds',
      'reconciler_checks_total',
      'reconciler_sweep_duration_seconds',
      'tasks_open',
      'oldest_open_task_age_seconds',
      'settlement_conflicts_total',
    ].map((n) => [n, types.get(P + n)]))).toEqual({
      tasks_created_total: 'counter',
      task_transitions_total: 'counter',
      dispatch_duration_seconds: 'histogram',
      partner_errors_total: 'counter',
      callbacks_total: 'counter',
      callback_lookup_wait_seconds: 'histogram',
      reconciler_checks_total: 'counter',
      reconciler_sweep_duration_seconds: 'histogram',
      tasks_open: 'gauge',
      oldest_open_task_age_seconds: 'gauge',
      settlement_conflicts_total: 'counter',
    });
    // Every line parses as Prometheus text, and the samples carry the contract's labels.
    const samples = parseMetrics(text);
    const created = samples.find((s) => s.name === `${P}tasks_created_total`);
    expect(created).toEqual({ name: `${P}tasks_created_total`, labels: { partner: 'sim' }, value: 1 });
    const transition = samples.find((s) => s.name === `${P}task_transitions_total`);
    expect(Object.keys(transition!.labels).sort()).toEqual(['from', 'partner', 'source', 'to']);
    const bucket = samples.find((s) => s.name === `${P}dispatch_duration_seconds_bucket`);
    expect(Object.keys(bucket!.labels).sort()).toEqual(['le', 'outcome', 'partner']);
    // The product's metrics carry its prefix; process and Node.js metrics keep their standard names (stock
    // dashboards find them), and so do the HTTP metrics.
    for (const name of types.keys()) {
      const standard = /^(process_|nodejs_|http_request)/.test(name);
      expect({ name, prefixed: name.startsWith(P) }).toEqual({ name, prefixed: !standard });
    }
    expect(types.get('process_cpu_seconds_total')).toBe('counter');
    expect(types.get('nodejs_heap_size_used_bytes')).toBe('gauge');
  });
});

describe('/openapi.json', () => {
  test('is an OpenAPI 3.1.0 document with the paths and schemas of the contract', async () => {
    const res = await noKey('/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.data as {
      openapi: string;
      paths: Record<string, Record<string, unknown>>;
      components: { schemas: Record<string, { required?: string[]; properties?: Record<string, { pattern?: string }> }> };
    };
    expect(doc.openapi).toBe('3.1.0');
    const ops: [string, string][] = [
      ['/v1/tasks', 'post'],
      ['/v1/tasks', 'get'],
      ['/v1/tasks/{id}', 'get'],
      ['/v1/partners/{partner}/tasks/{requestNo}', 'get'],
      ['/v1/tasks/{id}/events', 'get'],
      ['/v1/tasks/{id}/reconcile', 'post'],
      ['/v1/partners', 'get'],
      ['/healthz', 'get'],
      ['/readyz', 'get'],
      ['/metrics', 'get'],
      ['/v1/callbacks/{partner}', 'post'],
    ];
    for (const [path, method] of ops) expect({ path, method, present: doc.paths[path]?.[method] !== undefined }).toEqual({ path, method, present: true });
    const post = doc.paths['/v1/tasks']!.post as { responses: Record<string, unknown> };
    expect(Object.keys(post.responses).sort()).toEqual(expect.arrayContaining(['200', '201', '400', '401', '409', '413', '415', '422']));

    const { schemas } = doc.components;
    expect(schemas.CreateTask?.required).toEqual(expect.arrayContaining(['partner', 'payload']));
    expect(schemas.CreateTask?.required).not.toContain('requestNo');
    expect(schemas.CreateTask?.properties?.requestNo?.pattern).toBe(REQUEST_NO_PATTERN.source);
    expect(new RegExp(schemas.CreateTask!.properties!.requestNo!.pattern!).test('a b')).toBe(false);
    expect(Object.keys(schemas.Task?.properties ?? {}).sort()).toEqual(
      ['id', 'partner', 'requestNo', 'kind', 'status', 'payload', 'result', 'error', 'notifyUrl', 'metadata', 'dispatchAttempts', 'checkAttempts', 'settledBy', 'nextCheckAt', 'createdAt', 'updatedAt', 'dispatchedAt', 'completedAt'].sort(),
    );
    expect(Object.keys(schemas.Problem?.properties ?? {})).toEqual(expect.arrayContaining(['type', 'title', 'status', 'detail', 'errors']));
  });
});

describe('/readyz refuses when it should', () => {
  test('503 problem when the migrations are not current', async () => {
    const otherDb = await createTestDatabase();
    const other = await startTestService({ db: otherDb });
    try {
      expect((await axios.get(`${other.url}/readyz`, { validateStatus: () => true })).status).toBe(200);
      await sql`delete from kysely_migration`.execute(otherDb.handle.db);
      // Readiness is cached for about a second; it turns within a few.
      const res = await eventually(
        async () => {
          const r = await axios.get(`${other.url}/readyz`, { validateStatus: () => true });
          return r.status === 503 ? r : undefined;
        },
        '/readyz to notice the missing migrations',
        5_000,
        100,
      );
      const body = expectProblem(res, 503);
      expect(String(body.detail)).toMatch(/migration/i);
      // Liveness is not readiness: the process is still up.
      expect((await axios.get(`${other.url}/healthz`, { validateStatus: () => true })).status).toBe(200);
    } finally {
      await other.stop();
      await otherDb.drop();
    }
  });

  test('once a drain has begun: the request in flight completes and closes its connection, new connections are refused, /readyz answers 503', async () => {
    const otherDb = await createTestDatabase();
    const other = await startTestService({ db: otherDb });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const t = await createTask(other.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
      await waitForFirstDispatch(other.api, t.id);
      const longPoll = axios.get(`${other.url}/v1/tasks/${t.id}?waitSeconds=1`, {
        httpAgent: agent,
        headers: { authorization: other.api.defaults.headers.authorization as string },
        validateStatus: () => true,
      });
      await sleep(300);
      const stopping = other.runtime.stop();
      // The same app, reached through a server of the test's own: the draining service says it is not ready.
      const side = http.createServer(other.runtime.app);
      await new Promise<void>((resolve) => side.listen(0, '127.0.0.1', resolve));
      const sidePort = (side.address() as { port: number }).port;
      const ready = await axios.get(`http://127.0.0.1:${sidePort}/readyz`, { validateStatus: () => true });
      await new Promise<void>((resolve) => side.close(() => resolve()));
      expectProblem(ready, 503);

      const polled = await longPoll;
      expect(polled.status).toBe(200);
      expect(polled.data).toMatchObject({ id: t.id, status: 'dispatched' });
      // Answered during the drain: the client is told not to reuse the connection.
      expect(polled.headers.connection).toBe('close');
      const refused = await axios.get(`${other.url}/healthz`).then(
        () => 'answered',
        (e: { code?: string }) => e.code,
      );
      expect(refused).toBe('ECONNREFUSED');
      await stopping;
    } finally {
      agent.destroy();
      await other.stop();
      await otherDb.drop();
    }
  });

  test('a drain finishes once the requests in flight are answered, even while their client keeps the connection alive', async () => {
    const otherDb = await createTestDatabase();
    // A shutdown timeout far beyond the test: only a drain that closes the idle connection itself can finish.
    const other = await startTestService({ db: otherDb, env: { SHUTDOWN_TIMEOUT_MS: '600000' } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const t = await createTask(other.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
      await waitForFirstDispatch(other.api, t.id);
      const longPoll = axios.get(`${other.url}/v1/tasks/${t.id}?waitSeconds=1`, {
        httpAgent: agent,
        headers: { authorization: other.api.defaults.headers.authorization as string },
        validateStatus: () => true,
      });
      await sleep(300);
      const stopping = other.runtime.stop().then(() => 'stopped' as const);
      const polled = await longPoll;
      expect(polled.status).toBe(200);
      expect(polled.data).toMatchObject({ id: t.id, status: 'dispatched' });
      // The answered request leaves an idle kept-alive socket behind; the client does not close it.
      const outcome = await Promise.race([stopping, sleep(5_000).then(() => 'still draining' as const)]);
      expect(outcome).toBe('stopped');
    } finally {
      agent.destroy();
      await other.stop();
      await otherDb.drop();
    }
  });
});
