import express, { Router } from 'express';
import { keyLabel } from '../http/auth';
import { parseOr422, requireJsonBody } from '../http/validate';
import { createTaskBodySchema, getTaskQuerySchema, listTasksQuerySchema } from './task-schemas';
import { toApiEvent, toApiTask, type TaskService } from './task-service';
import type { PartnerRegistry } from '../partners/partner-registry';

/** The client API over HTTP: parsing, status codes and headers only; the work is in TaskService. */
export function taskRoutes(service: TaskService, partners: PartnerRegistry, maxBodyBytes: number): Router {
  const router = Router();
  const jsonBody = express.json({ limit: maxBodyBytes, type: ['application/json', 'application/*+json'] });

  router.post('/v1/tasks', requireJsonBody, jsonBody, async (req, res) => {
    const body = parseOr422(createTaskBodySchema, req.body, 'task');
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
    if (waitSeconds === 0) {
      res.json(toApiTask(await service.get(req.params.id)));
      return;
    }
    // Stop waiting as soon as the client goes away.
    const gone = new AbortController();
    res.on('close', () => {
      // Only a client that left before its answer is "gone"; aborting after every answer costs a DOMException.
      if (!res.writableFinished) gone.abort();
    });
    res.json(toApiTask(await service.getWhenFinal(req.params.id, waitSeconds, gone.signal)));
  });

  router.get('/v1/tasks/:id/events', async (req, res) => {
    const events = await service.events(req.params.id);
    res.json({ items: events.map(toApiEvent) });
  });

  router.post('/v1/tasks/:id/reconcile', async (req, res) => {
    res.status(202).json(toApiTask(await service.requestReconcile(req.params.id, keyLabel(res))));
  });

  router.get('/v1/partners/:partner/tasks/:requestNo', async (req, res) => {
    res.json(toApiTask(await service.getByRequestNo(req.params.partner, req.params.requestNo)));
  });

  router.get('/v1/partners', (_req, res) => {
    res.json({ items: partners.list().map((p) => ({ id: p.config.id, baseUrl: p.config.baseUrl })) });
  });

  return router;
}
