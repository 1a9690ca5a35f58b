import { parentPort, workerData } from 'node:worker_threads';
import type { PartnerConfig } from '../config/partners';
import { AxiosExchange, type ExchangeRequest, type ExchangeResult } from './partner-exchange';

/**
 * The partner I/O thread: runs every partner HTTP call of its process (axios, sockets, JSON) so the main
 * thread's event loop keeps to the API and the database. Calls arrive in batches of `[id, request]`;
 * answers go back in batches of `[id, result]`, one batch per turn of this thread's loop.
 */

if (!parentPort) throw new Error('exchange-thread.ts runs as a worker thread (see thread-exchange.ts)');
const port = parentPort;
const exchange = new AxiosExchange((workerData as { partners: PartnerConfig[] }).partners);

let answers: [number, ExchangeResult][] = [];
let flushing = false;

function answer(id: number, result: ExchangeResult): void {
  answers.push([id, result]);
  if (flushing) return;
  flushing = true;
  setImmediate(() => {
    flushing = false;
    const batch = answers;
    answers = [];
    try {
      port.postMessage(batch);
    } catch {
      // An answer that cannot be cloned (it never should: axios hands back JSON or text) fails alone.
      for (const [id, result] of batch) {
        try {
          port.postMessage([[id, result]]);
        } catch (err) {
          port.postMessage([[id, { ok: false, code: 'ERR_PARTNER_ANSWER_UNCLONEABLE', message: String(err).slice(0, 500), durationMs: result.durationMs }]]);
        }
      }
    }
  });
}

port.on('message', (calls: [number, ExchangeRequest][]) => {
  for (const [id, req] of calls) void exchange.send(req).then((result) => answer(id, result));
});
