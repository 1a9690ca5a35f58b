/**
 * What one delivery attempt means for its notification. Pure, so the schedule is tested without time.
 *
 * - `2xx` → delivered.
 * - `410 Gone` → gone at once: the receiver said it will never want it.
 * - anything else (other statuses, redirects — never followed —, timeouts, connection errors, refused
 *   addresses) → retried after `schedule[attempts - 1]` seconds; once the schedule is used up, failed.
 * - `429`/`503` with `Retry-After` → we wait at least what the receiver asked (when it is longer than the
 *   scheduled wait), capped at the wait of the step after this one: a receiver can slow a notification
 *   down by at most one step and can never park it indefinitely.
 */
export type AttemptVerdict =
  | { status: 'delivered' }
  | { status: 'gone' }
  | { status: 'failed' }
  | { status: 'pending'; retryInMs: number };

/** Parses `Retry-After` (delta-seconds or an HTTP date) into milliseconds from `nowMs`; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | undefined, nowMs: number): number | undefined {
  if (value === undefined) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at) || !/[a-z]/i.test(v)) return undefined;
  return Math.max(0, at - nowMs);
}

/**
 * @param attempts attempts made so far, this one included (1 after the first)
 * @param statusCode the HTTP status, or undefined when there was no answer (timeout, connection error)
 * @param retryAfterMs the parsed Retry-After of a 429/503
 */
export function judgeAttempt(schedule: readonly number[], attempts: number, statusCode: number | undefined, retryAfterMs?: number): AttemptVerdict {
  if (statusCode !== undefined && statusCode >= 200 && statusCode < 300) return { status: 'delivered' };
  if (statusCode === 410) return { status: 'gone' };
  if (attempts > schedule.length) return { status: 'failed' };
  const scheduledMs = schedule[attempts - 1]! * 1000;
  if ((statusCode === 429 || statusCode === 503) && retryAfterMs !== undefined) {
    const capMs = (schedule[attempts] ?? schedule[attempts - 1]!) * 1000;
    return { status: 'pending', retryInMs: Math.min(Math.max(retryAfterMs, scheduledMs), Math.max(capMs, scheduledMs)) };
  }
  return { status: 'pending', retryInMs: scheduledMs };
}
