import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import axios, { type AxiosInstance } from 'axios';
import { sql } from 'kysely';
import type { ApiTask } from '../../src/tasks/task-schemas';
import type { TestDatabase } from '../support/database';
import { eventually, TEST_API_KEY, TEST_SECRET } from '../support/service';
import { Limiter, type ApiEvent } from './callback-helpers';
import { parseMetrics, type MetricSample } from './helpers';

/**
 * Helpers of the reconciler and replica tests: partner entries for the simulator, task reads, seeding
 * open tasks straight into the database, real service processes, and reading the simulator's request log.
 */

const ROOT = path.resolve(__dirname, '../..');

/** A partner entry served by the test's simulator (`{simulator}` is replaced by its URL in startTestService). */
export function simPartner(id: string, overrides: Record<string, unknown> = {}, baseUrl = '{simulator}'): Record<string, unknown> {
  return {
    id,
    baseUrl,
    dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 3 },
    status: { path: '/requests/{requestNo}', timeoutMs: 1000 },
    callback: { secret: TEST_SECRET, verify: 'signature' },
    ...overrides,
  };
}

export { getEvents, getTask, type ApiEvent } from './callback-helpers';

/** `[from, to, source]` of each event, for compact trail assertions. */
export function trail(events: ApiEvent[]): Array<[string | null, string, string]> {
  return events.map((e) => [e.from, e.to, e.source]);
}

/** Epoch ms of an ISO timestamp (NaN for null). */
export const ms = (iso: string | null): number => (iso === null ? Number.NaN : Date.parse(iso));

/**
 * Makes the simulator "receive" each request, as if dispatched: POSTs straight to its dispatch path with
 * no callbackUrl, so it never calls back and its status endpoint knows the request.
 */
export async function seedSimulator(simulatorUrl: string, requestNos: readonly string[], simulate: Record<string, unknown>): Promise<void> {
  const limiter = new Limiter(32);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  try {
    await Promise.all(
      requestNos.map((requestNo) =>
        limiter.run(async () => {
          const res = await axios.post(`${simulatorUrl}/requests`, { requestNo, kind: null, payload: { simulate } }, { httpAgent: agent, validateStatus: () => true });
          if (res.status < 200 || res.status >= 300) throw new Error(`seeding ${requestNo}: simulator answered ${res.status}`);
        }),
      ),
    );
  } finally {
    agent.destroy();
  }
}

/**
 * Inserts open tasks in one statement, as if created and dispatched already: status `dispatched`, one
 * dispatch attempt, no lease, due at `dueAt`. Returns their ids by requestNo.
 */
export async function insertDispatchedTasks(
  db: TestDatabase,
  partner: string,
  requestNos: readonly string[],
  opts: { dueAt: Date; createdAt?: Date; maxAgeSeconds?: number },
): Promise<Map<string, string>> {
  const createdAt = opts.createdAt ?? opts.dueAt;
  const expiresAt = new Date(createdAt.getTime() + (opts.maxAgeSeconds ?? 86_400) * 1000);
  const { rows } = await sql<{ id: string; request_no: string }>`
    insert into tasks (id, partner, request_no, kind, status, payload, body_hash, dispatch_attempts, next_check_at,
                       expires_at, created_at, updated_at, dispatched_at)
    select gen_random_uuid(), ${partner}, r, null, 'dispatched', '{}'::jsonb, 'seeded', 1, ${opts.dueAt},
           ${expiresAt}, ${createdAt}, ${createdAt}, ${createdAt}
    from unnest(${[...requestNos]}::text[]) as r
    returning id::text, request_no`.execute(db.handle.db);
  return new Map(rows.map((r) => [r.request_no, r.id]));
}

/** Status counts of the given partner's tasks. */
export async function statusCounts(db: TestDatabase, partner: string): Promise<Record<string, number>> {
  const { rows } = await sql<{ status: string; n: number }>`
    select status, count(*)::int as n from tasks where partner = ${partner} group by status`.execute(db.handle.db);
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** The simulator's log entries per requestNo, in arrival order. */
export function logByRequestNo(log: ReadonlyArray<{ at: number; kind: string; requestNo: string }>, kind?: string): Map<string, number[]> {
  const by = new Map<string, number[]>();
  for (const e of log) {
    if (kind !== undefined && e.kind !== kind) continue;
    let list = by.get(e.requestNo);
    if (!list) by.set(e.requestNo, (list = []));
    list.push(e.at);
  }
  return by;
}

/** The smallest gap between consecutive times of any one list, with the list's key. */
export function smallestGap(byKey: Map<string, number[]>): { key: string; gapMs: number } | undefined {
  let best: { key: string; gapMs: number } | undefined;
  for (const [key, times] of byKey) {
    const sorted = [...times].sort((a, b) => a - b);
    for (let i = 1; i < sorted.length; i++) {
      const gap = sorted[i]! - sorted[i - 1]!;
      if (!best || gap < best.gapMs) best = { key, gapMs: gap };
    }
  }
  return best;
}

/** The most timestamps inside any window of `windowMs` (sliding; both ends of the window included). */
export function maxInSlidingWindow(times: readonly number[], windowMs: number): { count: number; startAt: number } {
  const sorted = [...times].sort((a, b) => a - b);
  let best = { count: 0, startAt: Number.NaN };
  let lo = 0;
  for (let hi = 0; hi < sorted.length; hi++) {
    while (sorted[hi]! - sorted[lo]! >= windowMs) lo++;
    if (hi - lo + 1 > best.count) best = { count: hi - lo + 1, startAt: sorted[lo]! };
  }
  return best;
}

/** Sum of every sample of `name` whose labels include `labels`. */
export function sumOf(samples: MetricSample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((acc, s) => acc + s.value, 0);
}

/** Scrapes a service's /metrics (no key needed) and parses it. */
export async function scrapeUrl(baseUrl: string): Promise<MetricSample[]> {
  const res = await axios.get(`${baseUrl}/metrics`, { responseType: 'text', transformResponse: (d: unknown) => d, validateStatus: () => true });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return parseMetrics(String(res.data));
}

/** A service running as its own process: `node --import tsx src/main.ts`. */
export interface ServiceProcess {
  child: ChildProcess;
  pid: number;
  url: string;
  api: AxiosInstance;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stops it with SIGKILL unless it is gone already. */
  kill(): Promise<void>;
}

/** Starts the service as a real process with `env` (plus PATH and HOME) and waits until /readyz answers 200. */
export async function startServiceProcess(env: Record<string, string>, readyTimeoutMs = 30_000): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (c: Buffer) => {
    out += c.toString('utf8');
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://${env.HOST ?? '127.0.0.1'}:${env.PORT}`;
  const api = axios.create({ baseURL: url, headers: { authorization: `Bearer ${TEST_API_KEY}` }, validateStatus: () => true });
  const proc: ServiceProcess = {
    child,
    pid: child.pid!,
    url,
    api,
    output: () => out,
    exited,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
  try {
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`service process exited early (${child.exitCode}): ${out}`);
        const r = await api.get('/readyz').catch(() => undefined);
        return r?.status === 200 ? true : undefined;
      },
      `the service process on ${url} to be ready`,
      readyTimeoutMs,
      100,
    );
  } catch (err) {
    await proc.kill();
    throw err;
  }
  return proc;
}
