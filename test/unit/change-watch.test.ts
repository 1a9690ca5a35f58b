import type { TaskRow } from '../../src/db/schema';
import { TaskNotifier } from '../../src/tasks/task-transitions';

// A long-poll subscribes, reads the task, then waits. A change that lands between the subscription and the
// wait must end the wait at once with that change (this path threw "Cannot access 'timer' before
// initialization" and answered 500 when the callback beat the wait).
const row = (id: string, status: string) => ({ id, status }) as unknown as TaskRow;

test('a change that came before next() is returned at once', async () => {
  const notifier = new TaskNotifier();
  const watch = notifier.watch('t1');
  notifier.changed(row('t1', 'succeeded'));
  await expect(watch.next(60_000)).resolves.toMatchObject({ id: 't1', status: 'succeeded' });
  watch.close();
  expect(notifier.hasWatchers('t1')).toBe(false);
});

test('an aborted signal ends next() at once with nothing', async () => {
  const notifier = new TaskNotifier();
  const watch = notifier.watch('t2');
  const ctl = new AbortController();
  ctl.abort();
  await expect(watch.next(60_000, ctl.signal)).resolves.toBeUndefined();
  watch.close();
});

test('a change while waiting wakes the wait; without one it ends after its timeout', async () => {
  const notifier = new TaskNotifier();
  const watch = notifier.watch('t3');
  const waiting = watch.next(60_000);
  notifier.changed(row('t3', 'failed'));
  await expect(waiting).resolves.toMatchObject({ status: 'failed' });
  await expect(watch.next(5)).resolves.toBeUndefined();
  watch.close();
});
