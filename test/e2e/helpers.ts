import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AxiosInstance, AxiosResponse } from 'axios';
import { sql } from 'kysely';
import type { ApiTask } from '../../src/tasks/task-schemas';
import type { TestDatabase } from '../support/database';
import { eventually, type TestService } from '../support/service';

/** The fields SERVICE.md lists for a Task, no more and no less. */
export const TASK_FIELDS = [
  'checkAttempts',
  'completedAt',
  'createdAt',
  'dispatchAttempts',
  'dispatchedAt',
  'error',
  'id',
  'kind',
  'metadata',
  'nextCheckAt',
  'notifyUrl',
  'partner',
  'payload',
  'requestNo',
  'result',
  'settledBy',
  'status',
  'updatedAt',
] as const;

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const ISO_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/** `payload.simulate` that keeps the simulator from calling back, so the asserted outcome is the dispatch's own. */
export const NO_CALLBACK = { callback: { mode: 'never' } } as const;

let seq = 0;
/** A requestNo unique within the run (and valid under the requestNo pattern). */
export function uniqueRequestNo(prefix = 'req'): string {
  seq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${seq}`;
}

export interface RowCounts {
  tasks: number;
  events: number;
}

/** Counts every row in `tasks` and `task_events` through the test's own connection. */
export async function countRows(db: TestDatabase): Promise<RowCounts> {
  const { rows } = await sql<{ tasks: number; events: number }>`
    select (select count(*) from tasks)::int as tasks, (select count(*) from task_events)::int as events`.execute(db.handle.db);
  return rows[0]!;
}

/** Asserts an RFC 9457 problem answer with the given status. */
export function expectProblem(res: { status: number; headers: Record<string, unknown>; data: unknown }, status: number): Record<string, unknown> {
  expect(res.status).toBe(status);
  expect(String(res.headers['content-type'])).toMatch(/^application\/problem\+json/);
  const body = res.data as Record<string, unknown>;
  expect(body).toEqual(
    expect.objectContaining({
      type: expect.any(String),
      title: expect.any(String),
      status,
      detail: expect.any(String),
    }),
  );
  expect((body.type as string).length).toBeGreaterThan(0);
  expect((body.title as string).length).toBeGreaterThan(0);
  expect((body.detail as string).length).toBeGreaterThan(0);
  return body;
}

/** The field names of a validation problem's `errors`. */
export function errorFields(body: Record<string, unknown>): string[] {
  const errors = body.errors as { field: string; message: string }[] | undefined;
  expect(Array.isArray(errors)).toBe(true);
  for (const e of errors!) {
    expect(typeof e.field).toBe('string');
    expect(typeof e.message).toBe('string');
  }
  return errors!.map((e) => e.field);
}

/** Checks a Task answer has exactly the contract's fields with the right types. */
export function expectTaskShape(task: unknown): asserts task is ApiTask {
  const t = task as Record<string, unknown>;
  expect(Object.keys(t).sort()).toEqual([...TASK_FIELDS].sort());
  expect(t.id).toMatch(UUID_RE);
  expect(typeof t.partner).toBe('string');
  expect(typeof t.requestNo).toBe('string');
  expect(typeof t.status).toBe('string');
  expect(typeof t.dispatchAttempts).toBe('number');
  expect(typeof t.checkAttempts).toBe('number');
  expect(t.createdAt).toMatch(ISO_UTC_RE);
  expect(t.updatedAt).toMatch(ISO_UTC_RE);
  for (const k of ['nextCheckAt', 'dispatchedAt', 'completedAt'] as const) {
    if (t[k] !== null) expect(t[k]).toMatch(ISO_UTC_RE);
  }
}

/** Creates a task and expects a 201. */
export async function createTask(api: AxiosInstance, body: Record<string, unknown>): Promise<ApiTask> {
  const res = await api.post('/v1/tasks', body);
  if (res.status !== 201) throw new Error(`create answered ${res.status}: ${JSON.stringify(res.data)}`);
  return res.data as ApiTask;
}

/** Waits until the first dispatch of a task has been recorded (an attempt counted, or the task settled) and returns it. */
export async function waitForFirstDispatch(api: AxiosInstance, id: string, timeoutMs = 10_000): Promise<ApiTask> {
  return eventually(
    async () => {
      const res = await api.get(`/v1/tasks/${id}`);
      const t = res.data as ApiTask;
      return res.status === 200 && t.dispatchAttempts >= 1 ? t : undefined;
    },
    `the first dispatch of task ${id} to be recorded`,
    timeoutMs,
  );
}

/** Waits until the service has no dispatch queued or in flight, so row counts stay still. */
export async function quiesce(svc: TestService): Promise<void> {
  await eventually(
    async () => {
      await new Promise((r) => setImmediate(r));
      if (svc.runtime.dispatcher.activeCount !== 0) return undefined;
      await new Promise((r) => setTimeout(r, 20));
      return svc.runtime.dispatcher.activeCount === 0 ? true : undefined;
    },
    'the dispatcher to go idle',
  );
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  data: unknown;
}

/** A request with full control over the headers (no content-type added behind our back). */
export function rawRequest(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer }): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const body = opts.body === undefined ? undefined : Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(opts.body);
    const headers: Record<string, string> = { ...opts.headers };
    if (body) headers['content-length'] = String(body.length);
    const req = http.request(url, { method: opts.method ?? 'GET', headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let data: unknown = text;
        try {
          data = JSON.parse(text);
        } catch {
          // not JSON; keep the text
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, data });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** One sample of a Prometheus text exposition. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text format samples (comments skipped). */
export function parseMetrics(text: string): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`unparseable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    const labelText = m[3] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let lm = re.exec(labelText); lm; lm = re.exec(labelText)) labels[lm[1]!] = lm[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return samples;
}

/** The value of the sample with `name` whose labels include `labels`; 0 when there is none (a counter not yet touched). */
export function metricValue(samples: MetricSample[], name: string, labels: Record<string, string>): number {
  const matching = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (matching.length > 1) throw new Error(`${matching.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return matching[0]?.value ?? 0;
}

export async function scrapeMetrics(api: AxiosInstance): Promise<{ text: string; samples: MetricSample[]; res: AxiosResponse }> {
  const res = await api.get('/metrics', { responseType: 'text', transformResponse: (d: unknown) => d });
  expect(res.status).toBe(200);
  const text = String(res.data);
  return { text, samples: parseMetrics(text), res };
}

/** A tiny HTTP server playing a partner in a test. */
export interface TestPartnerServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startPartnerServer(handler: http.RequestListener): Promise<TestPartnerServer> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Reads a whole request body as text. */
export function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
