import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import type { InboxRow, TaskRow } from '../db/schema';
import { HttpProblem } from '../http/problem';
import type { Metrics } from '../observability/metrics';
import { mapPartnerBody, type MappingResult, type PartnerReport } from '../partners/mapping';
import { isValidRequestNo } from '../tasks/task-schemas';
import type { PartnerRegistry } from '../partners/partner-registry';
import { transitionForReport } from '../tasks/report-transition';
import type { TaskRepository, TransitionOutcome } from '../tasks/task-repository';
import type { TaskNotifier, TaskTransitions } from '../tasks/task-transitions';
import { isDuplicateCallback, type InboxLookup, type InboxRepository, type StoreAndApply, type StoreAndApplyResult } from './inbox-repository';
import { rethrowAsBusy } from '../http/busy';
import { SignatureVerifier } from './signature';

/** The first look again comes quickly (a callback that beat its task by a hair); later ones back off. */
export const FIRST_RECHECK_MS = 10;
export const RECHECK_GROWTH = 1.3;
export const MAX_RECHECK_MS = 100;

/** Longest `webhook-id` kept: it is part of a unique index, and Standard Webhooks ids are short (`msg_…`). */
export const MAX_WEBHOOK_ID_LENGTH = 256;

export type CallbackOutcome = 'applied' | 'ignored' | 'duplicate' | 'queued' | 'poll';

export interface CallbackAnswer {
  status: 200 | 202;
  outcome: CallbackOutcome;
}

export interface CallbackServiceDeps {
  partners: PartnerRegistry;
  inbox: InboxRepository;
  tasks: TaskRepository;
  transitions: TaskTransitions;
  notifier: TaskNotifier;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  lookupTimeoutMs: number;
  /** What an untrusted (`verify: "poll"`) callback triggers for its task: a status query soon. */
  requestCheck: (taskId: string) => Promise<unknown>;
  /**
   * Stores a definitive callback and applies it in the same statement when its task exists (the
   * group-commit batcher in the service). Absent: store, then apply, as two statements.
   */
  storeAndApply?: (item: StoreAndApply) => Promise<StoreAndApplyResult>;
}

/** transitionForReport needs no task row for a definitive report; this stands in for the one not read yet. */
const UNREAD_TASK: TaskRef = { id: '00000000-0000-0000-0000-000000000000', check_attempts: 0, expires_at: new Date(0) };

type TaskRef = Pick<TaskRow, 'id' | 'check_attempts' | 'expires_at'>;

/**
 * Partner callbacks: authenticate, store first, then match to the task with a bounded re-lookup. A
 * callback whose task is not there in time stays queued in the inbox; task creation and the safety net
 * apply it once the task exists. Every path applies a stored callback through one statement that claims
 * the inbox row, so a callback is applied once.
 */
export class CallbackService {
  private readonly verifiers: ReadonlyMap<string, SignatureVerifier>;

  constructor(private readonly deps: CallbackServiceDeps) {
    this.verifiers = new Map(deps.partners.list().map((p) => [p.config.id, new SignatureVerifier(p.config.callback.secrets)]));
  }

