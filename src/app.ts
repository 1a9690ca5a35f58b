import express, { type Express } from 'express';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from './db/schema';
import { requireApiKey } from './http/auth';
import type { HttpDrain } from './http/drain';
import { httpMetrics } from './http/http-metrics';
import type { Lifecycle } from './http/lifecycle';
import { buildOpenApiDocument, type OpenApiPaths } from './http/openapi';
import { opsRoutes } from './http/ops-routes';
import { HttpProblem, problemHandler } from './http/problem';
import { requestLogging } from './http/request-context';
import type { Metrics } from './observability/metrics';
import type { PartnerRegistry } from './partners/partner-registry';
import { LongPollLimit, taskRoutes } from './tasks/task-routes';
import type { TaskService } from './tasks/task-service';

export interface AppDeps {
  db: Kysely<Database>;
  logger: Logger;
  metrics: Metrics;
  partners: PartnerRegistry;
  tasks: TaskService;
  apiKeys: readonly string[];
  maxBodyBytes: number;
  /** Caps the `waitSeconds` reads held open at once; beyond it they are answered at once. */
  longPolls?: LongPollLimit;
  drain: HttpDrain;
  /** Routers mounted before the client API and outside its key check (the partner-facing callbacks). */
  partnerFacing?: express.Router[];
  openApiExtraPaths?: OpenApiPaths;
  /** Named in the OpenAPI document's `servers` (PUBLIC_BASE_URL). */
  publicBaseUrl?: string;
  /** Start-up phase: API routes answer 503 + Retry-After until the database is there (absent: serving at once). */
  lifecycle?: Lifecycle;
}

/** The express app only (no listen), so tests drive it in-process. */
export function buildApp(deps: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');
  app.use(httpMetrics(deps.metrics));
  app.use(requestLogging(deps.logger));
  app.use(deps.drain.middleware);
  const openApi = () => buildOpenApiDocument({ ...(deps.publicBaseUrl ? { serverUrl: deps.publicBaseUrl } : {}), ...(deps.openApiExtraPaths ? { extraPaths: deps.openApiExtraPaths } : {}) });
  const lifecycle = deps.lifecycle;
  app.use(
    opsRoutes(deps.db, deps.metrics, openApi, () => deps.drain.isDraining, (err) => deps.logger.warn({ err }, 'readiness: the database does not answer'), () => lifecycle?.isStarting ?? false),
  );
  if (lifecycle) app.use(lifecycle.gate);
  for (const router of deps.partnerFacing ?? []) app.use(router);
  app.use('/v1', requireApiKey(deps.apiKeys));
  app.use(taskRoutes(deps.tasks, deps.partners, deps.maxBodyBytes, deps.longPolls ?? new LongPollLimit(Number.MAX_SAFE_INTEGER)));
  app.use((req, _res, next) => next(new HttpProblem(404, `no route for ${req.method} ${req.path}`)));
  app.use(problemHandler(deps.logger));
  return app;
}
