import fc from 'fast-check';
import { AddressGuard, refusedRange, type Resolver } from '../../src/notifications/address-guard';
import { NotificationSender } from '../../src/notifications/notification-sender';
import { judgeAttempt, parseRetryAfter } from '../../src/notifications/retry-policy';
import { startReceiver } from '../e2e/notification-helpers';
import { TEST_NOTIFY_SECRET } from '../support/service';

/** Ranges a notification must never reach, written out from the RFCs (an oracle independent of ipaddr.js). */
const REFUSED_V4: Array<[string, number]> = [
  ['0.0.0.0', 8], // "this network" / unspecified
  ['10.0.0.0', 8], // RFC 1918
  ['100.64.0.0', 10], // CGNAT, RFC 6598
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12], // RFC 1918
  ['192.168.0.0', 16], // RFC 1918
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
];
const toInt = (ip: string) => ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
const toIp = (n: number) => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');

describe('address classification', () => {
  test('every address inside a refused IPv4 range is refused, also written as IPv4-mapped IPv6', () => {
    const inRange = fc.constantFrom(...REFUSED_V4).chain(([base, bits]) => fc.integer({ min: 0, max: 2 ** (32 - bits) - 1 }).map((off) => toIp(toInt(base) + off)));
    fc.assert(
      fc.property(inRange, (ip) => {
        expect(refusedRange(ip)).toBeDefined();
        expect(refusedRange(`::ffff:${ip}`)).toBeDefined();
      }),
    );
  });

  test('well-known public addresses are allowed; IPv6 loopback, unique-local, link-local and unspecified are not', () => {
    for (const ip of ['8.8.8.8', '1.1.1.1', '93.184.216.34', '2606:4700:4700::1111']) expect(refusedRange(ip)).toBeUndefined();
    for (const ip of ['::1', '::', 'fc00::1', 'fd12:3456::1', 'fe80::1', 'ff02::1', '::ffff:10.0.0.1', '64:ff9b::a00:1']) expect(refusedRange(ip)).toBeDefined();
  });

  test('the create-time check never throws, and refuses every non-http(s) URL', async () => {
    const guard = new AddressGuard({ allowedHosts: [], resolver: async () => [] });
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string(), fc.webUrl(), fc.constantFrom('ftp://x.example/', 'file:///etc/passwd', 'javascript:alert(1)', 'gopher://a.example/')), async (url) => {
        const refusal = await guard.refusalAtCreate(url);
        if (!/^https?:/i.test(url)) expect(refusal).toBeDefined();
      }),
    );
  });

  test('NOTIFY_ALLOWED_HOSTS lets a listed host, or host:port, through; nothing else', async () => {
    const guard = new AddressGuard({ allowedHosts: ['127.0.0.1', 'localhost:8080', '[::1]:9000'] });
    expect(await guard.refusalAtCreate('http://127.0.0.1:1234/x')).toBeUndefined();
    expect(await guard.refusalAtCreate('http://localhost:8080/x')).toBeUndefined();
    expect(await guard.refusalAtCreate('http://LOCALHOST:8080/x')).toBeUndefined();
    expect(await guard.refusalAtCreate('http://localhost:8081/x')).toMatch(/loopback/);
    expect(await guard.refusalAtCreate('http://[::1]:9000/x')).toBeUndefined();
    expect(await guard.refusalAtCreate('http://[::1]:9001/x')).toMatch(/loopback/);
    expect(await guard.refusalAtCreate('http://127.0.0.2/x')).toMatch(/loopback/);
  });

  test('a name is judged by what it resolves to: any refused address refuses it', async () => {
    const resolver: Resolver = async (host) =>
      host === 'mixed.test' ? [{ address: '93.184.216.34', family: 4 }, { address: '10.1.2.3', family: 4 }] : [{ address: '93.184.216.34', family: 4 }];
    const guard = new AddressGuard({ allowedHosts: [], resolver });
    expect(await guard.refusalAtCreate('https://public.test/hook')).toBeUndefined();
    expect(await guard.refusalAtCreate('https://mixed.test/hook')).toMatch(/10\.1\.2\.3 \(private\)/);
  });
});

