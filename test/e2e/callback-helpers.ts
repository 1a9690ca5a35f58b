import { randomBytes, randomUUID } from 'node:crypto';
import axios, { type AxiosInstance, type AxiosResponse } from 'axios';
import { sql } from 'kysely';
import { Webhook } from 'standardwebhooks';
import type { ApiTask } from '../../src/tasks/task-schemas';
import type { TestDatabase } from '../support/database';
import { eventually, type TestService } from '../support/service';

/**
 * Helpers for the callback e2e tests. The test plays the partner: callbacks are signed with the reference
 * `standardwebhooks` package (never with the service's own code) and sent over real HTTP.
 */

/** `payload.simulate` that keeps the simulator from calling back: the test sends the callback itself. */
export const NEVER_CALLS_BACK = { simulate: { callback: { mode: 'never' } } } as const;

let seq = 0;
/** A requestNo unique within the run. */
export function newRequestNo(prefix = 'cb'): string {
  seq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${seq}`;
}

/** A fresh `webhook-id`. */
export function newWebhookId(): string {
  return `msg_${randomUUID().replace(/-/g, '')}`;
}

/** A valid Standard Webhooks secret nobody configured. */
export function randomSecret(): string {
  return `whsec_${randomBytes(24).toString('base64')}`;
}

export interface SignedCallback {
  body: string;
  headers: Record<string, string>;
}

export interface SignOptions {
  /** One secret or several (one `v1,` signature per secret, space-separated, as during a rotation). */
  secret: string | readonly string[];
  webhookId?: string;
  /** The signing time; it also goes into `webhook-timestamp`. */
  at?: Date;
}

/** Signs `body` (an object is serialised once; that exact text is signed and sent). */
export function signCallback(body: string | object, opts: SignOptions): SignedCallback {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const webhookId = opts.webhookId ?? newWebhookId();
  const at = opts.at ?? new Date();
  const secrets = typeof opts.secret === 'string' ? [opts.secret] : opts.secret;
  const signature = secrets.map((s) => new Webhook(s).sign(webhookId, at, text)).join(' ');
  return {
    body: text,
    headers: {
      'content-type': 'application/json',
      'webhook-id': webhookId,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': signature,
    },
  };
}

/** The body shape of the bundled partner protocol. */
export function report(requestNo: string, status: 'processing' | 'succeeded' | 'failed', extra: { result?: unknown; error?: unknown } = {}): object {
  return { requestNo, status, ...extra };
}

const callbackClient = axios.create({ validateStatus: () => true });

/**
 * The service answers every callback within CALLBACK_LOOKUP_TIMEOUT_MS (at most 3 s in these tests) plus
 * its own work; a callback still unanswered after this long is a hang, reported as such instead of
 * running into the test timeout.
 */
export const CALLBACK_ANSWER_LIMIT_MS = 15_000;

/** Posts a callback as is: the raw text goes on the wire untouched (no axios re-serialisation). */
export async function postCallback(baseUrl: string, partner: string, cb: SignedCallback): Promise<AxiosResponse> {
  try {
    return await callbackClient.post(`${baseUrl}/v1/callbacks/${partner}`, cb.body, {
      headers: cb.headers,
      transformRequest: [(d: unknown) => d],
      timeout: CALLBACK_ANSWER_LIMIT_MS,
    });
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'ECONNABORTED' || e.code === 'ETIMEDOUT') {
      throw new Error(`callback ${cb.headers['webhook-id']} to partner "${partner}" got no answer within ${CALLBACK_ANSWER_LIMIT_MS} ms (the lookup bound is at most 3 s): the service hangs`);
    }
    throw err;
  }
}

/** `status body.outcome` of a callback answer, e.g. `200 applied`, for compact assertions. */
export function answerOf(res: AxiosResponse): string {
  const outcome = (res.data as { outcome?: unknown } | undefined)?.outcome;
  return `${res.status} ${String(outcome)}`;
}

/** Creates a task and expects a 201. */
export async function createTask(api: AxiosInstance, body: Record<string, unknown>): Promise<ApiTask> {
  const res = await api.post('/v1/tasks', body);
  if (res.status !== 201) throw new Error(`create answered ${res.status}: ${JSON.stringify(res.data)}`);
  return res.data as ApiTask;
}

export async function getTask(api: AxiosInstance, id: string): Promise<ApiTask> {
  const res = await api.get(`/v1/tasks/${id}`);
  if (res.status !== 200) throw new Error(`GET task answered ${res.status}: ${JSON.stringify(res.data)}`);
  return res.data as ApiTask;
}

export interface ApiEvent {
  at: string;
  from: string | null;
  to: string;
  source: string;
  detail: Record<string, unknown> | null;
}

export async function getEvents(api: AxiosInstance, id: string): Promise<ApiEvent[]> {
  const res = await api.get(`/v1/tasks/${id}/events`);
  if (res.status !== 200) throw new Error(`GET events answered ${res.status}: ${JSON.stringify(res.data)}`);
  return (res.data as { items: ApiEvent[] }).items;
}

/** Waits until the task's first dispatch was recorded (so a dispatch outcome cannot move it under the test). */
export function waitForDispatchRecorded(api: AxiosInstance, id: string): Promise<ApiTask> {
  return eventually(
    async () => {
      const t = await getTask(api, id);
      return t.dispatchAttempts >= 1 ? t : undefined;
    },
    `the first dispatch of ${id} to be recorded`,
  );
}

/** Waits until the task has the given status. */
export function waitForStatus(api: AxiosInstance, id: string, status: string, timeoutMs = 10_000): Promise<ApiTask> {
  return eventually(
    async () => {
      const t = await getTask(api, id);
      return t.status === status ? t : undefined;
    },
    `task ${id} to become ${status}`,
    timeoutMs,
  );
}

export interface InboxRowView {
  id: string;
  partner: string;
  webhook_id: string;
  request_no: string | null;
  reported_status: string | null;
  raw_body: string;
  outcome: string;
  task_id: string | null;
}

export async function inboxCount(db: TestDatabase): Promise<number> {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from callback_inbox`.execute(db.handle.db);
  return rows[0]!.n;
}

