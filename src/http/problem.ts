import type { ErrorRequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import { ZodError } from 'zod';
import { classifyDatabaseError, DATABASE_RETRY_AFTER_SECONDS } from '../db/database';

/** One bad field of a refused request. */
export interface FieldError {
  field: string;
  message: string;
}

const TITLES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/**
 * An error that becomes an RFC 9457 problem answer. Services throw it; the one error handler below
 * renders it, for routes and background jobs alike.
 */
export class HttpProblem extends Error {
  override name = 'HttpProblem';
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly errors?: FieldError[],
    readonly headers: Record<string, string> = {},
  ) {
    super(detail);
  }
}

export function problemType(status: number): string {
  return `https://callback-reconciler.dev/problems/${status}`;
}

export function sendProblem(res: Response, status: number, detail: string, errors?: FieldError[]): void {
  res
    .status(status)
    .type('application/problem+json')
    .json({ type: problemType(status), title: TITLES[status] ?? 'Error', status, detail, ...(errors ? { errors } : {}) });
}

/** Field errors from a zod failure, with dotted field paths (`payload`, `metadata.x`, `limit`). */
export function fieldErrors(err: ZodError, prefix = ''): FieldError[] {
  return err.issues.map((i) => {
    const path = i.path.map(String).join('.');
    const field = i.code === 'unrecognized_keys' ? [prefix + path, ...i.keys].filter(Boolean).join('.') : prefix + path || '(body)';
    return { field, message: i.message };
  });
}

/** Renders every error as problem+json; unexpected ones are logged and answered 500 without internals. */
export function problemHandler(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    if (res.headersSent) return;
    if (err instanceof HttpProblem) {
      res.set(err.headers);
      return sendProblem(res, err.status, err.detail, err.errors);
    }
    if (err instanceof ZodError) return sendProblem(res, 422, 'the request has invalid fields', fieldErrors(err));
    const e = err as { type?: string; status?: number; message?: string };
    // body-parser's errors
    if (e.type === 'entity.parse.failed') return sendProblem(res, 400, 'the body is not valid JSON');
    if (e.type === 'entity.too.large') return sendProblem(res, 413, 'the body is larger than MAX_BODY_BYTES');
    if (e.type === 'encoding.unsupported' || e.type === 'charset.unsupported') return sendProblem(res, 415, e.message ?? 'unsupported encoding');
    if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) return sendProblem(res, e.status, e.message ?? 'bad request');
    const log = (req as { log?: Logger }).log ?? logger;
    // Database errors never reach the client as text: their messages carry SQL, values and server details.
    const dbError = classifyDatabaseError(err);
    if (dbError === 'unavailable') {
      log.warn({ err }, 'database unavailable');
      res.set('Retry-After', String(DATABASE_RETRY_AFTER_SECONDS));
      return sendProblem(res, 503, 'the database is unavailable; retry later');
    }
    if (dbError === 'unstorable') {
      log.error({ err }, 'the database refused a value the input checks let through');
      return sendProblem(res, 422, 'the request carries a value that cannot be stored');
    }
    (req as { log?: Logger }).log?.error({ err }, 'unhandled error') ?? logger.error({ err }, 'unhandled error');
    return sendProblem(res, 500, 'an unexpected error occurred; it has been logged');
  };
}
