import { poolFlat, rssFlat, slope } from '../../bench/reliability/flatness';

/** The soak suite's "flat after warm-up" rules: a leak fails, noise and a plateau pass. */

test('slope is the least-squares trend per step', () => {
  expect(slope([1, 2, 3, 4])).toBeCloseTo(1);
  expect(slope([5, 5, 5])).toBe(0);
  expect(slope([10, 8, 6])).toBeCloseTo(-2);
  expect(slope([7])).toBe(0);
});

test('RSS: a plateau with noise passes; a steady leak and a late jump fail', () => {
  expect(rssFlat([150, 158, 149, 155, 152, 157, 151]).ok).toBe(true);
  // 2 MB a minute over 25 minutes: 48 MB of trend against an allowance of max(15, 20) MB.
  expect(rssFlat(Array.from({ length: 25 }, (_, i) => 150 + 2 * i)).ok).toBe(false);
  expect(rssFlat([150, 151, 150, 149, 190]).ok).toBe(false);
  // A short run cannot be judged on one minute.
  expect(rssFlat([150]).ok).toBe(false);
});

test('pool: occasional waiters pass; a growing queue fails', () => {
  expect(poolFlat([0, 0.2, 0, 0.4, 0.1]).ok).toBe(true);
  expect(poolFlat([0, 1, 2, 3, 4]).ok).toBe(false);
  expect(poolFlat([0.1, 0, 0, 3]).ok).toBe(false);
});

test('a minute without a sample (NaN) can never pass as flat', () => {
  expect(rssFlat([150, Number.NaN, 151]).ok).toBe(false);
  expect(poolFlat([0, Number.NaN]).ok).toBe(false);
});
