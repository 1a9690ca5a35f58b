import type { TaskRow } from '../../src/db/schema';
import { SNAPSHOT_COLUMNS } from '../../src/tasks/task-repository';
import { toApiTask } from '../../src/tasks/task-service';

/**
 * A notification's `data` is toApiTask over the snapshot the settling statement stores: the snapshot must
 * hold every column toApiTask reads (a column added to the API but not to the snapshot would be sent as
 * undefined), and nothing internal (lease owner, body hash).
 */
test('the outbox snapshot holds exactly the columns toApiTask reads', () => {
  const read = new Set<string>();
  const row = new Proxy({} as TaskRow, {
    get(_t, key) {
      if (typeof key === 'string') read.add(key);
      return key.toString().endsWith('_at') ? '2026-11-30T00:00:00.000Z' : null;
    },
  });
  toApiTask(row);
  expect([...read].sort()).toEqual([...SNAPSHOT_COLUMNS].sort());
  expect(SNAPSHOT_COLUMNS).not.toContain('lease_owner');
  expect(SNAPSHOT_COLUMNS).not.toContain('body_hash');
});
