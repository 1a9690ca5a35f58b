import { mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, DEFAULTS, isLoopbackHost, loadConfig } from '../../src/config/config';
import { parsePartners, PartnersFileError } from '../../src/config/partners';
import { writePartnersFile } from '../support/service';

const partner = { id: 'classroom', baseUrl: 'http://127.0.0.1:4010', callback: { secret: 'env:CLASSROOM_SECRET' }, headers: { Authorization: 'env:CLASSROOM_TOKEN' } };
const envWith = (extra: Record<string, string> = {}) => ({
  PARTNERS_FILE: writePartnersFile([partner]),
  CLASSROOM_SECRET: 'whsec_abc',
  CLASSROOM_TOKEN: 'Bearer t0ken',
  ...extra,
});

describe('config', () => {
  test('defaults as documented', () => {
    const c = loadConfig(envWith());
    expect(c).toMatchObject({
      host: '127.0.0.1',
      port: 3000,
      publicBaseUrl: 'http://127.0.0.1:3000',
      reconcileCron: '*/10 * * * * *',
      callbackLookupTimeoutMs: 3000,
      maxBodyBytes: 262_144,
      logLevel: 'info',
      apiKeys: [],
      databaseUrl: undefined,
      usesBundledPartners: false,
    });
    expect(c.dataDir.endsWith('.data')).toBe(true);
    expect(Object.isFrozen(c)).toBe(true);
    expect(DEFAULTS.callbackLookupTimeoutMs).toBe(3000);
  });

  test('PARTNER_IO_THREADS: one partner I/O thread by default, 0 keeps partner HTTP on the main thread, nonsense refused', () => {
    expect(loadConfig(envWith()).partnerIoThreads).toBe(1);
    expect(loadConfig(envWith({ PARTNER_IO_THREADS: '0' })).partnerIoThreads).toBe(0);
    expect(loadConfig(envWith({ PARTNER_IO_THREADS: '4' })).partnerIoThreads).toBe(4);
    for (const bad of ['-1', '17', '1.5', 'two']) expect(() => loadConfig(envWith({ PARTNER_IO_THREADS: bad }))).toThrow(/PARTNER_IO_THREADS/);
  });

  test('env: references are resolved, secrets never appear literally in the file', () => {
    const c = loadConfig(envWith());
    expect(c.partners[0]!.callback.secrets).toEqual(['whsec_abc']);
    expect(c.partners[0]!.headers).toEqual({ Authorization: 'Bearer t0ken' });
  });

  test('the bundled partners file is used when PARTNERS_FILE is unset', () => {
    const c = loadConfig({});
    expect(c.usesBundledPartners).toBe(true);
    expect(c.partners.map((p) => p.id)).toEqual(['classroom']);
  });

  test.each([
    [{ PORT: 'eighty' }, 'PORT'],
    [{ PORT: '70000' }, 'PORT'],
    [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
    [{ RECONCILE_CRON: 'every minute' }, 'RECONCILE_CRON'],
    [{ CALLBACK_LOOKUP_TIMEOUT_MS: '-1' }, 'CALLBACK_LOOKUP_TIMEOUT_MS'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ PUBLIC_BASE_URL: 'ftp://x' }, 'PUBLIC_BASE_URL'],
    [{ HOST: '0.0.0.0' }, 'API_KEYS'],
    [{ API_KEYS: 'short' }, 'API_KEYS'],
  ])('%j fails naming %s', (extra, name) => {
    expect(() => loadConfig(envWith(extra))).toThrow(ConfigError);
    expect(() => loadConfig(envWith(extra))).toThrow(name);
  });

  test('keys are required off loopback and accepted with them', () => {
    expect(loadConfig(envWith({ HOST: '0.0.0.0', PUBLIC_BASE_URL: 'https://reconciler.example', API_KEYS: 'k'.repeat(16) + ',' + 'j'.repeat(20) })).apiKeys).toHaveLength(2);
    expect(['127.0.0.1', '127.1.2.3', '::1', 'localhost'].every(isLoopbackHost)).toBe(true);
    expect(['0.0.0.0', '10.0.0.1', 'example.com'].some(isLoopbackHost)).toBe(false);
  });
});

