import fc from 'fast-check';
import { parsePartners } from '../../src/config/partners';
import { mapPartnerBody, readPointer } from '../../src/partners/mapping';
import { capAtExpiry, checkDelayMs, transientRetryDelayMs, TRANSIENT_RETRY_CAP_MS } from '../../src/tasks/schedule';

const base = { id: 'p', baseUrl: 'http://127.0.0.1:1', callback: { secret: 'whsec_abc' } };

describe('JSON Pointer', () => {
  const doc = { a: { 'b/c': [10, { 'd~e': 'x' }] } };
  test('reads nested values with RFC 6901 escapes', () => {
    expect(readPointer(doc, '/a/b~1c/0')).toBe(10);
    expect(readPointer(doc, '/a/b~1c/1/d~0e')).toBe('x');
    expect(readPointer(doc, '')).toBe(doc);
  });
  test('missing paths are undefined, never a throw', () => {
    expect(readPointer(doc, '/a/zz/1')).toBeUndefined();
    expect(readPointer(null, '/a')).toBeUndefined();
    expect(readPointer('str', '/length')).toBeUndefined();
  });
});

describe('mapping partner bodies', () => {
  test('our own protocol maps without configuration', () => {
    const [p] = parsePartners({ partners: [base] }, {});
    expect(mapPartnerBody(p!, { requestNo: 'r1', status: 'failed', error: { code: 'X' } }, true)).toEqual({
      ok: true,
      report: { requestNo: 'r1', status: 'failed', error: { code: 'X' } },
    });
  });

  test('pointers and statusValues translate another shape', () => {
    const [p] = parsePartners(
      { partners: [{ ...base, mapping: { requestNo: '/data/ref', status: '/data/state', result: '/data/out', statusValues: { DONE: 'succeeded', WIP: 'processing' } } }] },
      {},
    );
    expect(mapPartnerBody(p!, { data: { ref: 77, state: 'DONE', out: { n: 1 } } }, true)).toEqual({
      ok: true,
      report: { requestNo: '77', status: 'succeeded', result: { n: 1 } },
    });
    expect(mapPartnerBody(p!, { data: { ref: 'a', state: 'WIP' } }, true)).toMatchObject({ ok: true, report: { status: 'processing' } });
  });

  test('unknown status or missing request number is unreadable', () => {
    const [p] = parsePartners({ partners: [base] }, {});
    expect(mapPartnerBody(p!, { requestNo: 'r', status: 'weird' }, true)).toEqual({ ok: false, reason: 'unknown status "weird"' });
    expect(mapPartnerBody(p!, { status: 'succeeded' }, true)).toMatchObject({ ok: false });
    expect(mapPartnerBody(p!, { status: 'succeeded' }, false)).toMatchObject({ ok: true });
  });
});

describe('schedules', () => {
  test('check delays follow scheduleSeconds and the last step repeats', () => {
    const [p] = parsePartners({ partners: [{ ...base, reconcile: { scheduleSeconds: [1, 5, 30] } }] }, {});
    expect([0, 1, 2, 3, 10].map((n) => checkDelayMs(p!, n))).toEqual([1000, 5000, 30_000, 30_000, 30_000]);
  });

  test('transient backoff grows, stays within ±20% jitter, and is capped', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 40 }), fc.double({ min: 0, max: 0.999999, noNaN: true }), (attempt, r) => {
        const nominal = Math.min(1000 * 2 ** (attempt - 1), TRANSIENT_RETRY_CAP_MS);
        const d = transientRetryDelayMs(attempt, () => r);
        return d >= Math.floor(nominal * 0.8) && d <= Math.ceil(nominal * 1.2);
      }),
    );
  });

  test('a check is never scheduled past expiry', () => {
    const exp = new Date(10_000);
    expect(capAtExpiry(new Date(20_000), exp)).toBe(exp);
    expect(capAtExpiry(new Date(5_000), exp).getTime()).toBe(5_000);
  });
});
