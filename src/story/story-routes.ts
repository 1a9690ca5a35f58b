import { Router } from 'express';
import { keyLabel } from '../http/auth';
import { parseOr422 } from '../http/validate';
import { storyPageQuerySchema } from './story-schemas';
import type { StoryService } from './story-service';

/** Read endpoints behind the operator console (and for anyone else with a key). Mounted behind the key check. */
export function storyRoutes(story: StoryService, authRequired: boolean): Router {
  const router = Router();

  router.get('/v1/me', (_req, res) => {
    res.json({ label: keyLabel(res), authRequired });
  });

  router.get('/v1/overview', async (_req, res) => {
    res.set('Cache-Control', 'no-store').json(await story.overview());
  });

  router.get('/v1/tasks/:id/attempts', async (req, res) => {
    const { limit, cursor } = parseOr422(storyPageQuerySchema, req.query, 'query');
    res.json(await story.partnerCalls(req.params.id, limit, cursor));
  });

  router.get('/v1/tasks/:id/callbacks', async (req, res) => {
    const { limit, cursor } = parseOr422(storyPageQuerySchema, req.query, 'query');
    res.json(await story.callbacks(req.params.id, limit, cursor));
  });

  return router;
}
