import type { PartnerConfig } from '../config/partners';
import type { Clock } from '../clock';
import {
  classifyDispatchStatus,
  classifyTransportError,
  parseRetryAfter,
  RETRYABLE_4XX,
  type DispatchKind,
  type PartnerCallError,
} from './errors';
import { mapPartnerBody, type PartnerReport } from './mapping';
import type { PartnerExchange } from './partner-exchange';
import type { BreakerState, Deferral, PartnerGuard } from './partner-guard';

export interface DispatchRequest {
  requestNo: string;
  kind: string | null;
  payload: unknown;
  callbackUrl: string;
}

export interface DispatchResult {
  kind: DispatchKind | 'deferred';
  /** Set when kind is 'deferred': the call was not made (breaker open, rate limit spent). */
  deferral?: Deferral;
  durationMs: number;
  httpStatus?: number;
  /** Set when the answer's body already states an outcome. */
  report?: PartnerReport;
  error?: PartnerCallError;
  retryAfterMs?: number;
}

export type StatusResult =
  | { kind: 'deferred'; deferral: Deferral; durationMs: 0 }
  | { kind: 'found'; report: PartnerReport; durationMs: number }
  | { kind: 'not_found'; durationMs: number }
  | { kind: 'error'; error: PartnerCallError; durationMs: number; retryAfterMs?: number };

/**
 * One partner's two calls, dispatch and status query, sent through the exchange (axios, in this thread or
 * on the partner I/O thread) with the configured paths and timeouts. It classifies outcomes; it never
 * decides what happens to a task.
 */
export class PartnerClient {
  constructor(
    readonly config: PartnerConfig,
    private readonly clock: Clock,
    private readonly exchange: PartnerExchange,
    private readonly guard?: PartnerGuard,
  ) {}

  /** This replica's circuit breaker for the partner (`closed` when calls are not guarded). */
  get breakerState(): BreakerState {
    return this.guard?.breakerState ?? 'closed';
  }

  /** Sends a dispatch, unless the partner is protected right now (then `kind: 'deferred'`, nothing sent). */
  async dispatch(req: DispatchRequest): Promise<DispatchResult> {
    if (!this.guard) return this.sendDispatch(req);
    const guarded = await this.guard.run(async () => {
      const r = await this.sendDispatch(req);
      return { r, transientFailure: r.kind === 'transient' || r.kind === 'ambiguous' };
    });
    return guarded.ok ? guarded.value.r : { kind: 'deferred', durationMs: 0, deferral: guarded.deferral };
  }

  /** Asks the partner about a request, unless it is protected right now (then `kind: 'deferred'`). */
  async status(requestNo: string): Promise<StatusResult> {
    if (!this.guard) return this.queryStatus(requestNo);
    const guarded = await this.guard.run(async () => {
      const r = await this.queryStatus(requestNo);
      return { r, transientFailure: r.kind === 'error' && r.error.class !== 'http_4xx' };
    });
    return guarded.ok ? guarded.value.r : { kind: 'deferred', durationMs: 0, deferral: guarded.deferral };
  }

  private async sendDispatch(req: DispatchRequest): Promise<DispatchResult> {
    const res = await this.exchange.send({
      partnerId: this.config.id,
      method: 'POST',
      path: this.config.dispatch.path,
      body: req,
      headers: { 'content-type': 'application/json', 'idempotency-key': req.requestNo },
      timeoutMs: this.config.dispatch.timeoutMs,
    });
    const durationMs = res.durationMs;
    if (!res.ok) {
      const { errorClass, kind } = classifyTransportError(res.code);
      return { kind, durationMs, error: { class: errorClass, message: res.message } };
    }
    const { kind, errorClass } = classifyDispatchStatus(res.status);
    const result: DispatchResult = { kind, durationMs, httpStatus: res.status };
    if (kind === 'received') {
      const mapped = mapPartnerBody(this.config, res.data, false);
      if (mapped.ok) result.report = mapped.report;
      return result;
    }
    result.error = { class: errorClass ?? 'unknown', message: `partner answered HTTP ${res.status}`, httpStatus: res.status };
    const retryAfterMs = RETRYABLE_4XX.has(res.status) || res.status === 503 ? parseRetryAfter(res.retryAfter, this.clock.now()) : undefined;
    if (retryAfterMs !== undefined) result.retryAfterMs = retryAfterMs;
    return result;
  }

  private async queryStatus(requestNo: string): Promise<StatusResult> {
    const res = await this.exchange.send({
      partnerId: this.config.id,
      method: 'GET',
      path: this.config.status.path.replace('{requestNo}', encodeURIComponent(requestNo)),
      timeoutMs: this.config.status.timeoutMs,
    });
    const durationMs = res.durationMs;
    if (!res.ok) {
      const { errorClass } = classifyTransportError(res.code);
      return { kind: 'error', durationMs, error: { class: errorClass, message: res.message } };
    }
    if (res.status === 404) return { kind: 'not_found', durationMs };
    if (res.status >= 200 && res.status < 300) {
      const mapped = mapPartnerBody(this.config, res.data, false);
      if (mapped.ok) return { kind: 'found', report: mapped.report, durationMs };
      return { kind: 'error', durationMs, error: { class: 'unknown', message: `unreadable status answer: ${mapped.reason}`, httpStatus: res.status } };
    }
    const error: PartnerCallError = {
      class: res.status >= 500 ? 'http_5xx' : res.status >= 400 ? 'http_4xx' : 'unknown',
      message: `partner answered HTTP ${res.status}`,
      httpStatus: res.status,
    };
    const retryAfterMs = parseRetryAfter(res.retryAfter, this.clock.now());
    return retryAfterMs === undefined ? { kind: 'error', error, durationMs } : { kind: 'error', error, durationMs, retryAfterMs };
  }
}
