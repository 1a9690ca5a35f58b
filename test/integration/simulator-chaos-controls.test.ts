import axios, { type AxiosInstance } from 'axios';
import fc from 'fast-check';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import { TEST_SECRET } from '../support/service';

/**
 * The simulator controls the chaos suite relies on: the per-request `received` counter (the ambiguity
 * rule is checked with it) and the "slow partner" switch (`POST /_sim/slow`).
 */

let sim: Simulator;
let http: AxiosInstance;

beforeAll(async () => {
  sim = await startSimulator({ secrets: [TEST_SECRET] });
  http = axios.create({ baseURL: sim.url, validateStatus: () => true });
});
afterEach(() => {
  sim.setSlow(0);
  sim.setDown(false);
});
afterAll(async () => {
  await sim?.close();
});

const noCallback = { simulate: { callback: { mode: 'never' } } };
const dispatch = (requestNo: string, payload: unknown = noCallback, timeout = 10_000) =>
  http.post('/requests', { requestNo, payload }, { timeout });

test('received counts only the dispatches the partner accepted, unlike dispatches', async () => {
  expect((await dispatch('r-twice')).status).toBe(202);
  expect((await dispatch('r-twice')).status).toBe(202);
  const refusedOnce = { simulate: { callback: { mode: 'never' }, dispatch: [{ status: 503 }, {}] } };
  expect((await dispatch('r-503', refusedOnce)).status).toBe(503);
  sim.setDown(true);
  expect((await dispatch('r-down')).status).toBe(503);
  sim.setDown(false);

  const { byRequestNo, totals } = sim.stats();
  expect(byRequestNo['r-twice']).toMatchObject({ dispatches: 2, received: 2 });
  expect(byRequestNo['r-503']).toMatchObject({ dispatches: 1, received: 0 });
  expect(byRequestNo['r-down']).toBeUndefined();
  expect(totals).toMatchObject({ dispatches: 3, received: 2, rejectedWhileDown: 1 });

  expect((await dispatch('r-503', refusedOnce)).status).toBe(202);
  expect(sim.stats().byRequestNo['r-503']).toMatchObject({ dispatches: 2, received: 1 });
});

test('a slow partner receives a dispatch on arrival but answers it, and status queries, only after the delay', async () => {
  // The delay is far beyond the client's timeout, so the outcome does not depend on the machine's speed.
  const slow = await http.post('/_sim/slow', { delayMs: 30_000 });
  expect(slow.status).toBe(200);
  expect(slow.data).toEqual({ delayMs: 30_000 });

  await expect(dispatch('r-slow', noCallback, 1000)).rejects.toMatchObject({ code: 'ECONNABORTED' });
  expect(sim.stats().byRequestNo['r-slow']).toMatchObject({ dispatches: 1, received: 1 });
  await expect(http.get('/requests/r-slow', { timeout: 1000 })).rejects.toMatchObject({ code: 'ECONNABORTED' });
  expect(sim.stats().byRequestNo['r-slow']).toMatchObject({ statusQueries: 1 });

  expect((await http.post('/_sim/slow', { delayMs: 0 })).status).toBe(200);
  const status = await http.get('/requests/r-slow', { timeout: 10_000 });
  expect(status.status).toBe(200);
  expect(status.data).toMatchObject({ requestNo: 'r-slow', status: 'succeeded' });
});

test('POST /_sim/slow accepts only {"delayMs": integer >= 0} and never fails with a 5xx', async () => {
  await fc.assert(
    fc.asyncProperty(fc.oneof(fc.jsonValue(), fc.record({ delayMs: fc.jsonValue() })), async (body) => {
      const res = await http.post('/_sim/slow', JSON.stringify(body), { headers: { 'content-type': 'application/json' } });
      const delayMs = (body as { delayMs?: unknown } | null)?.delayMs;
      const valid = typeof body === 'object' && body !== null && !Array.isArray(body) && typeof delayMs === 'number' && Number.isSafeInteger(delayMs) && delayMs >= 0;
      expect(res.status).toBe(valid ? 200 : 400);
      sim.setSlow(0);
    }),
    { numRuns: 200 },
  );
});
