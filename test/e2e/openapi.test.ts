import axios from 'axios';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { ajvFor, HTTP_METHODS, inlineSchemas, redoclyLint, swaggerParserCheck, type OpenApiDoc } from '../support/openapi';
import { startTestService, type TestService } from '../support/service';

/**
 * The document at /openapi.json, fetched from a running service, passes the validators a platform team
 * would run: @redocly/cli lint (redocly.yaml: recommended-strict), swagger-parser validate + dereference,
 * and ajv in JSON Schema 2020-12 mode on every schema. It documents every express route, every operation
 * has an operationId, and every operation documents what any route can answer.
 */

let db: TestDatabase;
let svc: TestService;
let doc: OpenApiDoc;

beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db, env: { PUBLIC_BASE_URL: 'https://reconciler.example.org' } });
  const res = await axios.get(`${svc.url}/openapi.json`);
  expect(res.status).toBe(200);
  doc = res.data as OpenApiDoc;
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

const operations = () =>
  Object.entries(doc.paths).flatMap(([path, item]) =>
    HTTP_METHODS.filter((m) => item[m] !== undefined).map((method) => ({ path, method, op: item[method] as Record<string, unknown> })),
  );

test('@redocly/cli lint (recommended-strict) finds nothing', async () => {
  const report = await redoclyLint(doc);
  expect(report.problems.map((p) => `${p.severity} ${p.ruleId}: ${p.message}`)).toEqual([]);
  expect(report.totals).toMatchObject({ errors: 0, warnings: 0 });
}, 60_000);

test('swagger-parser validates and dereferences it', async () => {
  // Nothing is left pointing elsewhere once dereferenced.
  expect(await swaggerParserCheck(doc)).toEqual({ validated: true, dereferencedRefsLeft: 0 });
}, 60_000);

test('ajv (JSON Schema 2020-12, strict, formats) compiles every component and every inline schema', () => {
  const { ajv, compile } = ajvFor(doc);
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    expect({ name, valid: ajv.validateSchema(schema), errors: ajv.errors ?? null }).toEqual({ name, valid: true, errors: null });
    expect(() => ajv.getSchema(`urn:cr:schema:${name}`)).not.toThrow();
  }
  const inline = inlineSchemas(doc);
  expect(inline.length).toBeGreaterThan(20);
  for (const { where, schema } of inline) expect({ where, compiles: (() => { compile(schema); return true; })() }).toEqual({ where, compiles: true });
  // No zod leftovers that other tools reject: fragment $id, a `__shared` bucket, empty alternatives.
  const text = JSON.stringify(doc.components);
  expect(text).not.toContain('"$id"');
  expect(text).not.toContain('__shared');
  expect(text).not.toMatch(/"anyOf":\[\{\}/);
});

test('servers names PUBLIC_BASE_URL; every operation has a unique operationId, a summary and tags', () => {
  expect(doc.servers).toEqual([expect.objectContaining({ url: 'https://reconciler.example.org' })]);
  const ids = operations().map(({ op }) => op.operationId);
  for (const id of ids) expect(typeof id).toBe('string');
  expect(new Set(ids).size).toBe(ids.length);
  for (const { op } of operations()) {
    expect(typeof op.summary).toBe('string');
    expect(Array.isArray(op.tags)).toBe(true);
  }
});

test('every operation documents X-Request-Id on every answer and 500; keyed ones 401; database ones 503 with Retry-After', () => {
  for (const { path, method, op } of operations()) {
    const responses = op.responses as Record<string, { headers?: Record<string, unknown>; content?: Record<string, unknown> }>;
    for (const [status, r] of Object.entries(responses)) {
      expect({ path, method, status, requestId: r.headers?.['X-Request-Id'] !== undefined }).toEqual({ path, method, status, requestId: true });
    }
    expect({ path, method, has500: '500' in responses }).toEqual({ path, method, has500: true });
    const keyed = !(Array.isArray(op.security) && op.security.length === 0);
    if (keyed) expect({ path, method, has401: '401' in responses }).toEqual({ path, method, has401: true });
    if (path.startsWith('/v1/')) {
      expect({ path, method, retryAfter: responses['503']?.headers?.['Retry-After'] !== undefined }).toEqual({ path, method, retryAfter: true });
    }
    for (const [status, r] of Object.entries(responses)) {
      if (Number(status) >= 400) expect({ path, method, status, problem: Object.keys(r.content ?? {}) }).toEqual({ path, method, status, problem: ['application/problem+json'] });
    }
  }
  const create = doc.paths['/v1/tasks']!.post as { responses: Record<string, { headers: Record<string, unknown> }> };
  expect(Object.keys(create.responses).sort()).toEqual(['200', '201', '400', '401', '409', '413', '415', '422', '500', '503']);
  expect(create.responses['200']!.headers['Idempotent-Replayed']).toBeDefined();
  expect(create.responses['201']!.headers.Location).toBeDefined();
  const list = doc.paths['/v1/tasks']!.get as { responses: Record<string, unknown> };
  expect(list.responses['422']).toBeDefined();
});

/** Every route express serves, as `METHOD /openapi/{template}`, found by walking the app's router stack. */
function expressRoutes(app: { router: unknown }): string[] {
  const found: string[] = [];
  const walk = (stack: unknown[]) => {
    for (const layer of stack as { route?: { path: string; methods: Record<string, boolean> }; handle?: { stack?: unknown[] } }[]) {
      if (layer.route) {
        for (const [m, on] of Object.entries(layer.route.methods)) {
          if (on && m !== '_all') found.push(`${m.toUpperCase()} ${layer.route.path.replace(/:([A-Za-z0-9_]+)/g, '{$1}')}`);
        }
      } else if (layer.handle?.stack) {
        walk(layer.handle.stack);
      }
    }
  };
  walk((app.router as { stack: unknown[] }).stack);
  return found;
}

test('every route the service serves is in the document, and nothing else', () => {
  const served = expressRoutes(svc.runtime.app as never).sort();
  const documented = operations().map(({ path, method }) => `${method.toUpperCase()} ${path}`).sort();
  expect(served.length).toBeGreaterThan(10);
  expect(documented).toEqual(served);
});
