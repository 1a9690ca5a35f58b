import { randomUUID } from 'node:crypto';
import type { RequestHandler } from 'express';
import type { Level, Logger } from 'pino';

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Ops probes are scraped every few seconds; logging each would drown the useful lines. */
const NOT_LOGGED = new Set(['/healthz', '/readyz', '/metrics']);

/** The request id: the caller's `X-Request-Id` when sane (1-128 of `A-Za-z0-9._:-`), else a new UUID. */
export function requestIdFor(given: unknown): string {
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID();
}

/**
 * Gives each request an id, echoes it in `X-Request-Id`, and logs the request once it is answered, as one
 * JSON line: `req` {id, method, url}, `res` {statusCode}, `responseTime` (ms), and `msg` "request
 * completed", "request aborted" (the client went away first) or "request errored" (5xx). Level: info,
 * warn for 4xx, error for 5xx; a line below LOG_LEVEL costs nothing but the level check.
 *
 * The shape is pino-http's, which this replaced: pino-http builds a child logger per request (the request
 * serialised and stringified into its bindings) whether or not a line is written, and at LOG_LEVEL=warn
 * that was 15-20 % of the service's CPU per created task (`npm run bench -- create`).
 */
export function requestLogging(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const id = requestIdFor(req.headers['x-request-id']);
    res.setHeader('X-Request-Id', id);
    if (!NOT_LOGGED.has(req.path)) {
      const started = Date.now();
      const done = () => {
        res.removeListener('finish', done);
        res.removeListener('close', done);
        const status = res.statusCode;
        const level: Level = status >= 500 ? 'error' : status >= 400 ? 'warn' : 'info';
        if (!logger.isLevelEnabled(level)) return;
        const msg = status >= 500 ? 'request errored' : !req.readableAborted && res.writableEnded ? 'request completed' : 'request aborted';
        logger[level]({ req: { id, method: req.method, url: req.originalUrl }, res: { statusCode: status }, responseTime: Date.now() - started }, msg);
      };
      res.on('finish', done);
      res.on('close', done);
    }
    next();
  };
}
