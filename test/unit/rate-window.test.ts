import { rateWindow } from '../../src/partners/partner-guard';

/**
 * The limiter's windows never overlap, so a one-second span, wherever it starts, meets at most
 * floor(1000 / duration) + 1 of them. Sized by rateWindow, that many full windows still hold no more
 * than the partner's limit, while the average rate stays close to it.
 */
test('for every limit from 1 to 100,000/s: no one-second span holds more than perSecond grants, and the average stays near the limit', () => {
  // Exhaustive rather than sampled: a random sample found a limit (116/s) below a bound guessed too high.
  let lowest = { ratio: 1, perSecond: 0 };
  for (let perSecond = 1; perSecond <= 100_000; perSecond++) {
    const { points, durationMs } = rateWindow(perSecond);
    if (points < 1 || !Number.isInteger(durationMs)) throw new Error(`bad window for ${perSecond}/s: ${points} per ${durationMs} ms`);
    const windowsInSpan = Math.floor(1000 / durationMs) + 1;
    if (windowsInSpan * points > perSecond) throw new Error(`${perSecond}/s: ${windowsInSpan * points} grants fit in one second`);
    const ratio = (points * 1000) / durationMs / perSecond;
    if (ratio > 1) throw new Error(`${perSecond}/s: the average exceeds the limit`);
    if (perSecond >= 20 && ratio < lowest.ratio) lowest = { ratio, perSecond };
  }
  // The price of the ceiling: from 20/s up, the average never falls below 80 % of the limit (worst: 109/s).
  expect(lowest.ratio).toBeGreaterThan(0.8);
  expect(rateWindow(20)).toEqual({ points: 2, durationMs: 112 });
  expect(rateWindow(2)).toEqual({ points: 1, durationMs: 1000 });
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
