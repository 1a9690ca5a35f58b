import http from 'node:http';
import https from 'node:https';
import axios, { AxiosError, type AxiosInstance, type AxiosResponse } from 'axios';
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
import type { BreakerState, Deferral, PartnerGuard } from './partner-guard';

/** The largest partner answer we read; anything bigger is a misbehaving partner. */
const MAX_PARTNER_RESPONSE_BYTES = 1024 * 1024;
/** Extra time the AbortSignal allows over axios' own timeout, so axios reports the timeout when it can. */
const ABORT_SLACK_MS = 250;

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
 * Talks HTTP to one partner: dispatch and status query, each bounded by axios' timeout and by an
 * AbortSignal (axios' timeout alone does not cover DNS and connect), with the configured headers and
 * keep-alive connections. It classifies outcomes; it never decides what happens to a task.
 */
export class PartnerClient {
  private readonly http: AxiosInstance;

  constructor(
    readonly config: PartnerConfig,
    private readonly clock: Clock,
    private readonly guard?: PartnerGuard,
    maxSockets = 256,
  ) {
    this.http = axios.create({
      baseURL: config.baseUrl,
      headers: { ...config.headers, 'user-agent': 'callback-reconciler' },
      maxRedirects: 0,
      maxContentLength: MAX_PARTNER_RESPONSE_BYTES,
      validateStatus: () => true,
      httpAgent: new http.Agent({ keepAlive: true, maxSockets }),
      httpsAgent: new https.Agent({ keepAlive: true, maxSockets }),
      transitional: { clarifyTimeoutError: true },
    });
  }

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
    const timeoutMs = this.config.dispatch.timeoutMs;
    const started = performance.now();
    let res: AxiosResponse;
    try {
      res = await this.http.post(this.config.dispatch.path, req, {
        timeout: timeoutMs,
        signal: AbortSignal.timeout(timeoutMs + ABORT_SLACK_MS),
        headers: { 'content-type': 'application/json', 'idempotency-key': req.requestNo },
      });
    } catch (err) {
      const { errorClass, kind } = classifyTransportError(errorCode(err));
      return { kind, durationMs: performance.now() - started, error: { class: errorClass, message: errorMessage(err) } };
    }
    const durationMs = performance.now() - started;
    const { kind, errorClass } = classifyDispatchStatus(res.status);
    const result: DispatchResult = { kind, durationMs, httpStatus: res.status };
    if (kind === 'received') {
      const mapped = mapPartnerBody(this.config, res.data, false);
      if (mapped.ok) result.report = mapped.report;
      return result;
    }
    result.error = { class: errorClass ?? 'unknown', message: `partner answered HTTP ${res.status}`, httpStatus: res.status };
    const retryAfterMs = RETRYABLE_4XX.has(res.status) || res.status === 503 ? parseRetryAfter(res.headers['retry-after'], this.clock.now()) : undefined;
    if (retryAfterMs !== undefined) result.retryAfterMs = retryAfterMs;
    return result;
  }

  private async queryStatus(requestNo: string): Promise<StatusResult> {
    const timeoutMs = this.config.status.timeoutMs;
    const path = this.config.status.path.replace('{requestNo}', encodeURIComponent(requestNo));
    const started = performance.now();
    let res: AxiosResponse;
    try {
      res = await this.http.get(path, { timeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs + ABORT_SLACK_MS) });
    } catch (err) {
      const { errorClass } = classifyTransportError(errorCode(err));
      return { kind: 'error', durationMs: performance.now() - started, error: { class: errorClass, message: errorMessage(err) } };
    }
    const durationMs = performance.now() - started;
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
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'], this.clock.now());
    return retryAfterMs === undefined ? { kind: 'error', error, durationMs } : { kind: 'error', error, durationMs, retryAfterMs };
  }

  /** Closes idle keep-alive sockets (shutdown, tests). */
  close(): void {
    (this.http.defaults.httpAgent as http.Agent).destroy();
    (this.http.defaults.httpsAgent as https.Agent).destroy();
  }
}

function errorCode(err: unknown): string | undefined {
  if (err instanceof AxiosError) {
    const cause = err.cause as { code?: string } | undefined;
    // Prefer the socket's own code (ECONNREFUSED…) over axios' wrapper code (ERR_BAD_REQUEST…).
    if (err.code === 'ETIMEDOUT' || err.code === 'ECONNABORTED' || err.code === 'ERR_CANCELED') return err.code;
    return cause?.code ?? err.code;
  }
  return (err as { code?: string } | undefined)?.code;
}

function errorMessage(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).slice(0, 500);
}