export async function inboxRowsByWebhookId(db: TestDatabase, partner: string, webhookId: string): Promise<InboxRowView[]> {
  const { rows } = await sql<InboxRowView>`
    select id::text, partner, webhook_id, request_no, reported_status, raw_body, outcome, task_id::text
    from callback_inbox i where i.partner = ${partner} and i.webhook_id = ${webhookId} order by i.id`.execute(db.handle.db);
  return rows;
}

export async function inboxRowsByRequestNo(db: TestDatabase, partner: string, requestNo: string): Promise<InboxRowView[]> {
  const { rows } = await sql<InboxRowView>`
    select id::text, partner, webhook_id, request_no, reported_status, raw_body, outcome, task_id::text
    from callback_inbox i where i.partner = ${partner} and i.request_no = ${requestNo} order by i.id`.execute(db.handle.db);
  return rows;
}

/** Asserts an RFC 9457 problem answer with the given status and returns its body. */
export function expectProblem(res: AxiosResponse, status: number): Record<string, unknown> {
  expect(res.status).toBe(status);
  expect(String(res.headers['content-type'])).toMatch(/^application\/problem\+json/);
  const body = res.data as Record<string, unknown>;
  expect(body).toEqual(expect.objectContaining({ type: expect.any(String), title: expect.any(String), status, detail: expect.any(String) }));
  return body;
}

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Scrapes /metrics and parses the Prometheus text format (comments skipped). */
export async function scrape(svc: TestService): Promise<MetricSample[]> {
  const res = await svc.api.get('/metrics', { responseType: 'text', transformResponse: (d: unknown) => d });
  expect(res.status).toBe(200);
  const samples: MetricSample[] = [];
  for (const line of String(res.data).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`unparseable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let lm = re.exec(m[3] ?? ''); lm; lm = re.exec(m[3] ?? '')) labels[lm[1]!] = lm[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return samples;
}

/** The sample named `name` whose labels are exactly `labels`; undefined when absent. */
export function sample(samples: MetricSample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const keys = Object.keys(labels);
  const found = samples.find(
    (s) => s.name === name && Object.keys(s.labels).length === keys.length && keys.every((k) => s.labels[k] === labels[k]),
  );
  return found?.value;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A counting semaphore: keeps the number of requests in flight bounded. */
export class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly max: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    else this.active += 1;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active -= 1;
    }
  }
}

/** An open, dispatched task nothing else will move: no callback, and the partner's status says processing. */
export async function quietTask(api: AxiosInstance, partner = 'sim', prefix = 'quiet'): Promise<ApiTask> {
  const created = await createTask(api, {
    partner,
    requestNo: newRequestNo(`${prefix}-${partner}`),
    payload: { simulate: { callback: { mode: 'never' }, processingForMs: 600_000 } },
  });
  return waitForDispatchRecorded(api, created.id);
}
