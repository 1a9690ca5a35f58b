import express, { Router } from 'express';
import type { CallbackService } from './callback-service';

/** `POST /v1/callbacks/{partner}`: partner-facing, authenticated by signature rather than API key. */
export function callbackRoutes(service: CallbackService, maxBodyBytes: number): Router {
  const router = Router();
  // The raw bytes are what the signature covers, so the body is not parsed before verification.
  const rawBody = express.raw({ type: () => true, limit: maxBodyBytes });
  router.post('/v1/callbacks/:partner', rawBody, async (req, res) => {
    const gone = new AbortController();
    res.on('close', () => {
      // Only a client that left before its answer is "gone"; aborting after every answer costs a DOMException.
      if (!res.writableFinished) gone.abort();
    });
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const answer = await service.receive(req.params.partner, body, req.headers, gone.signal);
    res.status(answer.status).json({ outcome: answer.outcome });
  });
  return router;
}