test('DNS rebinding: a name that was public at create and resolves to loopback at connect time is refused before any byte is sent', async () => {
  const receiver = await startReceiver();
  let lookups = 0;
  // First answer public (the create-time check passes), then loopback (the rebinding).
  const resolver: Resolver = async () => (++lookups === 1 ? [{ address: '93.184.216.34', family: 4 }] : [{ address: '127.0.0.1', family: 4 }]);
  const guard = new AddressGuard({ allowedHosts: [], resolver });
  const sender = new NotificationSender(TEST_NOTIFY_SECRET, guard, 2000, 4);
  try {
    const url = `http://rebind.test:${receiver.port}/hook`;
    expect(await guard.refusalAtCreate(url)).toBeUndefined();
    const result = await sender.send({
      id: '01a22bba-03c2-7de2-a043-1c57e995b089',
      url,
      type: 'task.succeeded',
      occurred_at: new Date(),
      task_snapshot: { id: '01a22bba-03c2-7de2-a043-1c57e995b089', status: 'succeeded', created_at: new Date().toISOString(), updated_at: new Date().toISOString(), next_check_at: null, dispatched_at: null, completed_at: null },
    } as never);
    expect(result.statusCode).toBeUndefined();
    expect(result.error).toMatch(/address refused: rebind\.test resolves to 127\.0\.0\.1 \(loopback\)/);
    expect(lookups).toBe(2);
    expect(receiver.arrivals).toHaveLength(0);
  } finally {
    sender.close();
    await receiver.close();
  }
});

describe('retry policy', () => {
  const schedule = [5, 300, 1800, 7200, 18000, 36000, 36000];

  test('2xx delivered, 410 gone, otherwise the schedule step, and failed after the last step', () => {
    expect(judgeAttempt(schedule, 1, 200)).toEqual({ status: 'delivered' });
    expect(judgeAttempt(schedule, 1, 299)).toEqual({ status: 'delivered' });
    expect(judgeAttempt(schedule, 1, 410)).toEqual({ status: 'gone' });
    expect(judgeAttempt(schedule, 1, 500)).toEqual({ status: 'pending', retryInMs: 5000 });
    expect(judgeAttempt(schedule, 2, undefined)).toEqual({ status: 'pending', retryInMs: 300_000 });
    expect(judgeAttempt(schedule, 7, 302)).toEqual({ status: 'pending', retryInMs: 36_000_000 });
    expect(judgeAttempt(schedule, 8, 500)).toEqual({ status: 'failed' });
    expect(judgeAttempt(schedule, 8, 410)).toEqual({ status: 'gone' });
  });

  test('Retry-After on 429/503 is waited for, capped at the next step; ignored on other statuses', () => {
    expect(judgeAttempt(schedule, 1, 503, 60_000)).toEqual({ status: 'pending', retryInMs: 60_000 });
    expect(judgeAttempt(schedule, 1, 429, 3_600_000)).toEqual({ status: 'pending', retryInMs: 300_000 });
    expect(judgeAttempt(schedule, 1, 429, 1000)).toEqual({ status: 'pending', retryInMs: 5000 });
    expect(judgeAttempt(schedule, 1, 500, 60_000)).toEqual({ status: 'pending', retryInMs: 5000 });
    expect(judgeAttempt(schedule, 7, 503, 10 ** 9)).toEqual({ status: 'pending', retryInMs: 36_000_000 });
  });

  test('property: a verdict never waits past the larger of this step and the next, and the schedule always ends', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 100_000, noNaN: true }), { minLength: 1, maxLength: 10 }),
        fc.integer({ min: 1, max: 15 }),
        fc.option(fc.integer({ min: 100, max: 599 }), { nil: undefined }),
        fc.option(fc.nat(), { nil: undefined }),
        (sched, attempts, status, retryAfter) => {
          const v = judgeAttempt(sched, attempts, status, retryAfter);
          if (v.status === 'pending') {
            expect(attempts).toBeLessThanOrEqual(sched.length);
            const bound = Math.max(sched[attempts - 1]!, sched[attempts] ?? 0) * 1000;
            expect(v.retryInMs).toBeLessThanOrEqual(bound);
            expect(v.retryInMs).toBeGreaterThanOrEqual(sched[attempts - 1]! * 1000);
          } else if (v.status === 'failed') {
            expect(attempts).toBeGreaterThan(sched.length);
          }
        },
      ),
    );
  });

  test('Retry-After: seconds or an HTTP date', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter('-5', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });
});
