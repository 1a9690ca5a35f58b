import { createHash, randomUUID } from 'node:crypto';
import stringify from 'safe-stable-stringify';
import { v7 as uuidv7 } from 'uuid';
import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { TaskEventRow, TaskRow } from '../db/schema';
import type { Dispatcher } from '../dispatch/dispatcher';
import { HttpProblem } from '../http/problem';
import type { Metrics } from '../observability/metrics';
import type { PartnerRegistry } from '../partners/partner-registry';
import { isFinal, type TaskStatus } from './task';
import type { InsertResult, NewTask, TaskRepository } from './task-repository';
import { rethrowAsBusy } from '../http/busy';
import { isValidRequestNo, type ApiTask, type CreateTaskBody } from './task-schemas';
import type { TaskNotifier } from './task-transitions';

/**
 * How long the dispatcher's claim on a new task lasts beyond one dispatch attempt. If this process dies
 * before recording the outcome, the reconciler takes the task over once the claim runs out.
 */
export const DISPATCH_LEASE_GRACE_MS = 10_000;
/** A list page ends early once its tasks' JSON passes this size (SERVICE.md: "about 4 MB"), with nextCursor set. */
export const MAX_PAGE_BYTES = 4 * 1024 * 1024;
/** While a `waitSeconds` read waits, how often it looks in the database (changes made by other replicas). */
const WAIT_POLL_MS = 500;

export interface TaskServiceDeps {
  repo: TaskRepository;
  partners: PartnerRegistry;
  dispatcher: Dispatcher;
  notifier: TaskNotifier;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  /** Names this process in lease tokens. */
  instanceId: string;
  /** Applies callbacks that arrived before their task; returns the task if one of them moved it. */
  applyQueuedCallbacks: (task: TaskRow) => Promise<TaskRow | undefined>;
  /** Tells the reconciler a task becomes due at `at`, so it checks then rather than at its next tick. */
  nudgeReconciler: (at: Date) => void;
  /**
   * True while settling changes made by other replicas wake waiters here (the LISTEN connection is up);
   * a `waitSeconds` read then never polls. Otherwise it re-reads every WAIT_POLL_MS.
   */
  crossReplicaWake?: () => boolean;
  /** Refuses a notifyUrl (422) when notifications are off or its address is not allowed. */
  checkNotifyUrl?: (url: string) => Promise<void>;
  /**
   * Stores a new task: the group-commit batcher in the service (many creates, one statement); the
   * repository's single-row insert when absent.
   */
  insertTask?: (task: NewTask) => Promise<InsertResult>;
}

export type CreateResult = { created: true; task: TaskRow } | { created: false; task: TaskRow };

/** Creating, reading and nudging tasks; knows nothing of HTTP requests. */
export class TaskService {
  constructor(private readonly deps: TaskServiceDeps) {}

  /**
   * Stores the task (committed before this resolves), then hands it to the dispatcher. A second create with
   * the same partner and requestNo returns the stored task when the body is the same, and is refused
   * with 409 when it differs.
   */
  async create(body: CreateTaskBody): Promise<CreateResult> {
    const partner = this.deps.partners.get(body.partner);
    if (!partner) {
      throw new HttpProblem(422, `unknown partner "${body.partner}"`, [{ field: 'partner', message: 'is not a configured partner' }]);
    }
    if (body.notifyUrl !== undefined) await this.deps.checkNotifyUrl?.(body.notifyUrl);
    const requestNo = body.requestNo ?? randomUUID();
    const now = this.deps.clock.now();
    const leaseOwner = `${this.deps.instanceId}:dispatch:${randomUUID()}`;
    const hash = bodyHash({ ...body, requestNo });
    const insert = this.deps.insertTask ?? ((t: NewTask) => this.deps.repo.insert(t));
    const result = await insert({
      id: uuidv7({ msecs: now.getTime() }),
      partner: body.partner,
      requestNo,
      kind: body.kind ?? null,
      payload: body.payload,
      notifyUrl: body.notifyUrl ?? null,
      metadata: body.metadata ?? null,
      bodyHash: hash,
      createdAt: now,
      expiresAt: new Date(now.getTime() + partner.config.reconcile.maxAgeSeconds * 1000),
      leaseOwner,
      leaseMs: partner.config.dispatch.timeoutMs + DISPATCH_LEASE_GRACE_MS,
      nextCheckAt: new Date(now.getTime() + partner.config.dispatch.timeoutMs + DISPATCH_LEASE_GRACE_MS),
    }).catch((err: unknown) => rethrowAsBusy(err, () => this.deps.metrics.batchRefused.inc({ batcher: 'create' })));
    if (!result.inserted) {
      if (result.existing.body_hash !== hash) {
        throw new HttpProblem(409, `partner "${body.partner}" already has a task with requestNo "${requestNo}" and a different body`);
      }
      return { created: false, task: result.existing };
    }
    this.deps.metrics.tasksCreated.inc({ partner: body.partner });
    let task = result.task;
    if (result.hasQueuedCallbacks) {
      // The partner already called back (it may have got the request from an earlier, lost attempt of
      // the client's): apply what it said before deciding whether a dispatch is still needed.
      // Another path (the callback handler, the safety net, another replica) may have applied them first;
      // then the row is read again, and a task that is no longer ours to dispatch is left alone.
      task = (await this.deps.applyQueuedCallbacks(task)) ?? (await this.deps.repo.findById(task.id)) ?? task;
    }
    this.deps.notifier.created({ id: task.id, partner: body.partner, requestNo });
    if (task.status === 'pending' && task.lease_owner === leaseOwner) this.deps.dispatcher.enqueue(task, leaseOwner);
    return { created: true, task };
  }

