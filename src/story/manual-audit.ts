import { Router } from 'express';
import type { Logger } from 'pino';
import { keyLabel } from '../http/auth';
import type { TaskService } from '../tasks/task-service';

/**
 * Writes operator actions that other modules serve into the task's events (source `manual`, with the
 * key's label) once they are accepted. Mounted before every client route, so it sees the request
 * whichever router answers it; it only listens for the answer and never changes it. Today: notification
 * redelivery (`202`). A failed write is logged; the action itself has already been taken.
 */
export function manualActionAudit(tasks: TaskService, logger: Logger): Router {
  const router = Router();
  // Middleware (router.use), not a route: it answers nothing, so it must not look like an endpoint to the
  // OpenAPI route walk (test/e2e/openapi.test.ts); the endpoint is the notifications module's.
  router.use('/v1/tasks/:id/notifications/:nid/redeliver', (req, res, next) => {
    if (req.method !== 'POST' || (req.path !== '/' && req.path !== '')) return next();
    const { id, nid } = req.params as { id: string; nid: string };
    res.on('finish', () => {
      if (res.statusCode !== 202) return;
      tasks.recordManual(id, 'redeliver', keyLabel(res), { notification: nid }).catch((err: unknown) => {
        logger.warn({ err, taskId: id }, 'could not record a manual redelivery in the task events');
      });
    });
    next();
  });
  return router;
}
