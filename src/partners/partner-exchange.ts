import http from 'node:http';
import https from 'node:https';
import axios, { AxiosError, type AxiosInstance } from 'axios';
import type { PartnerConfig } from '../config/partners';

/** The largest partner answer we read; anything bigger is a misbehaving partner. */
const MAX_PARTNER_RESPONSE_BYTES = 1024 * 1024;
/** Extra time the AbortSignal allows over axios' own timeout, so axios reports the timeout when it can. */
const ABORT_SLACK_MS = 250;

/** One HTTP call to a partner, as plain data (it crosses to the partner I/O thread by structured clone). */
export interface ExchangeRequest {
  partnerId: string;
  method: 'GET' | 'POST';
  /** Path under the partner's baseUrl. */
  path: string;
  /** Sent as JSON (serialised with JSON.stringify, every key kept). */
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs: number;
}

/** What came back, as plain data: an HTTP answer, or the transport error that stood for one. */
export type ExchangeResult =
  | { ok: true; status: number; data: unknown; retryAfter?: string; durationMs: number }
  | { ok: false; code?: string; message: string; durationMs: number };

/** Sends partner HTTP calls. The interpretation (what a status or an error means for a task) is PartnerClient's. */
export interface PartnerExchange {
  send(req: ExchangeRequest): Promise<ExchangeResult>;
  close(): void;
}

/**
 * The HTTP side of every partner call: one axios instance per partner with keep-alive agents, bounded by
 * axios' timeout and by an AbortSignal (axios' timeout alone does not cover DNS and connect), no redirects
 * followed, answers above 1 MiB refused. It never throws: a failure is an `ok: false` result.
 */
export class AxiosExchange implements PartnerExchange {
  private readonly byId: ReadonlyMap<string, AxiosInstance>;

  constructor(configs: readonly PartnerConfig[], maxSockets = 256) {
    this.byId = new Map(
      configs.map((config) => [
        config.id,
        axios.create({
          baseURL: config.baseUrl,
          headers: { ...config.headers, 'user-agent': 'callback-reconciler' },
          maxRedirects: 0,
          maxContentLength: MAX_PARTNER_RESPONSE_BYTES,
          validateStatus: () => true,
          httpAgent: new http.Agent({ keepAlive: true, maxSockets }),
          httpsAgent: new https.Agent({ keepAlive: true, maxSockets }),
          transitional: { clarifyTimeoutError: true },
        }),
      ]),
    );
  }

  async send(req: ExchangeRequest): Promise<ExchangeResult> {
    const started = performance.now();
    const instance = this.byId.get(req.partnerId);
    if (!instance) return { ok: false, code: 'ERR_UNKNOWN_PARTNER', message: `no partner "${req.partnerId}" on this exchange`, durationMs: 0 };
    try {
      const res = await instance.request({
        method: req.method,
        url: req.path,
        // Serialised here, not by axios: axios' own object serialisation drops the keys `constructor` and
        // `prototype` at any depth, so a task payload holding them reached the partner altered.
        ...(req.body === undefined ? {} : { data: JSON.stringify(req.body) }),
        timeout: req.timeoutMs,
        signal: AbortSignal.timeout(req.timeoutMs + ABORT_SLACK_MS),
        ...(req.headers ? { headers: req.headers } : {}),
      });
      const retryAfter: unknown = res.headers['retry-after'];
      const result: ExchangeResult = { ok: true, status: res.status, data: res.data as unknown, durationMs: performance.now() - started };
      if (typeof retryAfter === 'string') result.retryAfter = retryAfter;
      return result;
    } catch (err) {
      const code = errorCode(err);
      return { ok: false, ...(code === undefined ? {} : { code }), message: errorMessage(err), durationMs: performance.now() - started };
    }
  }

  /** Closes idle keep-alive sockets (shutdown, tests). */
  close(): void {
    for (const instance of this.byId.values()) {
      (instance.defaults.httpAgent as http.Agent).destroy();
      (instance.defaults.httpsAgent as https.Agent).destroy();
    }
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
