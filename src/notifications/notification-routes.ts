import { Router } from 'express';
import { toApiNotification, type NotificationService } from './notification-service';

/** The notification API over HTTP (behind the API key); the work is in NotificationService. */
export function notificationRoutes(service: NotificationService): Router {
  const router = Router();

  router.get('/v1/tasks/:id/notifications', async (req, res) => {
    const rows = await service.list(req.params.id);
    res.json({ items: rows.map(toApiNotification) });
  });

  router.post('/v1/tasks/:id/notifications/:nid/redeliver', async (req, res) => {
    res.status(202).json(toApiNotification(await service.redeliver(req.params.id, req.params.nid)));
  });

  return router;
}