describe('safe defaults off loopback (issue 7 item 15)', () => {
  const offLoopback = { HOST: '0.0.0.0', API_KEYS: 'k'.repeat(16), PUBLIC_BASE_URL: 'https://reconciler.example' };

  test('the bundled demo partners file is refused, whether implied or named, and the message names PARTNERS_FILE', () => {
    const implied = { ...offLoopback };
    expect(() => loadConfig(implied)).toThrow(ConfigError);
    expect(() => loadConfig(implied)).toThrow(/PARTNERS_FILE/);
    const named = { ...offLoopback, PARTNERS_FILE: path.relative(process.cwd(), path.join(__dirname, '../../config/partners.example.json')) };
    expect(() => loadConfig(named)).toThrow(/PARTNERS_FILE/);
    const linked = path.join(mkdtempSync(path.join(tmpdir(), 'cr-link-')), 'partners.json');
    symlinkSync(path.join(__dirname, '../../config/partners.example.json'), linked);
    expect(() => loadConfig({ ...offLoopback, PARTNERS_FILE: linked })).toThrow(/PARTNERS_FILE/);
  });

  test('PUBLIC_BASE_URL is required, and the message names it', () => {
    const { PUBLIC_BASE_URL: _omitted, ...withoutBase } = offLoopback;
    expect(() => loadConfig(envWith(withoutBase))).toThrow(ConfigError);
    expect(() => loadConfig(envWith(withoutBase))).toThrow(/PUBLIC_BASE_URL/);
    expect(() => loadConfig(envWith({ ...withoutBase, HOST: '10.1.2.3' }))).toThrow(/PUBLIC_BASE_URL/);
  });

  test('with both given it starts; on loopback neither is needed', () => {
    expect(loadConfig(envWith(offLoopback)).publicBaseUrl).toBe('https://reconciler.example');
    expect(loadConfig({}).usesBundledPartners).toBe(true);
    expect(loadConfig({ HOST: 'localhost' }).publicBaseUrl).toBe('http://localhost:3000');
  });
});

describe('partners file', () => {
  test('a missing env reference names the field and the variable', () => {
    expect(() => parsePartners({ partners: [partner] }, { CLASSROOM_TOKEN: 'x' })).toThrow(/partners\[0\]\.callback\.secret: environment variable CLASSROOM_SECRET is not set/);
  });

  test.each([
    [{ ...partner, baseUrl: 'not a url' }, 'partners[0].baseUrl'],
    [{ ...partner, callback: { secret: 'plain' } }, 'partners[0].callback.secret'],
    [{ ...partner, callback: { verify: 'signature' } }, 'partners[0].callback.secret'],
    [{ ...partner, dispatch: { timeoutMs: 0 } }, 'partners[0].dispatch.timeoutMs'],
    [{ ...partner, status: { path: '/no-placeholder' } }, 'partners[0].status.path'],
    [{ ...partner, reconcile: { scheduleSeconds: [] } }, 'partners[0].reconcile.scheduleSeconds'],
    [{ ...partner, surprise: 1 }, 'partners[0]'],
    [{ ...partner, mapping: { status: 'no-slash' } }, 'partners[0].mapping.status'],
  ])('a bad field is named: %#', (bad, field) => {
    const env = { CLASSROOM_SECRET: 'whsec_abc', CLASSROOM_TOKEN: 't' };
    expect(() => parsePartners({ partners: [bad] }, env)).toThrow(PartnersFileError);
    expect(() => parsePartners({ partners: [bad] }, env)).toThrow(field);
  });

  test('duplicate ids are refused', () => {
    const env = { CLASSROOM_SECRET: 'whsec_abc', CLASSROOM_TOKEN: 't' };
    expect(() => parsePartners({ partners: [partner, partner] }, env)).toThrow('duplicate partner id');
  });

  test('poll-verified partners need no secret; rotation takes several', () => {
    const [a, b] = parsePartners(
      { partners: [{ id: 'a', baseUrl: 'http://x', callback: { verify: 'poll' } }, { id: 'b', baseUrl: 'http://y', callback: { secret: ['whsec_1', 'whsec_2'] } }] },
      {},
    );
    expect(a!.callback).toEqual({ verify: 'poll', secrets: [] });
    expect(b!.callback.secrets).toEqual(['whsec_1', 'whsec_2']);
  });

  test('an unreadable or non-JSON file names the file', () => {
    expect(() => loadConfig({ PARTNERS_FILE: '/nonexistent/partners.json' })).toThrow('PARTNERS_FILE /nonexistent/partners.json cannot be read');
  });
});
