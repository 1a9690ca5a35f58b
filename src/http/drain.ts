import type { ServerResponse } from 'node:http';
import type { RequestHandler } from 'express';

/**
 * Graceful HTTP drain. Once it begins, every answer (including those of requests already in flight)
 * carries `Connection: close`, so Node closes each kept-alive connection right after its answer and no
 * client sends a new request on a socket the server is about to close (closing "idle" sockets on a timer
 * instead races with clients and resets requests never processed).
 */
export class HttpDrain {
  private draining = false;
  private readonly unanswered = new Set<ServerResponse>();

  readonly middleware: RequestHandler = (_req, res, next) => {
    if (this.draining) {
      res.setHeader('Connection', 'close');
    } else {
      this.unanswered.add(res);
      res.once('close', () => this.unanswered.delete(res));
    }
    next();
  };

  begin(): void {
    this.draining = true;
    for (const res of this.unanswered) if (!res.headersSent) res.setHeader('Connection', 'close');
  }

  get isDraining(): boolean {
    return this.draining;
  }
}
