import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A notification receiver in a process of its own (the notifications bench forks it): it answers every
 * POST `204` and notes the arrival time and the body's `timestamp`. In the runner's own process it shared
 * an event loop with autocannon, so every delivery slowed the load generator of the run that caused it.
 * Messages from the parent: `{ id, kind: 'count' }` → `{ id, count }`; `{ id, kind: 'since', from }` →
 * `{ id, arrivals: [{ at, eventAt }] }` (eventAt null when the body had no readable timestamp).
 */

interface Arrival {
  at: number;
  eventAt: number | null;
}

const arrivals: Arrival[] = [];
const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const at = Date.now();
    let eventAt: number | null = null;
    try {
      const parsed = Date.parse((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { timestamp: string }).timestamp);
      if (Number.isFinite(parsed)) eventAt = parsed;
    } catch {
      // counted, without a latency
    }
    arrivals.push({ at, eventAt });
    res.writeHead(204).end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.send?.({ kind: 'ready', port: (server.address() as AddressInfo).port }));

process.on('message', (m: { id: number; kind: 'count' | 'since'; from?: number }) => {
  if (m.kind === 'count') process.send?.({ id: m.id, count: arrivals.length });
  else process.send?.({ id: m.id, arrivals: arrivals.slice(m.from ?? 0) });
});
process.on('disconnect', () => process.exit(0));