  async get(id: string): Promise<TaskRow> {
    const task = isUuid(id) ? await this.deps.repo.findById(id) : undefined;
    if (!task) throw new HttpProblem(404, `no task ${id}`);
    return task;
  }

  /**
   * Reads a task, holding the answer until it is final (or expired) or `waitSeconds` pass. Changes made in
   * this process wake it at once; settling changes by other replicas arrive through the process's one
   * LISTEN connection (see TaskWakeListener), so a waiting request does not poll. Only while that
   * connection is down does it look again every half second. At the end it reads once more, so a
   * non-settling change made elsewhere (pending → dispatched) is in the answer.
   */
  async getWhenFinal(id: string, waitSeconds: number, signal: AbortSignal): Promise<TaskRow> {
    const settled = (t: TaskRow) => isFinal(t.status as TaskStatus) || t.status === 'expired';
    // Subscribe first: a change between the read and the wait is kept, not missed.
    const watch = this.deps.notifier.watch(id);
    try {
      let task = await this.get(id);
      const deadline = Date.now() + waitSeconds * 1000;
      while (!settled(task) && !signal.aborted) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        const woken = this.deps.crossReplicaWake?.() ?? false;
        const changed = await watch.next(woken ? left : Math.min(left, WAIT_POLL_MS), signal);
        if (changed) task = changed;
        else if (!woken) task = await this.get(id);
      }
      return settled(task) || signal.aborted ? task : await this.get(id);
    } finally {
      watch.close();
    }
  }

  async getByRequestNo(partner: string, requestNo: string): Promise<TaskRow> {
    // Only a configured partner and a well-formed request number can name a task; anything else (NUL
    // characters included, which Postgres would refuse) is answered without asking the database.
    const possible = this.deps.partners.get(partner) !== undefined && isValidRequestNo(requestNo);
    const task = possible ? await this.deps.repo.findByRequestNo(partner, requestNo) : undefined;
    if (!task) throw new HttpProblem(404, `partner "${partner}" has no task with requestNo "${requestNo}"`);
    return task;
  }

  /**
   * Newest first. A `requestNo` search across partners looks in the configured partners (each probe uses
   * the unique `(partner, request_no)` index); a task of a partner removed from the configuration is found
   * with the `partner` filter or by its id.
   */
  async list(q: { status?: TaskStatus; partner?: string; requestNo?: string; limit: number; cursor?: string }): Promise<{ rows: TaskRow[]; nextCursor: string | null }> {
    const after = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const { rows, hasMore } = await this.deps.repo.list({
      limit: q.limit,
      maxBytes: MAX_PAGE_BYTES,
      ...(q.status ? { status: q.status } : {}),
      ...(q.partner ? { partner: q.partner } : {}),
      ...(q.requestNo ? { requestNo: { value: q.requestNo, partners: this.deps.partners.list().map((p) => p.config.id) } } : {}),
      ...(after ? { after } : {}),
    });
    const last = rows.at(-1);
    return { rows, nextCursor: hasMore && last ? encodeCursor(new Date(last.created_at), last.id) : null };
  }

  /** A task's events, oldest first, one page at a time (keyset on the event id). */
  async events(id: string, q: { limit: number; cursor?: string } = { limit: 100 }): Promise<{ rows: TaskEventRow[]; nextCursor: string | null }> {
    const afterId = q.cursor === undefined ? undefined : decodeEventCursor(q.cursor);
    await this.get(id);
    const { rows, hasMore } = await this.deps.repo.listEvents(id, { limit: q.limit, ...(afterId !== undefined ? { afterId } : {}) });
    const last = rows.at(-1);
    return { rows, nextCursor: hasMore && last ? Buffer.from(JSON.stringify(['e', Number(last.id)])).toString('base64url') : null };
  }

  /**
   * An on-demand check with the partner: due now (coalesced to one per task per second), or, while a
   * lease holds the task (a dispatch or a check in flight), as soon as that holder gives it up. It never
   * breaks a lease: that is what sent tasks to partners twice (issue 7). With `by` (the label of the
   * operator's key), the request is also written into the task's events with source `manual`.
   */
  async requestReconcile(id: string, by?: string): Promise<TaskRow> {
    const r = isUuid(id) ? await this.deps.repo.requestCheck(id, this.deps.clock.now()) : undefined;
    if (!r) throw new HttpProblem(404, `no task ${id}`);
    if (by !== undefined) await this.recordManual(id, 'reconcile', by);
    if (r.dueAt) this.deps.nudgeReconciler(r.dueAt);
    return r.task;
  }

  /** Writes an operator's action (`reconcile`, `redeliver`, …) into the task's events, source `manual`. */
  async recordManual(id: string, action: string, by: string, extra: Record<string, unknown> = {}): Promise<void> {
    const written = isUuid(id) && (await this.deps.repo.recordManualEvent(id, this.deps.clock.now(), { type: 'manual', action, by, ...extra }));
    if (!written) throw new HttpProblem(404, `no task ${id}`);
  }
}

