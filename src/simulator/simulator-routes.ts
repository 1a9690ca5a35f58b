import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import express, { type ErrorRequestHandler, type Express, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { readJsonBody, sendJson } from './json-http';
import type { PartnerSimulator } from './partner-simulator';

/** Dispatch bodies carry arbitrary task payloads; generous so the simulator never refuses what the service accepts. */
export const MAX_DISPATCH_BODY_BYTES = 10 * 1024 * 1024;
/** The placeholder in the status path template, as in the partners file. */
export const REQUEST_NO_PLACEHOLDER = '{requestNo}';

/** Where the simulator serves the partner protocol. */
export interface SimulatorPaths {
  dispatch: string;
  status: string;
}

/**
 * The simulator's request listener. The partner protocol (the hot path) is matched and answered with
 * plain Node HTTP; everything else goes to a small express app with the `/_sim/*` control routes, so a
 * test or benchmark in another process can read stats, reset, and take the partner down.
 *
 * Paths are matched by hand, not registered as express routes, because they are data (from options) and
 * may contain characters that express's path syntax would read as patterns.
 */
export function createSimulatorListener(partner: PartnerSimulator, paths: SimulatorPaths, logger: Logger): RequestListener {
  const controlApp = buildControlApp(partner, logger);
  const statusPattern = statusPathPattern(paths.status);
  const failed = (res: ServerResponse) => (error: unknown): void => {
    logger.error({ err: error }, 'simulator request failed');
    if (res.headersSent) res.destroy();
    else sendJson(res, 500, { error: 'internal simulator error' });
  };
  return (req, res) => {
    const path = pathOf(req.url);
    if (req.method === 'POST' && path === paths.dispatch) {
      answerDispatch(partner, req, res).catch(failed(res));
      return;
    }
    const encodedRequestNo = req.method === 'GET' ? statusPattern.exec(path)?.[1] : undefined;
    if (encodedRequestNo !== undefined) {
      answerStatus(partner, encodedRequestNo, res).catch(failed(res));
      return;
    }
    void controlApp(req, res);
  };
}

async function answerDispatch(partner: PartnerSimulator, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (partner.refuseIfDown(res)) {
    req.resume();
    return;
  }
  const body = await readJsonBody(req, MAX_DISPATCH_BODY_BYTES);
  if (!body.ok) return sendJson(res, body.status, { error: body.problem });
  const idempotencyKey = req.headers['idempotency-key'];
  await partner.dispatch(body.value, typeof idempotencyKey === 'string' ? idempotencyKey : undefined, res);
}

async function answerStatus(partner: PartnerSimulator, encodedRequestNo: string, res: ServerResponse): Promise<void> {
  if (partner.refuseIfDown(res)) return;
  let requestNo: string;
  try {
    requestNo = decodeURIComponent(encodedRequestNo);
  } catch {
    return sendJson(res, 400, { error: 'requestNo is not valid percent-encoding' });
  }
  await partner.status(requestNo, res);
}

function buildControlApp(partner: PartnerSimulator, logger: Logger): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.use(express.json());
  app.get('/_sim/stats', (req, res) => {
    const requestNo = req.query['requestNo'];
    if (typeof requestNo !== 'string') return void res.json(partner.state.snapshot());
    const entry = partner.state.statsFor(requestNo);
    if (entry === undefined) return void res.status(404).json({ requestNo, error: 'never seen' });
    res.json(entry);
  });
  app.post('/_sim/reset', (_req, res) => {
    partner.reset();
    res.status(204).end();
  });
  app.post('/_sim/down', (req, res) => {
    const down: unknown = (req.body as { down?: unknown } | undefined)?.down;
    if (typeof down !== 'boolean') return void res.status(400).json({ error: 'body must be {"down": boolean}' });
    partner.setDown(down);
    res.json({ down });
  });
  app.post('/_sim/slow', (req, res) => {
    const delayMs: unknown = (req.body as { delayMs?: unknown } | undefined)?.delayMs;
    if (typeof delayMs !== 'number' || !Number.isSafeInteger(delayMs) || delayMs < 0) {
      return void res.status(400).json({ error: 'body must be {"delayMs": integer >= 0}' });
    }
    partner.setSlow(delayMs);
    res.json({ delayMs });
  });
  app.use((_req: Request, res: Response) => void res.status(404).json({ error: 'no such route' }));
  app.use(jsonErrors(logger));
  return app;
}

/** `/requests/{requestNo}` → `^/requests/([^/]+)$`, everything but the placeholder taken literally. */
export function statusPathPattern(template: string): RegExp {
  const at = template.indexOf(REQUEST_NO_PLACEHOLDER);
  if (at < 0) throw new Error(`status path "${template}" must contain ${REQUEST_NO_PLACEHOLDER}`);
  const before = template.slice(0, at);
  const after = template.slice(at + REQUEST_NO_PLACEHOLDER.length);
  return new RegExp(`^${escapeRegExp(before)}([^/]+)${escapeRegExp(after)}$`);
}

function pathOf(url: string | undefined): string {
  if (url === undefined) return '/';
  const queryAt = url.indexOf('?');
  return queryAt < 0 ? url : url.slice(0, queryAt);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Body-parser errors (bad JSON, too large) and anything unexpected, as JSON like every other answer. */
function jsonErrors(logger: Logger): ErrorRequestHandler {
  return (error: unknown, req, res, _next) => {
    const status = httpStatusOf(error);
    if (status === 500) logger.error({ err: error, method: req.method, path: req.path }, 'simulator control request failed');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.status(status).json({ error: status === 500 ? 'internal simulator error' : errorMessage(error) });
  };
}

function httpStatusOf(error: unknown): number {
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
