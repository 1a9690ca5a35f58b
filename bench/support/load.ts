import autocannon from 'autocannon';

const active = new Set<autocannon.Instance>();

/** Runs autocannon in this process and resolves with its result (no progress bar, no table). */
export function runAutocannon(opts: autocannon.Options): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    const instance = autocannon(opts, (err, result) => {
      active.delete(instance);
      if (err) reject(err);
      else resolve(result);
    });
    active.add(instance);
  });
}

/** Stops every load still running (on Ctrl-C, so the service under test can drain at once). */
export function stopAllLoads(): void {
  for (const instance of active) instance.stop();
}

/** Responses that came back with exactly this status code. */
export function statusCount(result: autocannon.Result, code: number): number {
  return result.statusCodeStats?.[`${code}`]?.count ?? 0;
}

/** Requests written but never answered when the run stopped (their work may still complete on the server). */
export function inFlightAtStop(result: autocannon.Result): number {
  return Math.max(0, result.requests.sent - result.requests.total - result.errors);
}

/** The status codes seen, e.g. `{ "201": 31000 }`. */
export function statusCodes(result: autocannon.Result): Record<string, number> {
  return Object.fromEntries(Object.entries(result.statusCodeStats ?? {}).map(([code, s]) => [code, s?.count ?? 0]));
}
