import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import express from 'express';
import fc from 'fast-check';
import pino from 'pino';
import { requestIdFor, requestLogging } from '../../src/http/request-context';

/** One request log line per answer, at the level its status calls for, with the id echoed in the header. */

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Line {
  level: number;
  msg: string;
  req?: { id: string; method: string; url: string };
  res?: { statusCode: number };
  responseTime?: number;
}

async function serve(level: pino.Level) {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Line);
      cb();
    },
  });
  const logger = pino({ level }, sink);
  const app = express();
  app.use(requestLogging(logger));
  app.get('/ok', (_req, res) => void res.json({ ok: true }));
  app.get('/healthz', (_req, res) => void res.send('ok'));
  app.get('/missing', (_req, res) => void res.status(404).json({}));
  app.get('/boom', (_req, res) => void res.status(503).json({}));
  app.get('/hang', () => undefined); // never answered: the client gives up
  const server = http.createServer(app);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { lines, base, close };
}

async function eventually(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('info: a line per answer (info, warn for 4xx, error for 5xx), with the id of the X-Request-Id header; probes are not logged', async () => {
  const s = await serve('info');
  try {
    const ok = await fetch(`${s.base}/ok?a=1`, { headers: { 'x-request-id': 'caller-id-1' } });
    expect(ok.headers.get('x-request-id')).toBe('caller-id-1');
    const missing = await fetch(`${s.base}/missing`);
    expect(missing.headers.get('x-request-id')).toMatch(UUID_RE);
    await fetch(`${s.base}/boom`);
    await fetch(`${s.base}/healthz`);
    await eventually(() => s.lines.length >= 3);
    await new Promise((r) => setTimeout(r, 100));
    expect(s.lines).toHaveLength(3);
    expect(s.lines[0]).toMatchObject({ level: 30, msg: 'request completed', req: { id: 'caller-id-1', method: 'GET', url: '/ok?a=1' }, res: { statusCode: 200 } });
    expect(s.lines[0]!.responseTime).toBeGreaterThanOrEqual(0);
    expect(s.lines[1]).toMatchObject({ level: 40, msg: 'request completed', req: { id: missing.headers.get('x-request-id'), url: '/missing' }, res: { statusCode: 404 } });
    expect(s.lines[2]).toMatchObject({ level: 50, msg: 'request errored', res: { statusCode: 503 } });
  } finally {
    await s.close();
  }
});

test('warn: answers below the level write nothing; a client that goes away is logged once, as aborted', async () => {
  const s = await serve('warn');
  try {
    await fetch(`${s.base}/ok`);
    await fetch(`${s.base}/missing`);
    await eventually(() => s.lines.length >= 1);
    expect(s.lines).toEqual([expect.objectContaining({ level: 40, res: { statusCode: 404 } })]);
  } finally {
    await s.close();
  }
  const info = await serve('info');
  try {
    await fetch(`${info.base}/hang`, { signal: AbortSignal.timeout(200) }).catch(() => undefined);
    await eventually(() => info.lines.length >= 1);
    await new Promise((r) => setTimeout(r, 100));
    expect(info.lines).toEqual([expect.objectContaining({ level: 30, msg: 'request aborted', req: expect.objectContaining({ url: '/hang' }) })]);
  } finally {
    await info.close();
  }
});

test('property: any X-Request-Id is echoed only when sane (1-128 of A-Za-z0-9._:-), else replaced by a UUID', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 200 }), fc.stringMatching(/^[A-Za-z0-9._:-]{1,140}$/), fc.constant(undefined), fc.array(fc.string())), (given) => {
      const id = requestIdFor(given);
      const sane = typeof given === 'string' && /^[A-Za-z0-9._:-]{1,128}$/.test(given);
      if (sane) expect(id).toBe(given);
      else expect(id).toMatch(UUID_RE);
    }),
    { numRuns: 500 },
  );
});
