import type { Clock } from '../clock';
import type { PartnerRegistry } from '../partners/partner-registry';
import type { TaskService } from '../tasks/task-service';
import type { z } from 'zod';
import { decodeStoryCursor, encodeStoryCursor } from './story-cursor';
import type { StoryRepository } from './story-repository';
import type { overviewSchema, partnerCallSchema, receivedCallbackSchema } from './story-schemas';

/** The overview is computed at most this often per process, however many consoles watch it. */
export const OVERVIEW_CACHE_MS = 2000;
const CONFLICT_WINDOW_MS = 24 * 60 * 60_000;

type Page<T> = { items: T[]; nextCursor: string | null };
const iso = (d: Date | string | null): string | null => (d === null ? null : new Date(d).toISOString());

/**
 * What an operator reads beyond the task itself: the calls made to its partner, the callbacks received
 * for it, and the per-partner overview. Reads only.
 */
export class StoryService {
  private overviewCache: { at: number; value: Promise<z.infer<typeof overviewSchema>> } | undefined;

  constructor(
    private readonly deps: { repo: StoryRepository; tasks: TaskService; partners: PartnerRegistry; clock: Clock },
  ) {}

  async partnerCalls(taskId: string, limit: number, cursor?: string): Promise<Page<z.infer<typeof partnerCallSchema>>> {
    const after = cursor === undefined ? undefined : decodeStoryCursor(cursor);
    await this.deps.tasks.get(taskId);
    const { rows, hasMore } = await this.deps.repo.partnerCalls(taskId, limit, after);
    const last = rows.at(-1);
    return {
      items: rows.map((r) => ({
        at: iso(r.started_at)!,
        operation: r.operation,
        outcome: r.outcome,
        reportedStatus: r.reported_status as 'processing' | 'succeeded' | 'failed' | null,
        httpStatus: r.http_status,
        errorClass: r.error_class as z.infer<typeof partnerCallSchema>['errorClass'],
        error: r.error_message,
        durationMs: r.duration_ms,
      })),
      nextCursor: hasMore && last ? encodeStoryCursor({ at: new Date(last.started_at), source: 0, id: last.id }) : null,
    };
  }

  async callbacks(taskId: string, limit: number, cursor?: string): Promise<Page<z.infer<typeof receivedCallbackSchema>>> {
    const after = cursor === undefined ? undefined : decodeStoryCursor(cursor);
    const task = await this.deps.tasks.get(taskId);
    const { rows, hasMore } = await this.deps.repo.callbacks(task, limit, after);
    const createdAt = new Date(task.created_at).getTime();
    const last = rows.at(-1);
    return {
      items: rows.map((r) => ({
        receivedAt: iso(r.received_at)!,
        webhookId: r.webhook_id,
        verification: r.verification as z.infer<typeof receivedCallbackSchema>['verification'],
        outcome: r.outcome as z.infer<typeof receivedCallbackSchema>['outcome'],
        reportedStatus: r.reported_status as 'processing' | 'succeeded' | 'failed' | null,
        result: r.result ?? null,
        error: r.error ?? null,
        body: r.raw_body,
        duplicates: r.duplicates,
        lastDuplicateAt: iso(r.last_duplicate_at),
        matchedAt: iso(r.matched_at),
        early: new Date(r.received_at).getTime() < createdAt,
      })),
      nextCursor: hasMore && last ? encodeStoryCursor({ at: new Date(last.received_at), source: r01(last.source), id: last.id }) : null,
    };
  }

  /** Per partner, every configured one included; cached briefly so many consoles cost one query. */
  overview(): Promise<z.infer<typeof overviewSchema>> {
    const nowMs = Date.now();
    if (this.overviewCache && nowMs - this.overviewCache.at < OVERVIEW_CACHE_MS) return this.overviewCache.value;
    const value = this.computeOverview();
    this.overviewCache = { at: nowMs, value };
    value.catch(() => (this.overviewCache = undefined));
    return value;
  }

  private async computeOverview(): Promise<z.infer<typeof overviewSchema>> {
    const now = this.deps.clock.now();
    const rows = new Map((await this.deps.repo.overview(new Date(now.getTime() - CONFLICT_WINDOW_MS))).map((r) => [r.partner, r]));
    const ids = [...new Set([...this.deps.partners.list().map((p) => p.config.id), ...rows.keys()])].sort();
    return {
      generatedAt: now.toISOString(),
      partners: ids.map((id) => {
        const r = rows.get(id);
        const client = this.deps.partners.get(id);
        return {
          id,
          configured: client !== undefined,
          open: { pending: r?.pending ?? 0, dispatched: r?.dispatched ?? 0 },
          expired: r?.expired ?? 0,
          oldestOpenTaskAgeSeconds: r?.oldest_open ? Math.max(0, Math.round((now.getTime() - new Date(r.oldest_open).getTime()) / 1000)) : null,
          conflicts24h: r?.conflicts ?? 0,
          breaker: client?.breakerState ?? 'closed',
        };
      }),
    };
  }
}

const r01 = (n: number): number => (Number(n) === 1 ? 1 : 0);
