import type { Kysely } from 'kysely';
import type { Pool } from 'pg';
import { CONFLICT_RETRIES, runRaw } from '../../src/db/prepared';

/** A pool whose query fails with the given SQLSTATEs in turn, then answers. */
function flakyPool(codes: string[]) {
  const calls: string[] = [];
  const pool = {
    query: async (config: { name: string }) => {
      calls.push(config.name);
      const code = codes.shift();
      if (code) throw Object.assign(new Error(`failed with ${code}`), { code });
      return { rows: [{ ok: true }], rowCount: 1 };
    },
  } as unknown as Pool;
  return { pool, calls };
}
const db = {} as Kysely<unknown>;

test('a statement rolled back by a deadlock or a serialization failure is run again', async () => {
  const { pool, calls } = flakyPool(['40P01', '40001']);
  await expect(runRaw(db, pool, 'stmt', 'select 1', [])).resolves.toEqual({ rows: [{ ok: true }], rowCount: 1 });
  expect(calls).toHaveLength(3);
});

test('it gives up after the retries, with the last error', async () => {
  const { pool, calls } = flakyPool(Array.from({ length: CONFLICT_RETRIES + 1 }, () => '40P01'));
  await expect(runRaw(db, pool, 'stmt', 'select 1', [])).rejects.toMatchObject({ code: '40P01' });
  expect(calls).toHaveLength(CONFLICT_RETRIES + 1);
});

test('any other error is not retried', async () => {
  for (const code of ['23505', '57P01', '22P02']) {
    const { pool, calls } = flakyPool([code]);
    await expect(runRaw(db, pool, 'stmt', 'select 1', [])).rejects.toMatchObject({ code });
    expect(calls).toHaveLength(1);
  }
});
