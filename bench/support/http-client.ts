import http from 'node:http';

/** One answer, with the moment (performance.now()) its last byte arrived. */
export interface TimedAnswer {
  status: number;
  body: string;
  at: number;
}

/** A keep-alive agent for the runner's own requests (not autocannon's). */
export function keepAliveAgent(maxSockets = 64): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
}

/** A plain node:http request; resolves when the whole answer is in (status 0 and the error text on a transport error). */
export function timedRequest(
  agent: http.Agent,
  url: string,
  opts: { method: 'GET' | 'POST'; headers?: http.OutgoingHttpHeaders; body?: string; timeoutMs?: number },
): Promise<TimedAnswer> {
  return new Promise<TimedAnswer>((resolve) => {
    const headers: http.OutgoingHttpHeaders = { ...opts.headers };
    if (opts.body !== undefined) headers['content-length'] = Buffer.byteLength(opts.body);
    const req = http.request(url, { method: opts.method, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), at: performance.now() }));
      res.on('error', (err) => resolve({ status: 0, body: err.message, at: performance.now() }));
    });
    req.setTimeout(opts.timeoutMs ?? 15_000, () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, body: err.message, at: performance.now() }));
    req.end(opts.body);
  });
}

/** Runs `count` jobs with at most `concurrency` at once, in index order; returns results by index. */
export async function runPool<T>(count: number, concurrency: number, job: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array<T>(count);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) out[i] = await job(i);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return out;
}
