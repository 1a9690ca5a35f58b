import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../db/schema';

/** One call that reached (or tried to reach) a partner for a task. */
export interface PartnerCall {
  taskId: string;
  startedAt: Date;
  operation: 'dispatch' | 'status';
  /** dispatch: received, refused, transient, ambiguous; status: found, not_found, error. */
  outcome: string;
  reportedStatus?: string | undefined;
  httpStatus?: number | undefined;
  errorClass?: string | undefined;
  errorMessage?: string | undefined;
  durationMs: number;
}

/** Calls written per statement. */
const FLUSH_BATCH = 500;
/** How long a call waits for others to share its insert. */
const FLUSH_DELAY_MS = 50;
/** Beyond this many unwritten calls (the database is away), new ones are dropped and counted in a log line. */
const MAX_BUFFERED = 20_000;
const MAX_ERROR_MESSAGE = 500;

/**
 * Records partner calls for the task story (`GET /v1/tasks/{id}/attempts`). Off the hot path: calls are
 * buffered and written together, one multi-row insert per ~50 ms, so a dispatch or a sweep pays no extra
 * round trip. It is a diagnostic record, not part of any guarantee: a crash can lose the last 50 ms of
 * it, and while the database is away it drops calls beyond a bound rather than growing without limit.
 * Task state never depends on it.
 */
export class PartnerCallLog {
  private buffer: PartnerCall[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private dropped = 0;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly logger: Logger,
  ) {}

  record(call: PartnerCall): void {
    if (this.buffer.length >= MAX_BUFFERED) {
      this.dropped++;
      return;
    }
    this.buffer.push(call);
    this.timer ??= setTimeout(() => void this.flush(), FLUSH_DELAY_MS);
  }

  /** Writes everything buffered so far (stop, tests). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing) await this.flushing;
    while (this.buffer.length > 0) {
      const batch = this.buffer.splice(0, FLUSH_BATCH);
      this.flushing = this.write(batch).finally(() => (this.flushing = undefined));
      await this.flushing;
    }
    if (this.dropped > 0) {
      this.logger.warn({ dropped: this.dropped }, 'partner call records dropped while the database was unavailable');
      this.dropped = 0;
    }
  }

  private async write(batch: PartnerCall[]): Promise<void> {
    try {
      // Rows whose task is gone are skipped by the join rather than failing the whole batch.
      await sql`
        insert into partner_calls (task_id, started_at, operation, outcome, reported_status, http_status, error_class, error_message, duration_ms)
        select v.task_id, v.started_at, v.operation, v.outcome, v.reported_status, v.http_status, v.error_class, v.error_message, v.duration_ms
        from unnest(${batch.map((c) => c.taskId)}::uuid[], ${batch.map((c) => c.startedAt.toISOString())}::timestamptz[],
                    ${batch.map((c) => c.operation)}::text[], ${batch.map((c) => c.outcome)}::text[],
                    ${batch.map((c) => c.reportedStatus ?? null)}::text[], ${batch.map((c) => c.httpStatus ?? null)}::int[],
                    ${batch.map((c) => c.errorClass ?? null)}::text[], ${batch.map((c) => storable(c.errorMessage))}::text[],
                    ${batch.map((c) => Math.max(0, Math.round(c.durationMs)))}::int[])
             as v(task_id, started_at, operation, outcome, reported_status, http_status, error_class, error_message, duration_ms)
        join tasks t on t.id = v.task_id`.execute(this.db);
    } catch (err) {
      this.logger.warn({ err, count: batch.length }, 'could not record partner calls');
    }
  }
}

/** Unpaired UTF-16 surrogates, which Postgres text cannot hold. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** Partner text as Postgres text can hold it: no NUL, no lone surrogates, at most MAX_ERROR_MESSAGE long. */
function storable(message: string | undefined): string | null {
  if (message === undefined) return null;
  const escaped = message.replace(/\u0000/g, '\\u0000').replace(LONE_SURROGATE, '\ufffd');
  // Cutting can split a surrogate pair; the cut end is cleaned again.
  return escaped.slice(0, MAX_ERROR_MESSAGE).replace(LONE_SURROGATE, '\ufffd');
}
