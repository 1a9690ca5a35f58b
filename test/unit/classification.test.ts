import { classifyDispatchStatus, classifyTransportError, parseRetryAfter } from '../../src/partners/errors';

describe('dispatch outcome classification', () => {
  test.each([
    [200, 'received', undefined],
    [202, 'received', undefined],
    [400, 'refused', 'http_4xx'],
    [404, 'refused', 'http_4xx'],
    [422, 'refused', 'http_4xx'],
    [408, 'transient', 'http_4xx'],
    [425, 'transient', 'http_4xx'],
    [429, 'transient', 'http_4xx'],
    [500, 'transient', 'http_5xx'],
    [503, 'transient', 'http_5xx'],
    [302, 'ambiguous', 'unknown'],
  ])('HTTP %i is %s (%s)', (status, kind, errorClass) => {
    expect(classifyDispatchStatus(status)).toEqual({ kind, ...(errorClass ? { errorClass } : {}) });
  });

  test.each([
    ['ECONNREFUSED', 'connect', 'transient'],
    ['ENOTFOUND', 'connect', 'transient'],
    ['EAI_AGAIN', 'connect', 'transient'],
    ['ETIMEDOUT', 'timeout', 'ambiguous'],
    ['ECONNABORTED', 'timeout', 'ambiguous'],
    ['ERR_CANCELED', 'timeout', 'ambiguous'],
    ['ECONNRESET', 'unknown', 'ambiguous'],
    [undefined, 'unknown', 'ambiguous'],
  ])('error %s is class %s, %s', (code, errorClass, kind) => {
    expect(classifyTransportError(code)).toEqual({ errorClass, kind });
  });
});

describe('Retry-After', () => {
  const now = new Date('2026-01-01T00:00:00Z');
  test('seconds', () => expect(parseRetryAfter('3', now)).toBe(3000));
  test('an HTTP date', () => expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', now)).toBe(10_000));
  test('a date in the past is now', () => expect(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now)).toBe(0));
  test('absent or garbage', () => {
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
    expect(parseRetryAfter('soon', now)).toBeUndefined();
  });
});
