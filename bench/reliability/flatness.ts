/**
 * The soak suite's rules for "stays flat after warm-up", as pure functions so they are unit-tested on
 * made-up series (a leak must fail, noise must pass).
 */

/** Least-squares slope of `ys` over x = 0, 1, 2, …; 0 for fewer than two points. */
export function slope(ys: readonly number[]): number {
  const n = ys.length;
  if (n < 2) return 0;
  const meanX = (n - 1) / 2;
  const meanY = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  ys.forEach((y, x) => {
    num += (x - meanX) * (y - meanY);
    den += (x - meanX) ** 2;
  });
  return num / den;
}

export interface FlatnessVerdict {
  ok: boolean;
  /** The rule in words, with the numbers it was judged on. */
  detail: string;
}

/**
 * RSS after warm-up (one value per minute, MB): flat when the trend over the window (slope × minutes)
 * grows by no more than `maxGrowthFraction` of the first value or `minAllowanceMb`, whichever is larger,
 * and the last minute is no higher than the first plus that same allowance. The trend catches a steady
 * leak over a long run; the end-to-end bound catches a late jump. The allowance keeps a short run from
 * failing on V8's heap sizing noise.
 */
export function rssFlat(perMinuteMb: readonly number[], maxGrowthFraction = 0.1, minAllowanceMb = 20): FlatnessVerdict {
  if (perMinuteMb.length < 2) return { ok: false, detail: `needs at least 2 minutes after warm-up, got ${perMinuteMb.length}` };
  const first = perMinuteMb[0]!;
  const last = perMinuteMb[perMinuteMb.length - 1]!;
  const allowance = Math.max(first * maxGrowthFraction, minAllowanceMb);
  const trend = slope(perMinuteMb) * (perMinuteMb.length - 1);
  const ok = trend <= allowance && last - first <= allowance;
  return {
    ok,
    detail: `trend ${fmt(trend)} MB and last−first ${fmt(last - first)} MB over ${perMinuteMb.length} minutes; allowed ${fmt(allowance)} MB (max of ${maxGrowthFraction * 100}% of ${fmt(first)} MB and ${minAllowanceMb} MB)`,
  };
}

/**
 * Pool waiting count after warm-up (the mean of each minute's samples): flat when no queue builds up,
 * i.e. the trend over the window and the last minute's mean stay within `allowance` waiters of the first
 * minute's mean. A pool that is briefly saturated under a burst passes; one whose queue keeps growing
 * (a leak of connections, or load beyond capacity) fails.
 */
export function poolFlat(perMinuteMeanWaiting: readonly number[], allowance = 1): FlatnessVerdict {
  if (perMinuteMeanWaiting.length < 2) return { ok: false, detail: `needs at least 2 minutes after warm-up, got ${perMinuteMeanWaiting.length}` };
  const first = perMinuteMeanWaiting[0]!;
  const last = perMinuteMeanWaiting[perMinuteMeanWaiting.length - 1]!;
  const trend = slope(perMinuteMeanWaiting) * (perMinuteMeanWaiting.length - 1);
  const ok = trend <= allowance && last - first <= allowance;
  return { ok, detail: `waiting trend ${fmt(trend)}, last−first ${fmt(last - first)} over ${perMinuteMeanWaiting.length} minutes; allowed ${allowance}` };
}

const fmt = (v: number) => (Math.round(v * 10) / 10).toString();
