import { Router } from 'express';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema';
import { DATABASE_RETRY_AFTER_SECONDS } from '../db/database';
import { migrationsAreCurrent } from '../db/migrator';
import type { Metrics } from '../observability/metrics';
import { STARTING_RETRY_AFTER_SECONDS } from './lifecycle';
import { sendProblem } from './problem';

/** Readiness looks at the database at most this often; probes from many places must not load it. */
const READINESS_CACHE_MS = 1000;

/** Health, readiness, metrics and the OpenAPI document: no key needed. */
export function opsRoutes(
  db: Kysely<Database>,
  metrics: Metrics,
  openApi: () => Record<string, unknown>,
  isDraining: () => boolean,
  onDatabaseError?: (err: unknown) => void,
  isStarting: () => boolean = () => false,
): Router {
  const router = Router();
  let cached: { at: number; ready: boolean; detail: string } | undefined;

  async function readiness(): Promise<{ ready: boolean; detail: string }> {
    if (cached && Date.now() - cached.at < READINESS_CACHE_MS) return cached;
    let result: { ready: boolean; detail: string };
    try {
      await sql`select 1`.execute(db);
      result = (await migrationsAreCurrent(db)) ? { ready: true, detail: 'ok' } : { ready: false, detail: 'migrations are not current' };
    } catch (err) {
      // The driver's text (host names, SQL, server messages) goes to the log, never into the answer.
      onDatabaseError?.(err);
      result = { ready: false, detail: 'the database does not answer' };
    }
    cached = { at: Date.now(), ...result };
    return result;
  }

  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  router.get('/readyz', async (_req, res) => {
    if (isDraining()) return sendProblem(res, 503, 'shutting down');
    if (isStarting()) {
      res.set('Retry-After', String(STARTING_RETRY_AFTER_SECONDS));
      return sendProblem(res, 503, 'starting: waiting for the database');
    }
    const { ready, detail } = await readiness();
    if (!ready) {
      res.set('Retry-After', String(DATABASE_RETRY_AFTER_SECONDS));
      return sendProblem(res, 503, detail);
    }
    res.json({ status: 'ready' });
  });

  router.get('/metrics', async (_req, res) => {
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  let doc: Record<string, unknown> | undefined;
  router.get('/openapi.json', (_req, res) => {
    res.json((doc ??= openApi()));
  });

  return router;
}
