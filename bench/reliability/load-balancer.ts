import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** Largest request body the balancer buffers (it buffers so a refused connection can go to the next replica). */
const MAX_BODY_BYTES = 1024 * 1024;
/** An upstream that hangs longer than this is answered 504 (long-polls hold at most 60 s). */
const UPSTREAM_TIMEOUT_MS = 70_000;

export interface BalancerStats {
  requests: number;
  /** Connections refused by a replica (it was down): tried on the next one, invisible to the caller. */
  refusedRetried: number;
  /** Answered 502: the replica died mid-request, or none was up. */
  badGateway: number;
}

/**
 * A small round-robin HTTP load balancer in front of the replicas, as a platform would put one: clients
 * and the partner's callbacks reach "the service" at one address whichever replicas are alive. A replica
 * that refuses the connection (it is down) is skipped and the request goes to the next; a replica that
 * dies while handling a request gives the caller a 502, which is what the caller would see in production.
 */
export class LoadBalancer {
  readonly stats: BalancerStats = { requests: 0, refusedRetried: 0, badGateway: 0 };
  private next = 0;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

  private constructor(
    private readonly server: http.Server,
    readonly url: string,
    private readonly upstreams: () => readonly string[],
  ) {}

  /** @param upstreams the base URLs of the replicas, read on every request (restarts keep their port). */
  static async start(upstreams: () => readonly string[]): Promise<LoadBalancer> {
    let balancer: LoadBalancer | undefined;
    const server = http.createServer((req, res) => void balancer!.handle(req, res));
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as AddressInfo).port;
    balancer = new LoadBalancer(server, `http://127.0.0.1:${port}`, upstreams);
    return balancer;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    this.agent.destroy();
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.stats.requests += 1;
    let body: Buffer;
    try {
      body = await readBody(req);
    } catch {
      res.writeHead(413).end();
      return;
    }
    const targets = this.upstreams();
    const start = this.next++;
    for (let i = 0; i < targets.length; i++) {
      const target = targets[(start + i) % targets.length]!;
      const outcome = await this.forward(target, req, body, res);
      if (outcome !== 'refused') return;
      this.stats.refusedRetried += 1;
    }
    this.stats.badGateway += 1;
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end('no replica available');
    else res.destroy();
  }

  /** 'refused': nothing reached the replica, try another; 'done': the caller got an answer or a 502. */
  private forward(target: string, req: http.IncomingMessage, body: Buffer, res: http.ServerResponse): Promise<'refused' | 'done'> {
    return new Promise((resolve) => {
      const url = new URL(req.url ?? '/', target);
      const headers = { ...req.headers, host: url.host, 'content-length': String(body.length) };
      delete headers['transfer-encoding'];
      const upstream = http.request(url, { method: req.method, headers, agent: this.agent, timeout: UPSTREAM_TIMEOUT_MS }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
        answer.on('error', () => res.destroy());
        answer.on('end', () => resolve('done'));
        answer.on('aborted', () => {
          res.destroy();
          resolve('done');
        });
      });
      upstream.on('timeout', () => upstream.destroy(new Error('upstream timeout')));
      upstream.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNREFUSED') return resolve('refused');
        this.stats.badGateway += 1;
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`upstream failed: ${err.code ?? err.message}`);
        else res.destroy();
        resolve('done');
      });
      // The caller hung up: stop waiting for the replica too.
      res.on('close', () => {
        if (!res.writableFinished) upstream.destroy();
      });
      upstream.end(body);
    });
  }
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