/** Hash of what the client asked for, independent of key order, to tell a replay from a conflicting reuse. */
export function bodyHash(body: CreateTaskBody & { requestNo: string }): string {
  const canonical = stringify({
    partner: body.partner,
    requestNo: body.requestNo,
    kind: body.kind ?? null,
    payload: body.payload,
    notifyUrl: body.notifyUrl ?? null,
    metadata: body.metadata ?? null,
  });
  return createHash('sha256').update(canonical ?? '').digest('base64url');
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export function isUuid(s: string): boolean {
  return UUID.test(s);
}

export function encodeCursor(createdAt: Date, id: string): string {
  return Buffer.from(JSON.stringify([createdAt.toISOString(), id])).toString('base64url');
}

export function decodeCursor(cursor: string): { createdAt: Date; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [unknown, unknown];
    const createdAt = new Date(String(at));
    if (typeof id === 'string' && isUuid(id) && !Number.isNaN(createdAt.getTime())) return { createdAt, id };
  } catch {
    // fall through to the 422 below
  }
  throw new HttpProblem(422, 'the cursor is not one this service issued', [{ field: 'cursor', message: 'is invalid' }]);
}

function decodeEventCursor(cursor: string): number {
  try {
    const [tag, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [unknown, unknown];
    if (tag === 'e' && Number.isSafeInteger(id) && (id as number) >= 0) return id as number;
  } catch {
    // fall through to the 422 below
  }
  throw new HttpProblem(422, 'the cursor is not one this service issued', [{ field: 'cursor', message: 'is invalid' }]);
}

const iso = (d: Date | string | null): string | null => (d === null ? null : new Date(d).toISOString());

/** The API's view of a task row. */
export function toApiTask(t: TaskRow): ApiTask {
  return {
    id: t.id,
    partner: t.partner,
    requestNo: t.request_no,
    kind: t.kind,
    status: t.status as ApiTask['status'],
    payload: t.payload as Record<string, unknown>,
    result: t.result ?? null,
    error: t.error ?? null,
    notifyUrl: t.notify_url,
    metadata: (t.metadata ?? null) as Record<string, unknown> | null,
    dispatchAttempts: t.dispatch_attempts,
    checkAttempts: t.check_attempts,
    settledBy: t.settled_by as ApiTask['settledBy'],
    nextCheckAt: iso(t.next_check_at),
    createdAt: iso(t.created_at)!,
    updatedAt: iso(t.updated_at)!,
    dispatchedAt: iso(t.dispatched_at),
    completedAt: iso(t.completed_at),
  };
}

export function toApiEvent(e: TaskEventRow) {
  return { at: iso(e.at)!, from: e.from_status, to: e.to_status, source: e.source, detail: e.detail ?? null };
}
