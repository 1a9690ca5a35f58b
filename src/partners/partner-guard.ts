import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhenResult, type CircuitBreakerPolicy } from 'cockatiel';
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { RateLimiterPostgres, RateLimiterRes } from 'rate-limiter-flexible';
import type { PartnerConfig } from '../config/partners';
import type { Metrics } from '../observability/metrics';

/** Consecutive transient failures that open a partner's breaker on this replica. */
export const BREAKER_CONSECUTIVE_FAILURES = 5;
/** How long an open breaker waits before letting one trial call through. */
export const BREAKER_HALF_OPEN_AFTER_MS = 5000;
/** A partner's rate limit is granted in windows holding about a tenth of a second's requests each. */
const RATE_WINDOW_FRACTION = 10;

/**
 * The limiter's window for `perSecond`: `points` requests per `durationMs`. Windows never overlap, and a
 * one-second span meets at most floor(1000 / durationMs) + 1 of them, so the window is sized to make that
 * at most perSecond / points: no one-second span, wherever it starts, holds more than `perSecond`
 * grants. (Plain perSecond / 10 per 100 ms let 11 windows, 10 % over, into a span; the partner, counting
 * at arrival, then saw more than its limit as soon as network or scheduling jitter bunched requests.)
 * The price is the average rate: about (n − 1) / n of the limit for n windows a second (20/s sends 17.9/s).
 */
export function rateWindow(perSecond: number): { points: number; durationMs: number } {
  const points = Math.max(1, Math.floor(perSecond / RATE_WINDOW_FRACTION));
  const windowsPerSpan = Math.floor(perSecond / points);
  // Whole milliseconds (the store keeps expiry times as integers); rounding up only makes windows fewer.
  const durationMs = windowsPerSpan >= 2 ? Math.ceil(1000 / (windowsPerSpan - 1)) : 1001;
  return { points, durationMs };
}

export type BreakerState = 'closed' | 'open' | 'half-open';

/** Why a call was not made: the partner is protected for now. Not a failure of the task. */
export interface Deferral {
  reason: 'breaker_open' | 'rate_limited' | 'rate_limiter_unavailable';
  retryInMs: number;
}

export type Guarded<T> = { ok: true; value: T } | { ok: false; deferral: Deferral };

/**
 * Protects one partner: a circuit breaker per replica (cockatiel) that opens on repeated transient
 * failures, and a rate limit shared by every replica through Postgres (rate-limiter-flexible). While
 * either says no, calls are not made and callers put the task back a little later, burning no attempt.
 */
export class PartnerGuard {
  private readonly breaker: CircuitBreakerPolicy;
  private readonly limiter: RateLimiterPostgres | undefined;
  private readonly window: { points: number; durationMs: number } | undefined;
  private openedAt = 0;

  constructor(
    private readonly partner: PartnerConfig,
    pool: Pool | undefined,
    metrics: Metrics,
    private readonly logger: Logger,
  ) {
    this.breaker = circuitBreaker(handleWhenResult((r) => (r as { transientFailure?: boolean }).transientFailure === true), {
      halfOpenAfter: BREAKER_HALF_OPEN_AFTER_MS,
      breaker: new ConsecutiveBreaker(BREAKER_CONSECUTIVE_FAILURES),
    });
    metrics.breakerState.set({ partner: partner.id }, 0);
    this.breaker.onBreak(() => {
      this.openedAt = Date.now();
    });
    this.breaker.onStateChange((state) => {
      metrics.breakerState.set({ partner: partner.id }, state === CircuitState.Closed ? 0 : 1);
      logger.warn({ partner: partner.id, state: CircuitState[state] }, 'partner circuit breaker changed state');
    });
    const perSecond = partner.rateLimit?.perSecond;
    if (perSecond && pool) {
      // e.g. 20/s becomes 2 per 112 ms: any one-second span meets at most 9 windows, 18 requests.
      const { points, durationMs } = rateWindow(perSecond);
      this.window = { points, durationMs };
      this.limiter = new RateLimiterPostgres({
        storeClient: pool,
        storeType: 'pool',
        tableName: 'partner_rate_limits',
        tableCreated: true,
        clearExpiredByTimeout: false,
        keyPrefix: 'partner',
        points,
        duration: durationMs / 1000,
      });
    }
  }

  /** This replica's breaker for the partner, as the overview shows it. */
  get breakerState(): BreakerState {
    switch (this.breaker.state) {
      case CircuitState.Closed:
        return 'closed';
      case CircuitState.HalfOpen:
        return 'half-open';
      default:
        return 'open';
    }
  }

  /** Runs `call` unless the breaker is open or the shared rate limit is spent. */
  async run<T extends { transientFailure?: boolean }>(call: () => Promise<T>): Promise<Guarded<T>> {
    // While open, defer without spending the shared rate budget. Once the wait is over, the call goes
    // through to execute(), which is where cockatiel moves to half-open and lets one trial call pass.
    if (this.breaker.state === CircuitState.Open) {
      const leftMs = this.openedAt + BREAKER_HALF_OPEN_AFTER_MS - Date.now();
      if (leftMs > 0) return { ok: false, deferral: { reason: 'breaker_open', retryInMs: leftMs } };
    }
    if (this.limiter) {
      try {
        await this.limiter.consume(this.partner.id, 1);
      } catch (err) {
        if (err instanceof RateLimiterRes) return { ok: false, deferral: { reason: 'rate_limited', retryInMs: Math.max(err.msBeforeNext, 1) + jitter(this.window!.durationMs) } };
        // The shared limit cannot be checked: protect the partner rather than guess.
        this.logger.warn({ err, partner: this.partner.id }, 'rate limiter unavailable; deferring the call');
        return { ok: false, deferral: { reason: 'rate_limiter_unavailable', retryInMs: 1000 } };
      }
    }
    try {
      return { ok: true, value: await this.breaker.execute(call) };
    } catch (err) {
      if (err instanceof BrokenCircuitError) return { ok: false, deferral: { reason: 'breaker_open', retryInMs: BREAKER_HALF_OPEN_AFTER_MS } };
      throw err;
    }
  }

}

/** Spreads deferred tasks over a window so they do not all come back at the same millisecond. */
function jitter(windowMs: number): number {
  return Math.floor(Math.random() * windowMs * 2);
}
