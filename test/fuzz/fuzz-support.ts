import http from 'node:http';
import fc from 'fast-check';
import { sql } from 'kysely';
import stableStringify from 'safe-stable-stringify';
import type { TestDatabase } from '../support/database';

/**
 * Shared pieces of the fuzz suite (issue 7, "Proof suites"): how many cases to run, raw HTTP with full
 * control over bytes and headers, and generators of hostile JSON.
 *
 * FUZZ_RUNS sets the total number of generated cases across the suite: 2,500 by default, sized so a plain
 * `npm test` stays within a few minutes on a busy 2-core machine; .ci/run sets 5,000 for each of its two
 * runs (10,000 in the CI run); `FUZZ_RUNS=100000 npx jest test/fuzz` for a long hunt. Each property takes
 * its share. FUZZ_SEED replays a run (fast-check prints the seed of a failure).
 */
export const FUZZ_TOTAL_RUNS = Math.max(100, Number(process.env.FUZZ_RUNS ?? 2_500));
const seed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);

/** fast-check parameters for a property that takes `share` of FUZZ_RUNS. */
export function runsFor(share: number): fc.Parameters<unknown> {
  return { numRuns: Math.max(10, Math.round(FUZZ_TOTAL_RUNS * share)), ...(seed !== undefined ? { seed } : {}), endOnFailure: true };
}

/** Counts the cases each file ran, printed at the end so the README figure comes from a real run. */
export class CaseCounter {
  private readonly counts = new Map<string, number>();
  hit(property: string): void {
    this.counts.set(property, (this.counts.get(property) ?? 0) + 1);
  }
  report(file: string): void {
    const total = [...this.counts.values()].reduce((a, b) => a + b, 0);
    process.stderr.write(`\nfuzz ${file}: ${total} cases (${[...this.counts].map(([k, v]) => `${k} ${v}`).join(', ')})\n`);
  }
}

export interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

/** One HTTP request with exactly these bytes and headers (no client-side normalisation of the body). */
export function send(base: string, method: string, path: string, headers: Record<string, string>, body?: Buffer): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string> = { ...headers };
    if (body !== undefined) h['content-length'] = String(body.length);
    const req = http.request(`${base}${path}`, { method, headers: h, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`no answer within 30 s to ${method} ${path}`)));
    req.on('error', reject);
    req.end(body);
  });
}

export function closeAgent(): void {
  agent.destroy();
}

/** Canonical JSON (sorted keys): Postgres jsonb keeps its own key order. */
export const canonical = (v: unknown): string => stableStringify(v) ?? 'undefined';

/** Keys that are JavaScript object keys, paths, or otherwise odd. */
export const oddKey = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 8 }) },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'prototype', '', '.', '..', '/', '~0', '~1', 'simulate') },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 6 }) },
);

/** Any text: printable, full unicode, or any code unit including NUL and unpaired surrogates. */
export const anyText = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) },
  { weight: 1, arbitrary: fc.constantFrom('\u0000', '\uD800', '\uDC00', 'a\uD83D', '\uDE00b', '\u{1F600}', '\u202E', '\uFEFF', '\\u0000') },
);

/** JSON values with odd keys, any text, and sometimes deep nesting (around the 64-level limit). */
export const hostileJson: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.constant(null),
      fc.boolean(),
      fc.double({ noNaN: true, noDefaultInfinity: true }),
      fc.integer(),
      anyText,
      fc.array(tie('value'), { maxLength: 4 }),
      fc.dictionary(oddKey, tie('value'), { maxKeys: 4 }),
    ),
  })).value },
  { weight: 1, arbitrary: fc.integer({ min: 60, max: 70 }).map(nested) },
  { weight: 1, arbitrary: fc.integer({ min: 100, max: 3000 }).map(nested) },
);

/** An object nested `depth` levels deep (the outer object is level 1), alternating objects and arrays. */
export function nested(depth: number): unknown {
  let v: unknown = 'leaf';
  for (let i = 1; i < depth; i++) v = i % 2 === 0 ? [v] : { n: v };
  return { n: v };
}

export async function countTasks(db: TestDatabase): Promise<number> {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from tasks`.execute(db.handle.db);
  return rows[0]!.n;
}

export async function countInbox(db: TestDatabase): Promise<number> {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from callback_inbox`.execute(db.handle.db);
  return rows[0]!.n;
}

/** Fails the property with the request and answer when the service answered 5xx. */
export function expectNo5xx(answer: RawAnswer, what: string): void {
  if (answer.status >= 500) throw new Error(`${what} answered ${answer.status}: ${answer.text.slice(0, 500)}`);
}

/** Every error answer is problem+json and never carries driver text, SQL or a stack. */
export function expectCleanError(answer: RawAnswer, what: string): void {
  if (answer.status < 400) return;
  if (!String(answer.headers['content-type']).startsWith('application/problem+json')) {
    throw new Error(`${what}: a ${answer.status} that is not problem+json: ${String(answer.headers['content-type'])}`);
  }
  if (/\bat .*\.(js|ts):\d+\)|\binsert into\b|postgres(ql)?:\/\/|ECONNREFUSED|violates .* constraint|syntax error at/i.test(answer.text)) {
    throw new Error(`${what}: the answer leaks internals: ${answer.text.slice(0, 500)}`);
  }
}
