import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { parsePartners, type PartnerConfig } from '../../src/config/partners';
import { classifyTransportError } from '../../src/partners/errors';
import { AxiosExchange, type ExchangeRequest, type ExchangeResult, type PartnerExchange } from '../../src/partners/partner-exchange';
import { THREAD_EXIT_CODE, ThreadExchange } from '../../src/partners/thread-exchange';

/**
 * The partner HTTP exchange, in this thread (PARTNER_IO_THREADS=0) and on worker threads (the default):
 * both must send the same bytes and hand back the same answers, over real HTTP to a real server.
 */

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** What the test partner answers, chosen by the request's path. */
function answer(req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
  const url = req.url ?? '';
  if (url.startsWith('/slow')) return void setTimeout(() => res.writeHead(200).end('{}'), 3000).unref();
  if (url.startsWith('/hold')) return; // never answered: the call stays in flight
  if (url.startsWith('/busy')) return void res.writeHead(503, { 'retry-after': '7', 'content-type': 'application/json' }).end('{"error":"busy"}');
  if (url.startsWith('/text')) return void res.writeHead(200, { 'content-type': 'text/plain' }).end('not json at all');
  if (url.startsWith('/huge')) return void res.writeHead(200, { 'content-type': 'application/json' }).end(`"${'x'.repeat(1024 * 1024 + 10)}"`);
  if (url.startsWith('/requests/')) return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ requestNo: decodeURIComponent(url.slice(10)), status: 'processing' }));
  res.writeHead(202, { 'content-type': 'application/json' }).end(JSON.stringify({ echo: body === '' ? null : JSON.parse(body) }));
}

let server: http.Server;
let baseUrl: string;
let seen: Seen[] = [];
let partners: readonly PartnerConfig[];
let inThread: AxiosExchange;
let onThreads: ThreadExchange;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      answer(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // A port that was just free and is closed again: connections to it are refused.
  const closed = http.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const closedPort = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  partners = parsePartners(
    {
      partners: [
        { id: 'p', baseUrl, callback: { verify: 'poll' }, headers: { authorization: 'Bearer t0ken' } },
        { id: 'closed', baseUrl: `http://127.0.0.1:${closedPort}`, callback: { verify: 'poll' } },
      ],
    },
    {},
  );
  inThread = new AxiosExchange(partners);
  onThreads = new ThreadExchange(partners, 2);
});

afterAll(async () => {
  inThread.close();
  onThreads.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  seen = [];
});

const post = (path: string, body: unknown, timeoutMs = 10_000): ExchangeRequest => ({
  partnerId: 'p',
  method: 'POST',
  path,
  body,
  headers: { 'content-type': 'application/json', 'idempotency-key': 'k-1' },
  timeoutMs,
});

/** The fields that do not depend on timing. */
const stable = (r: ExchangeResult) => (r.ok ? { ok: true, status: r.status, data: r.data, retryAfter: r.retryAfter } : { ok: false, code: r.code });

describe.each<[string, () => PartnerExchange]>([
  ['in this thread', () => inThread],
  ['on worker threads', () => onThreads],
])('partner exchange %s', (_name, exchange) => {
  test('a dispatch arrives with its JSON body, its headers and the partner headers; the answer comes back parsed', async () => {
    const r = await exchange().send(post('/requests', { requestNo: 'r-1', payload: { a: [1, 'two', null] } }));
    expect(r).toMatchObject({ ok: true, status: 202, data: { echo: { requestNo: 'r-1', payload: { a: [1, 'two', null] } } } });
    expect(r.durationMs).toBeGreaterThanOrEqual(0);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ method: 'POST', url: '/requests' });
    expect(seen[0]!.headers).toMatchObject({
      'content-type': 'application/json',
      'idempotency-key': 'k-1',
      authorization: 'Bearer t0ken',
      'user-agent': 'callback-reconciler',
    });
  });

  test('a payload keeps every key, `constructor`, `prototype` and `__proto__` included (axios alone dropped the first two)', async () => {
    const body = JSON.parse('{"requestNo":"r-2","payload":{"constructor":1,"prototype":null,"__proto__":{"x":[2]},"deep":{"constructor":{"prototype":"p"}}}}') as unknown;
    const r = await exchange().send(post('/requests', body));
    expect(JSON.parse(seen[0]!.body)).toEqual(body);
    expect(seen[0]!.body).toBe(JSON.stringify(body));
    expect(r).toMatchObject({ ok: true, status: 202 });
    expect(JSON.stringify((r as { data: { echo: unknown } }).data.echo)).toBe(JSON.stringify(body));
  });

  test('a status query is a GET on its path', async () => {
    const r = await exchange().send({ partnerId: 'p', method: 'GET', path: '/requests/a%2Fb', timeoutMs: 1000 });
    expect(r).toMatchObject({ ok: true, status: 200, data: { requestNo: 'a/b', status: 'processing' } });
    expect(seen[0]).toMatchObject({ method: 'GET', url: '/requests/a%2Fb', body: '' });
  });

  test('Retry-After is handed back with the status; a text answer stays text', async () => {
    expect(await exchange().send(post('/busy', {}))).toMatchObject({ ok: true, status: 503, retryAfter: '7', data: { error: 'busy' } });
    expect(await exchange().send(post('/text', {}))).toMatchObject({ ok: true, status: 200, data: 'not json at all' });
  });

  test('transport failures come back as codes that classify as before: refused, timed out, too large, unknown partner', async () => {
    const refused = await exchange().send({ ...post('/requests', {}), partnerId: 'closed' });
    expect(refused).toMatchObject({ ok: false, code: 'ECONNREFUSED' });
    expect(classifyTransportError(refused.ok ? undefined : refused.code)).toEqual({ errorClass: 'connect', kind: 'transient' });

    const slow = await exchange().send(post('/slow', {}, 100));
    expect(slow.ok).toBe(false);
    expect(classifyTransportError(slow.ok ? undefined : slow.code)).toEqual({ errorClass: 'timeout', kind: 'ambiguous' });

    const huge = await exchange().send(post('/huge', {}));
    expect(huge).toMatchObject({ ok: false });
    expect(huge.ok ? '' : huge.message).toMatch(/maxContentLength/);

    expect(await exchange().send({ ...post('/requests', {}), partnerId: 'nobody' })).toMatchObject({ ok: false, code: 'ERR_UNKNOWN_PARTNER' });
  });
});

