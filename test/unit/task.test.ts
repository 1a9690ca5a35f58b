import { allowedSources, canMove, contradicts, isFinal, targetStatusFor, TASK_STATUSES } from '../../src/tasks/task';

describe('task lifecycle', () => {
  test.each([
    ['pending', ['dispatched', 'succeeded', 'failed', 'rejected', 'expired']],
    ['dispatched', ['succeeded', 'failed', 'expired']],
    ['succeeded', []],
    ['failed', []],
    ['rejected', []],
    ['expired', ['succeeded', 'failed']],
  ] as const)('%s may move to exactly %j', (from, targets) => {
    const allowed = TASK_STATUSES.filter((to) => canMove(from, to));
    expect(allowed).toEqual([...targets]);
  });

  test('allowedSources is the inverse of canMove', () => {
    expect(allowedSources('succeeded')).toEqual(['pending', 'dispatched', 'expired']);
    expect(allowedSources('dispatched')).toEqual(['pending']);
    expect(allowedSources('rejected')).toEqual(['pending']);
    expect(allowedSources('pending')).toEqual([]);
  });

  test('final statuses never move again; expired is not final', () => {
    for (const s of TASK_STATUSES.filter(isFinal)) expect(TASK_STATUSES.some((to) => canMove(s, to))).toBe(false);
    expect(isFinal('expired')).toBe(false);
  });

  test('a report maps to a target status', () => {
    expect(targetStatusFor('processing')).toBe('dispatched');
    expect(targetStatusFor('succeeded')).toBe('succeeded');
    expect(targetStatusFor('failed')).toBe('failed');
  });

  test('only a definitive report against a different final status is a contradiction', () => {
    expect(contradicts('succeeded', 'failed')).toBe(true);
    expect(contradicts('rejected', 'succeeded')).toBe(true);
    expect(contradicts('succeeded', 'succeeded')).toBe(false);
    expect(contradicts('succeeded', 'processing')).toBe(false);
    expect(contradicts('expired', 'failed')).toBe(false);
    expect(contradicts('dispatched', 'failed')).toBe(false);
  });
});