  async receive(partnerId: string, rawBody: Buffer, headers: Record<string, string | string[] | undefined>, signal?: AbortSignal): Promise<CallbackAnswer> {
    const partner = this.deps.partners.get(partnerId)?.config;
    if (!partner) throw new HttpProblem(404, `unknown partner "${partnerId}"`);
    const count = (outcome: string) => this.deps.metrics.callbacks.inc({ partner: partner.id, outcome });

    if (partner.callback.verify === 'poll') return this.receiveUntrusted(partner, rawBody);

    if (!this.verifiers.get(partner.id)!.verify(rawBody, headers)) {
      count('unauthorized');
      throw new HttpProblem(401, 'missing or invalid Standard Webhooks signature');
    }
    const body = parseJson(rawBody);
    if (body === undefined) {
      count('malformed');
      throw new HttpProblem(400, 'the callback body is not valid JSON');
    }
    const webhookId = String(headers['webhook-id']);
    if (webhookId.length > MAX_WEBHOOK_ID_LENGTH) {
      count('malformed');
      throw new HttpProblem(400, `the webhook-id header is longer than ${MAX_WEBHOOK_ID_LENGTH} characters`);
    }
    const mapped = readCallback(partner, body);
    const receivedAt = this.deps.clock.now();
    const rawText = rawBody.toString('utf8');

    if (!mapped.ok) {
      // Kept for inspection: a partner sending shapes we cannot read is something an operator must see.
      const stored = await this.deps.inbox.store({ partner: partner.id, webhookId, requestNo: null, reportedStatus: null, result: null, error: null, rawBody: rawText, receivedAt, outcome: 'unreadable' });
      if (!stored.stored) return this.answer(partner, 'duplicate');
      count('unreadable');
      throw new HttpProblem(400, `the callback cannot be read: ${mapped.reason}`);
    }
    const report = mapped.report;
    const row = {
      partner: partner.id,
      webhookId,
      requestNo: report.requestNo!,
      reportedStatus: report.status,
      result: report.result,
      error: report.error,
      rawBody: rawText,
      receivedAt,
      outcome: 'queued' as const,
    };
    const started = performance.now();
    let stored: { inboxId: number; task: InboxLookup['task'] };
    if (report.status !== 'processing' && this.deps.storeAndApply) {
      const spec = { ...transitionForReport(partner, UNREAD_TASK, report, 'callback', receivedAt), detail: { type: 'callback', webhookId } };
      let r: StoreAndApplyResult;
      try {
        r = await this.deps.storeAndApply({ row, spec });
      } catch (err) {
        if (isDuplicateCallback(err)) return this.answer(partner, 'duplicate');
        rethrowAsBusy(err, () => this.deps.metrics.batchRefused.inc({ batcher: 'callback' }));
      }
      if (!r.stored) return this.answer(partner, 'duplicate');
      if (r.applied) {
        this.deps.metrics.callbackLookupWait.observe((performance.now() - started) / 1000);
        const outcome = this.deps.transitions.record(partner.id, { ...spec, taskId: r.taskId! }, r.applied).outcome;
        return this.answer(partner, outcome === 'applied' ? 'applied' : 'ignored', outcome === 'conflict' ? 'conflict' : undefined);
      }
      stored = { inboxId: r.inboxId, task: undefined };
    } else {
      const s = await this.deps.inbox.store(row);
      if (!s.stored) return this.answer(partner, 'duplicate');
      stored = s;
    }

    let found: InboxLookup | undefined = stored.task ? { outcome: 'queued', task: stored.task } : undefined;
    if (!found) found = await this.awaitTask(partner.id, report.requestNo!, stored.inboxId, signal);
    this.deps.metrics.callbackLookupWait.observe((performance.now() - started) / 1000);
    if (!found) return this.answer(partner, 'queued');

    let outcome: TransitionOutcome | InboxLookup['outcome'] = found.outcome;
    if (found.outcome === 'queued' && found.task) {
      outcome = await this.apply(partner, stored.inboxId, webhookId, found.task, report);
      if (outcome === 'already_handled') outcome = (await this.deps.inbox.lookup(stored.inboxId))?.outcome ?? 'ignored';
    }
    return this.answer(partner, outcome === 'applied' ? 'applied' : 'ignored', outcome === 'conflict' ? 'conflict' : undefined);
  }

  /**
   * Applies the queued callbacks of a task that was just created, oldest first. Returns the task as it
   * stands afterwards when any of them moved it.
   */
  async applyQueuedFor(task: TaskRow): Promise<TaskRow | undefined> {
    const partner = this.deps.partners.get(task.partner)?.config;
    if (!partner) return undefined;
    let latest: TaskRow | undefined;
    for (const row of await this.deps.inbox.queuedFor(task.partner, task.request_no)) {
      const moved = await this.applyStored(partner, row, latest ?? task);
      if (moved) latest = moved;
    }
    return latest;
  }

