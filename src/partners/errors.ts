/** The error classes of SERVICE.md's `partner_errors_total{class}`. */
export type PartnerErrorClass = 'connect' | 'timeout' | 'http_4xx' | 'http_5xx' | 'unknown';

/** How a dispatch ended, in the terms that decide what happens to the task. */
export type DispatchKind = 'received' | 'refused' | 'transient' | 'ambiguous';

/** What we record on the task as `error` when a partner call fails. */
export interface PartnerCallError {
  class: PartnerErrorClass;
  message: string;
  httpStatus?: number;
}

/** Error codes raised before a byte of the request could reach the partner: safe to send again. */
const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ERR_INVALID_URL']);
const TIMEOUT_CODES = new Set(['ECONNABORTED', 'ETIMEDOUT', 'ERR_CANCELED', 'ABORT_ERR', 'UND_ERR_CONNECT_TIMEOUT']);

/** HTTP statuses that say "try later", not "no". */
export const RETRYABLE_4XX: ReadonlySet<number> = new Set([408, 425, 429]);

/** Classifies a failed call from its error code (no HTTP answer came back). */
export function classifyTransportError(code: string | undefined): { errorClass: PartnerErrorClass; kind: 'transient' | 'ambiguous' } {
  if (code && CONNECT_CODES.has(code)) return { errorClass: 'connect', kind: 'transient' };
  // A timeout may have struck after the request left, and a reset may follow receipt: never assume either
  // way; the status endpoint is asked before anything is sent again.
  if (code && TIMEOUT_CODES.has(code)) return { errorClass: 'timeout', kind: 'ambiguous' };
  return { errorClass: 'unknown', kind: 'ambiguous' };
}

/** Classifies an HTTP answer to a dispatch. */
export function classifyDispatchStatus(status: number): { kind: DispatchKind; errorClass?: PartnerErrorClass } {
  if (status >= 200 && status < 300) return { kind: 'received' };
  if (RETRYABLE_4XX.has(status)) return { kind: 'transient', errorClass: 'http_4xx' };
  if (status >= 400 && status < 500) return { kind: 'refused', errorClass: 'http_4xx' };
  if (status >= 500) return { kind: 'transient', errorClass: 'http_5xx' };
  // 1xx/3xx (redirects are not followed): the partner did not confirm receipt; treat as unclear.
  return { kind: 'ambiguous', errorClass: 'unknown' };
}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds from `now`; undefined when absent or bad. */
export function parseRetryAfter(header: unknown, now: Date): number | undefined {
  if (typeof header !== 'string' || header.trim() === '') return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now.getTime());
}
