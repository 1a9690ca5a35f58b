import { sql } from 'kysely';
import { CONFIRM_LEASE_SQL, CONFIRM_LEASES_SQL } from '../../src/tasks/task-repository';
import { createTestDatabase, type TestDatabase } from '../support/database';

/**
 * Lookups of one task by id must read the primary key, whatever the statistics say. A table that holds
 * mostly settled tasks, analysed when almost none were open, makes the partial `tasks_due_idx` (open tasks
 * only) look empty, so a prepared lookup `where id = $1 and status in ('pending', 'dispatched')` was
 * planned as a walk of that whole index, filtering on id: once per dispatch, reading every open task.
 * Seen in `npm run bench -- create --big`: 2,580 index entries read per created task, the create rate at
 * 0.56–0.71 of the empty table's.
 */

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  // 50,000 settled tasks, analysed; then 3,000 open ones the statistics have not seen.
  const fill = (n: number, status: string, offset: number) => sql`
    insert into tasks (id, partner, request_no, status, payload, body_hash, dispatch_attempts, next_check_at, expires_at,
                       created_at, updated_at, lease_owner, lease_expires_at)
    select gen_random_uuid(), 'sim', 'plan-' || (g + ${offset}), ${status}, '{}'::jsonb, 'h', 1,
           case when ${status} = 'dispatched' then now() + interval '1 hour' end, now() + interval '1 day', now(), now(),
           case when ${status} = 'dispatched' then 'owner-' || g end,
           case when ${status} = 'dispatched' then now() + interval '1 minute' end
    from generate_series(1, ${n}::int) as g`;
  await fill(50_000, 'succeeded', 0).execute(db.handle.db);
  await sql`analyze tasks`.execute(db.handle.db);
  await fill(3_000, 'dispatched', 100_000).execute(db.handle.db);
});
afterAll(async () => {
  await db?.drop();
});

/** The generic plan of `text` (what a prepared statement runs after its first executions). */
async function genericPlan(text: string, params: unknown[]): Promise<string> {
  return plan(text, params, 'force_generic_plan');
}

/** The plan of `text` as prepared, generic or made for these parameters (its first executions). */
async function plan(text: string, params: unknown[], mode: 'force_generic_plan' | 'force_custom_plan'): Promise<string> {
  const client = await db.handle.pool.connect();
  try {
    await client.query(`set plan_cache_mode = ${mode}`);
    await client.query(`prepare probe as ${text}`);
    const { rows } = await client.query<{ 'QUERY PLAN': string }>(`explain execute probe(${params.map((p) => (typeof p === 'number' ? String(p) : `'${String(p)}'`)).join(', ')})`);
    await client.query('deallocate probe');
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  } finally {
    client.release();
  }
}

test('the fence before a partner call reads the primary key, not the open-task index', async () => {
  const { rows } = await sql<{ id: string; lease_owner: string }>`select id, lease_owner from tasks where status = 'dispatched' limit 1`.execute(db.handle.db);
  const plan = await genericPlan(CONFIRM_LEASE_SQL, [rows[0]!.id, rows[0]!.lease_owner, 1000]);
  expect(plan).toContain('tasks_pkey');
  expect(plan).not.toContain('tasks_due_idx');
});

/**
 * The batched fence (the lease batcher's statement): each item is one probe of the primary key, never a
 * scan of the tasks nor a walk of the open-task index, in the generic plan and in the plans made for a
 * batch's parameters (its first executions on a connection), up to the largest batch BATCH_MAX_SIZE
 * allows. Written as a join on tasks.id, the plan made for 500 items here was a sequential scan of the
 * open tasks (estimated at one row), materialised and compared with every item.
 */
test.each([
  ['force_generic_plan', 64],
  ['force_custom_plan', 1],
  ['force_custom_plan', 64],
  ['force_custom_plan', 1000],
] as const)('the batched fence reads the primary key once per item (%s, %i items)', async (mode, n) => {
  const { rows } = await sql<{ id: string; lease_owner: string }>`select id, lease_owner from tasks where status = 'dispatched' limit ${n}`.execute(db.handle.db);
  expect(rows).toHaveLength(n);
  const array = (values: readonly (string | number)[]) => `{${values.join(',')}}`;
  const text = await plan(CONFIRM_LEASES_SQL, [array(rows.map((r) => r.id)), array(rows.map((r) => r.lease_owner)), array(rows.map(() => 1000))], mode);
  const readsOfTasks = text.split('\n').filter((line) => / on tasks\b/.test(line));
  expect(readsOfTasks).toHaveLength(1);
  expect(readsOfTasks[0]).toMatch(/Index Scan using tasks_pkey on tasks t/);
  expect(text).toMatch(/Index Cond: \(id = v\.id\)/);
  expect(text).not.toMatch(/Seq Scan|Hash|Materialize/);
  expect(text).not.toContain('tasks_due_idx');
});
