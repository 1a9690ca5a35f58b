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
  router.post('/v1/tasks/:id/notifications/:nid/redeliver', (req, res, next) => {
    const { id, nid } = req.params;
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
