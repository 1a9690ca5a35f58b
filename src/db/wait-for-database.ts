import { setTimeout as sleep } from 'node:timers/promises';
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';

/** First retry after this long, doubling up to the cap: a database coming up is found within a second or two. */
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;

/** The database did not answer in time, or the wait was aborted. */
export class DatabaseStartupTimeout extends Error {
  override name = 'DatabaseStartupTimeout';
}

/**
 * Waits until the database answers `select 1`, retrying with exponential backoff (250 ms doubling to 5 s)
 * until `timeoutMs` has passed, then throws. In Kubernetes there is no start order: a replica that starts
 * before its database must wait (readiness 503) rather than exit and crash-loop.
 */
export async function waitForDatabase<DB>(
  db: Kysely<DB>,
  opts: { timeoutMs: number; logger: Logger; signal?: AbortSignal },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  let delay = FIRST_RETRY_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      await sql`select 1`.execute(db);
      if (attempt > 1) opts.logger.info({ attempt }, 'the database answers');
      return;
    } catch (err) {
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted) {
        throw new DatabaseStartupTimeout(`the database did not answer within DB_STARTUP_TIMEOUT_MS (${opts.timeoutMs} ms): ${(err as Error).message}`);
      }
      const wait = Math.min(delay, left);
      opts.logger.warn({ attempt, retryInMs: wait, err: (err as Error).message }, 'waiting for the database');
      await sleep(wait, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => undefined);
      delay = Math.min(delay * 2, MAX_RETRY_MS);
    }
  }
}
