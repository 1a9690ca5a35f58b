import type { PartnerConfig } from '../config/partners';

/** First retry of a dispatch that failed transiently; doubles per attempt up to the cap. */
export const TRANSIENT_RETRY_BASE_MS = 1000;
export const TRANSIENT_RETRY_CAP_MS = 5 * 60_000;
/** After an ambiguous dispatch, give the partner a moment before asking it whether it got the request. */
export const AMBIGUOUS_RECHECK_MS = 2000;
/** A Retry-After longer than this is not honoured as given: a partner cannot park a task for days. */
export const RETRY_AFTER_CAP_MS = 60 * 60_000;
/**
 * The shortest wait before a task is looked at again after a partner call: `Retry-After: 0` must not
 * make a task due again within the sweep that just looked at it (a sweep ends).
 */
export const MIN_RECHECK_MS = 1000;

/** A partner's Retry-After as a wait: at least MIN_RECHECK_MS, at most RETRY_AFTER_CAP_MS. */
export function retryAfterDelayMs(retryAfterMs: number): number {
  return Math.min(Math.max(retryAfterMs, MIN_RECHECK_MS), RETRY_AFTER_CAP_MS);
}

/** Delay before the reconciler checks a dispatched task for the `checkAttempts`-th time; the last step repeats. */
export function checkDelayMs(partner: PartnerConfig, checkAttempts: number): number {
  const steps = partner.reconcile.scheduleSeconds;
  return steps[Math.min(checkAttempts, steps.length - 1)]! * 1000;
}

/** Exponential backoff with ±20% jitter, so replicas retrying the same outage do not move in lockstep. */
export function transientRetryDelayMs(attempt: number, random: () => number = Math.random): number {
  const base = Math.min(TRANSIENT_RETRY_BASE_MS * 2 ** Math.max(0, attempt - 1), TRANSIENT_RETRY_CAP_MS);
  return Math.round(base * (0.8 + 0.4 * random()));
}

/** Never schedule a check past the task's expiry: the check at expiry is what expires it. */
export function capAtExpiry(at: Date, expiresAt: Date): Date {
  return at.getTime() > expiresAt.getTime() ? expiresAt : at;
}