test('property: for any JSON payload, both exchanges send the same bytes and hand back the same answer', async () => {
  await fc.assert(
    fc.asyncProperty(fc.jsonValue({ maxDepth: 4 }), fc.string({ minLength: 1, maxLength: 40 }), async (payload, requestNo) => {
      seen = [];
      const body = { requestNo, kind: null, payload, callbackUrl: 'http://127.0.0.1:1/callbacks/p' };
      const [a, b] = await Promise.all([inThread.send(post('/requests', body)), onThreads.send(post('/requests', body))]);
      expect(stable(b)).toEqual(stable(a));
      expect(a).toMatchObject({ ok: true, status: 202, data: { echo: JSON.parse(JSON.stringify(body)) } });
      expect(seen).toHaveLength(2);
      expect(seen[1]!.body).toBe(seen[0]!.body);
      expect(JSON.parse(seen[0]!.body)).toEqual(JSON.parse(JSON.stringify(body)));
    }),
    { numRuns: 60 },
  );
});

test('a thread that ends fails its calls in flight as unclear (they may have left) and is replaced, and is counted', async () => {
  let exits = 0;
  const exchange = new ThreadExchange(partners, 1, { onUnexpectedExit: () => (exits += 1) });
  try {
    const first = exchange.workers[0]!;
    const held = exchange.send(post('/hold', { n: 1 }, 5000));
    await waitFor(() => seen.some((s) => s.url === '/hold'));
    expect(exchange.inFlight).toBe(1);
    await first.terminate();
    const r = await held;
    expect(r).toMatchObject({ ok: false, code: THREAD_EXIT_CODE });
    expect(classifyTransportError(r.ok ? undefined : r.code).kind).toBe('ambiguous');
    expect(exchange.inFlight).toBe(0);
    expect(exits).toBe(1);
    // A call made while the replacement is pending (a thread that ends soon after its start is replaced
    // after a second, so a thread that cannot start does not spin) waits for it, then goes out.
    const next = exchange.send(post('/requests', { n: 2 }));
    expect(await next).toMatchObject({ ok: true, status: 202, data: { echo: { n: 2 } } });
    expect(exchange.workers[0]).not.toBe(first);
    expect(exits).toBe(1);
  } finally {
    exchange.close();
  }
});

test('close fails what is in flight, refuses new calls without sending them, and may be called twice', async () => {
  let exits = 0;
  const exchange = new ThreadExchange(partners, 1, { onUnexpectedExit: () => (exits += 1) });
  const held = exchange.send(post('/hold', { n: 3 }, 5000));
  await waitFor(() => seen.some((s) => s.url === '/hold'));
  exchange.close();
  expect(await held).toMatchObject({ ok: false, code: THREAD_EXIT_CODE });
  const before = seen.length;
  expect(await exchange.send(post('/requests', { n: 4 }))).toMatchObject({ ok: false, code: THREAD_EXIT_CODE });
  expect(seen).toHaveLength(before);
  exchange.close();
  await new Promise((r) => setTimeout(r, 100));
  expect(exits).toBe(0); // a close is not an unexpected end
});

test('close while a replacement is pending fails the calls waiting for it, unsent', async () => {
  const exchange = new ThreadExchange(partners, 1);
  await exchange.workers[0]!.terminate(); // ends at once after its start: replaced only after a second
  const waiting = exchange.send(post('/requests', { n: 5 }));
  await new Promise((r) => setTimeout(r, 50));
  exchange.close();
  expect(await waiting).toMatchObject({ ok: false, code: THREAD_EXIT_CODE });
  await new Promise((r) => setTimeout(r, 1500));
  expect(seen.filter((s) => s.body.includes('"n":5'))).toHaveLength(0);
});

async function waitFor(condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
