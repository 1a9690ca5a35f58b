import type { RequestHandler } from 'express';
import { HttpProblem } from './problem';

/** What a client is told to wait before retrying while the service starts up. */
export const STARTING_RETRY_AFTER_SECONDS = 2;

/**
 * The service's phase as the HTTP layer sees it. While `starting` (listening, but still waiting for the
 * database or migrating), `/readyz` answers 503 and every other route except the ops ones answers 503 with
 * `Retry-After`, so an orchestrator sees a live but unready process instead of a crash loop.
 */
export class Lifecycle {
  private phase: 'starting' | 'serving' = 'starting';

  get isStarting(): boolean {
    return this.phase === 'starting';
  }

  serving(): void {
    this.phase = 'serving';
  }

  /** Refuses work while starting; mounted after the ops routes. */
  readonly gate: RequestHandler = (_req, _res, next) => {
    if (this.phase === 'serving') return next();
    next(new HttpProblem(503, 'the service is starting: waiting for the database', undefined, { 'Retry-After': String(STARTING_RETRY_AFTER_SECONDS) }));
  };
}
