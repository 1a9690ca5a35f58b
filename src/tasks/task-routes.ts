import express, { Router } from 'express';
import { parseOr422, requireJsonBody } from '../http/validate';
import { getTaskQuerySchema, listEventsQuerySchema, listTasksQuerySchema, parseCreateTaskBody } from './task-schemas';
import { toApiEvent, toApiTask, type TaskService } from './task-service';
import type { PartnerRegistry } from '../partners/partner-registry';

/**
 * Counts the `waitSeconds` reads held open in this process. Each holds a socket, memory and a share of
 * the wake-up work; past the cap a read is answered at once with the task's current state, which a
 * long-poll client must handle anyway (the wait may end before the task is final).
 */
export class LongPollLimit {
  private held = 0;

  constructor(readonly max: number) {}

  get active(): number {
    return this.held;
  }

  /** Takes a place; false when all are taken. */
  tryAcquire(): boolean {
    if (this.held >= this.max) return false;
    this.held++;
    return true;
  }

  release(): void {
    this.held--;
  }
}

/** The client API over HTTP: parsing, status codes and headers only; the work is in TaskService. */
export function taskRoutes(service: TaskService, partners: PartnerRegistry, maxBodyBytes: number, longPolls = new LongPollLimit(Number.MAX_SAFE_INTEGER)): Router {
  const router = Router();
  const jsonBody = express.json({ limit: maxBodyBytes, type: ['application/json', 'application/*+json'] });

  router.post('/v1/tasks', requireJsonBody, jsonBody, async (req, res) => {
    const body = parseCreateTaskBody(req.body);
    const { created, task } = await service.create(body);
    if (created) {
      res.status(201).location(`/v1/tasks/${task.id}`).json(toApiTask(task));
    } else {
      res.status(200).set('Idempotent-Replayed', 'true').location(`/v1/tasks/${task.id}`).json(toApiTask(task));
    }
  });

  router.get('/v1/tasks', async (req, res) => {
    const query = parseOr422(listTasksQuerySchema, req.query, 'query');
    const { rows, nextCursor } = await service.list(query);
    res.json({ items: rows.map(toApiTask), nextCursor });
  });

  router.get('/v1/tasks/:id', async (req, res) => {
    const { waitSeconds } = parseOr422(getTaskQuerySchema, req.query, 'query');
    if (waitSeconds === 0 || !longPolls.tryAcquire()) {
      res.json(toApiTask(await service.get(req.params.id)));
      return;
    }
    // Stop waiting as soon as the client goes away.
    const gone = new AbortController();
    res.on('close', () => {
      // Only a client that left before its answer is "gone"; aborting after every answer costs a DOMException.
      if (!res.writableFinished) gone.abort();
    });
    try {
      res.json(toApiTask(await service.getWhenFinal(req.params.id, waitSeconds, gone.signal)));
    } finally {
      longPolls.release();
    }
  });

  router.get('/v1/tasks/:id/events', async (req, res) => {
    const query = parseOr422(listEventsQuerySchema, req.query, 'query');
    const { rows, nextCursor } = await service.events(req.params.id, query);
    res.json({ items: rows.map(toApiEvent), nextCursor });
  });

  router.post('/v1/tasks/:id/reconcile', async (req, res) => {
    res.status(202).json(toApiTask(await service.requestReconcile(req.params.id)));
  });

  router.get('/v1/partners/:partner/tasks/:requestNo', async (req, res) => {
    res.json(toApiTask(await service.getByRequestNo(req.params.partner, req.params.requestNo)));
  });

  router.get('/v1/partners', (_req, res) => {
    res.json({ items: partners.list().map((p) => ({ id: p.config.id, baseUrl: withoutCredentials(p.config.baseUrl) })) });
  });

  return router;
}

/**
 * A base URL fit to show: no user name or password (`https://user:secret@host`) and no query string,
 * where partners' tokens tend to hide.
 */
export function withoutCredentials(baseUrl: string): string {
  const url = new URL(baseUrl);
  return `${url.protocol}//${url.host}${url.pathname}`.replace(/\/+$/, '');
}
