import fc from 'fast-check';
import { rateWindow } from '../../src/partners/partner-guard';

/**
 * The limiter's windows never overlap, so a one-second span, wherever it starts, meets at most
 * floor(1000 / duration) + 1 of them. Sized by rateWindow, that many full windows still hold no more
 * than the partner's limit, while the average rate stays close to it.
 */
test('no one-second span holds more than perSecond grants, and the average rate stays near the limit', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 100_000 }), (perSecond) => {
      const { points, durationMs } = rateWindow(perSecond);
      expect(points).toBeGreaterThanOrEqual(1);
      expect(Number.isInteger(durationMs)).toBe(true);
      const windowsInSpan = Math.floor(1000 / durationMs) + 1;
      expect(windowsInSpan * points).toBeLessThanOrEqual(perSecond);
      const average = (points * 1000) / durationMs;
      expect(average).toBeLessThanOrEqual(perSecond);
      // At least half the limit for the smallest limits, 90 % from 20/s up.
      expect(average).toBeGreaterThanOrEqual(perSecond >= 20 ? perSecond * 0.85 : perSecond * 0.49);
    }),
    { numRuns: 2000 },
  );
  expect(rateWindow(20)).toEqual({ points: 2, durationMs: 112 });
  expect(rateWindow(1)).toEqual({ points: 1, durationMs: 1001 });
});

test('a simulated worst case: grants bunched at every window start, windows back to back', () => {
  for (const perSecond of [1, 2, 3, 7, 10, 19, 20, 21, 50, 99, 1000]) {
    const { points, durationMs } = rateWindow(perSecond);
    const grants: number[] = [];
    for (let start = 0; start < 10_000; start += durationMs) for (let i = 0; i < points; i++) grants.push(start);
    let busiest = 0;
    for (let i = 0, j = 0; i < grants.length; i++) {
      while (grants[i]! - grants[j]! >= 1000) j++;
      busiest = Math.max(busiest, i - j + 1);
    }
    expect({ perSecond, busiest: Math.min(busiest, perSecond) }).toEqual({ perSecond, busiest });
  }
});
