import { BatcherSaturatedError, SATURATED_RETRY_AFTER_SECONDS } from '../db/batcher';
import { HttpProblem } from './problem';

/** pg-pool's message when no connection freed up within connectionTimeoutMillis. */
const POOL_TIMEOUT = 'timeout exceeded when trying to connect';

/** True when the error says "too busy right now" (batcher queue or pool saturated), not "broken". */
export function isSaturation(err: unknown): boolean {
  return err instanceof BatcherSaturatedError || (err instanceof Error && err.message === POOL_TIMEOUT);
}

/**
 * Turns saturation into `503` with `Retry-After` (nothing was written: the item never reached a
 * statement, or no connection was had); anything else is rethrown as is.
 */
export function rethrowAsBusy(err: unknown, onBusy?: () => void): never {
  if (isSaturation(err)) {
    onBusy?.();
    throw new HttpProblem(503, 'the service is busy; retry shortly', undefined, { 'Retry-After': String(SATURATED_RETRY_AFTER_SECONDS) });
  }
  throw err;
}
