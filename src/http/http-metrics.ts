import type { Request, RequestHandler } from 'express';
import type { Metrics } from '../observability/metrics';

/** Methods kept as they are in the `method` label; anything else is `OTHER`, so a client cannot mint series. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/**
 * The route template of a request (`/v1/tasks/{id}`, in the OpenAPI document's spelling), never its raw
 * path: ids in labels would make one series per task. Requests that matched no route are `unmatched`.
 */
export function routeTemplate(req: Request): string {
  const path = (req.route as { path?: unknown } | undefined)?.path;
  if (typeof path !== 'string') return 'unmatched';
  return `${req.baseUrl}${path}`.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

/** Counts every answer (`http_requests_total`) and times it (`http_request_duration_seconds`) once it is finished. */
export function httpMetrics(metrics: Metrics): RequestHandler {
  return (req, res, next) => {
    const started = process.hrtime.bigint();
    res.once('finish', () => {
      const method = KNOWN_METHODS.has(req.method) ? req.method : 'OTHER';
      const route = routeTemplate(req);
      metrics.httpRequests.inc({ method, route, status: String(res.statusCode) });
      metrics.httpRequestDuration.observe({ method, route }, Number(process.hrtime.bigint() - started) / 1e9);
    });
    next();
  };
}