  /**
   * The safety net: applies queued callbacks whose task exists by now (two concurrent transactions can
   * each miss the other). Returns how many it handled; works in batches until a short batch.
   */
  async matchUnmatched(batchSize = 100): Promise<number> {
    let handled = 0;
    for (;;) {
      const rows = await this.deps.inbox.matchable(batchSize);
      for (const row of rows) {
        const partner = this.deps.partners.get(row.partner)?.config;
        if (!partner) continue;
        await this.applyStored(partner, row, { id: row.matched_task_id, check_attempts: row.task_check_attempts, expires_at: row.task_expires_at });
        handled++;
      }
      if (rows.length < batchSize) return handled;
    }
  }

  private async applyStored(partner: PartnerConfig, row: InboxRow, task: TaskRef): Promise<TaskRow | undefined> {
    const report: PartnerReport = { status: row.reported_status as PartnerReport['status'] };
    if (row.result !== null) report.result = row.result;
    if (row.error !== null) report.error = row.error;
    const spec = { ...transitionForReport(partner, task, report, 'callback', this.deps.clock.now()), inboxId: row.id, detail: { type: 'callback', webhookId: row.webhook_id, queued: true } };
    const result = await this.deps.transitions.apply(partner.id, spec);
    if (result.outcome !== 'already_handled') this.deps.metrics.callbacks.inc({ partner: partner.id, outcome: `late_${result.outcome}` });
    return result.task;
  }

  private async apply(partner: PartnerConfig, inboxId: number, webhookId: string, task: TaskRef, report: PartnerReport): Promise<TransitionOutcome> {
    const spec = { ...transitionForReport(partner, task, report, 'callback', this.deps.clock.now()), inboxId, detail: { type: 'callback', webhookId } };
    return (await this.deps.transitions.apply(partner.id, spec)).outcome;
  }

  /**
   * Looks again until the task exists or the bound runs out. A task created in this process wakes the wait
   * at once; one created elsewhere is found by the next look (10 ms, then growing to 100 ms). Returns
   * undefined when the bound ran out with the task still absent.
   */
  private async awaitTask(partner: string, requestNo: string, inboxId: number, signal?: AbortSignal): Promise<InboxLookup | undefined> {
    const deadline = performance.now() + this.deps.lookupTimeoutMs;
    let interval = FIRST_RECHECK_MS;
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0 || signal?.aborted) return undefined;
      await this.deps.notifier.waitForCreated(partner, requestNo, Math.min(interval, left), signal);
      const look = await this.deps.inbox.lookup(inboxId);
      if (!look) return undefined;
      if (look.outcome !== 'queued' || look.task) return look;
      interval = Math.min(interval * RECHECK_GROWTH, MAX_RECHECK_MS);
    }
  }

  /** A `verify: "poll"` partner's callback is only a hint: nothing in it is applied; its task is checked now. */
  private async receiveUntrusted(partner: PartnerConfig, rawBody: Buffer): Promise<CallbackAnswer> {
    const body = parseJson(rawBody);
    if (body === undefined) throw new HttpProblem(400, 'the callback body is not valid JSON');
    const mapped = readCallback(partner, body);
    if (mapped.ok) {
      const task = await this.deps.tasks.findByRequestNo(partner.id, mapped.report.requestNo!);
      if (task) await this.deps.requestCheck(task.id);
    }
    return this.answer(partner, 'poll');
  }

  private answer(partner: PartnerConfig, outcome: CallbackOutcome, countAs?: string): CallbackAnswer {
    this.deps.metrics.callbacks.inc({ partner: partner.id, outcome: countAs ?? outcome });
    return { status: outcome === 'queued' || outcome === 'poll' ? 202 : 200, outcome };
  }
}

/**
 * The partner's report in a callback. A request number no task can have (over-long, odd characters, dots
 * only) makes the callback unreadable: it can never match, and must not reach an index.
 */
function readCallback(partner: PartnerConfig, body: unknown): MappingResult {
  const mapped = mapPartnerBody(partner, body, true);
  if (mapped.ok && !isValidRequestNo(mapped.report.requestNo!)) {
    return { ok: false, reason: 'the request number is not one a task can have (1-128 characters of A-Za-z0-9._:-, not dots only)' };
  }
  return mapped;
}

function parseJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}
