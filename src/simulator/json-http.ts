import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';

/** The result of reading a JSON request body: the value, or the status and problem to answer with. */
export type JsonBody = { ok: true; value: unknown } | { ok: false; status: number; problem: string };

/**
 * Reads and parses a JSON body with plain Node streams. The partner protocol routes are the simulator's
 * hot path (thousands per second in benchmarks that share the CPU with the service), so they skip the
 * express router and body-parser stack.
 */
export function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<JsonBody> {
  return new Promise<JsonBody>((resolve) => {
    const contentType = req.headers['content-type'];
    if (contentType === undefined || !contentType.includes('json')) {
      req.resume();
      resolve({ ok: false, status: 400, problem: 'content-type must be application/json' });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > maxBytes) return resolve({ ok: false, status: 413, problem: `body exceeds ${maxBytes} bytes` });
      resolve(parseJson(Buffer.concat(chunks, size).toString('utf8')));
    });
    req.on('error', (error) => resolve({ ok: false, status: 400, problem: error.message }));
  });
}

function parseJson(text: string): JsonBody {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (error) {
    return { ok: false, status: 400, problem: `malformed JSON: ${error instanceof Error ? error.message : String(error)}` };
  }
}

/** Answers with a JSON body; a no-op when the caller already hung up. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: OutgoingHttpHeaders = {}): void {
  if (res.destroyed || res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
