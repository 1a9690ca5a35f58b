import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, type TestService } from '../support/service';
import { createTask, NO_CALLBACK, scrapeMetrics, waitForFirstDispatch } from './helpers';

/**
 * Metric conventions of a live /metrics: `promtool check metrics` (Debian's prometheus package) finds
 * nothing; process and Node.js metrics keep their standard unprefixed names; HTTP metrics are labelled by
 * route template, never by a raw path.
 */

const PROMTOOL = spawnSync('sh', ['-c', 'command -v promtool']).status === 0;
if (!PROMTOOL) {
  const message = '\n!!!!! promtool is not installed (apt-get install prometheus): `promtool check metrics` is SKIPPED !!!!!\n';
  if (process.env.CI) throw new Error(message);
  console.warn(message);
}

let db: TestDatabase;
let svc: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db });
  // Touch every kind of metric: a task dispatched, a read, a 404, an unmatched route.
  const t = await createTask(svc.api, { partner: 'sim', payload: { simulate: NO_CALLBACK } });
  await waitForFirstDispatch(svc.api, t.id);
  await svc.api.get(`/v1/tasks/${randomUUID()}`);
  await svc.api.get('/no/such/route');
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

(PROMTOOL ? test : test.skip)('promtool check metrics finds nothing on a live /metrics', async () => {
  const { text } = await scrapeMetrics(svc.api);
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  expect({ status: r.status, out: `${r.stdout}${r.stderr}` }).toEqual({ status: 0, out: '' });
});

test('process and Node.js metrics under their standard names; the _total gauges are gone', async () => {
  const { text } = await scrapeMetrics(svc.api);
  const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
  for (const [name, type] of [
    ['process_cpu_seconds_total', 'counter'],
    ['process_resident_memory_bytes', 'gauge'],
    ['process_start_time_seconds', 'gauge'],
    ['nodejs_eventloop_lag_seconds', 'gauge'],
    ['nodejs_heap_size_used_bytes', 'gauge'],
    ['nodejs_gc_duration_seconds', 'histogram'],
    ['nodejs_active_handles', 'gauge'],
  ] as const) {
    expect({ name, type: types.get(name) }).toEqual({ name, type });
  }
  for (const name of types.keys()) {
    expect(name).not.toMatch(/^callback_reconciler_(process|nodejs)_/);
    if (types.get(name) !== 'counter') expect(name).not.toMatch(/_total$/);
  }
  expect(types.get('callback_reconciler_db_pool_waiting')).toBe('gauge');
  expect(types.get('callback_reconciler_db_pool_connections')).toBe('gauge');
});

test('http_requests_total{method,route,status} and http_request_duration_seconds{method,route} use route templates', async () => {
  const { samples } = await scrapeMetrics(svc.api);
  const requests = samples.filter((s) => s.name === 'http_requests_total');
  for (const s of requests) expect(Object.keys(s.labels).sort()).toEqual(['method', 'route', 'status']);
  const durations = samples.filter((s) => s.name === 'http_request_duration_seconds_bucket');
  for (const s of durations) expect(Object.keys(s.labels).sort()).toEqual(['le', 'method', 'route']);
  const byRoute = (route: string, status: string, method = 'GET') => requests.find((s) => s.labels.route === route && s.labels.status === status && s.labels.method === method)?.value ?? 0;
  expect(byRoute('/v1/tasks', '201', 'POST')).toBe(1);
  expect(byRoute('/v1/tasks/{id}', '200')).toBeGreaterThanOrEqual(1);
  expect(byRoute('/v1/tasks/{id}', '404')).toBe(1);
  expect(byRoute('unmatched', '404')).toBeGreaterThanOrEqual(1);
  // No label value is an id or a raw path.
  for (const s of [...requests, ...durations]) expect(s.labels.route).toMatch(/^(unmatched|\/[a-z0-9/{}._-]*)$/i);
  for (const s of [...requests, ...durations]) expect(s.labels.route).not.toMatch(/[0-9a-f]{8}-[0-9a-f]{4}/);
});

test('property: whatever path a client requests, the route label is a template or "unmatched", never the path', async () => {
  const segment = fc.stringMatching(/^[A-Za-z0-9._~-]{1,24}$/);
  await fc.assert(
    fc.asyncProperty(fc.array(segment, { minLength: 1, maxLength: 4 }), fc.constantFrom('GET', 'POST', 'DELETE', 'PATCH'), async (segments, method) => {
      const path = `/${segments.map(encodeURIComponent).join('/')}`;
      await svc.api.request({ method, url: path, data: method === 'POST' ? {} : undefined });
      const { samples } = await scrapeMetrics(svc.api);
      const routes = new Set(samples.filter((s) => s.name === 'http_requests_total').map((s) => s.labels.route!));
      const documented = [...routes].every((r) => r === 'unmatched' || r.startsWith('/'));
      const leaked = segments.length > 1 && routes.has(path);
      return documented && !leaked;
    }),
    { numRuns: 25 },
  );
}, 60_000);
