import fc from 'fast-check';
import { ConfigError, loadConfig, parseApiKey } from '../../src/config/config';
import { writePartnersFile } from '../support/service';

const env = (API_KEYS: string) => ({
  API_KEYS,
  PARTNERS_FILE: writePartnersFile([{ id: 'p', baseUrl: 'http://127.0.0.1:4010', callback: { secret: 'whsec_abc' } }]),
});

describe('API_KEYS labels', () => {
  test('label:key gives the key its label; a plain key still works, labelled by a fingerprint', () => {
    const keys = loadConfig(env('oncall:0123456789abcdef0123, plainkey-0123456789abcdef')).apiKeys;
    expect(keys[0]).toEqual({ label: 'oncall', key: '0123456789abcdef0123' });
    expect(keys[1]!.key).toBe('plainkey-0123456789abcdef');
    expect(keys[1]!.label).toMatch(/^key-[0-9a-f]{8}$/);
    expect(keys[1]!.label).not.toContain('plainkey');
  });

  test('a labelled key must itself be 16 characters or more', () => {
    expect(() => loadConfig(env('oncall:short'))).toThrow(ConfigError);
    expect(() => loadConfig(env('oncall:short'))).toThrow(/API_KEYS/);
  });

  test('property: a plain key without ":" is kept whole; label:key splits at the first ":"', () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/),
        fc.stringMatching(/^[A-Za-z0-9_+/=.-]{16,80}$/),
        (label, key) => {
          expect(parseApiKey(key)).toEqual({ label: expect.stringMatching(/^key-[0-9a-f]{8}$/), key });
          expect(parseApiKey(`${label}:${key}`)).toEqual({ label, key });
        },
      ),
    );
  });

  test('property: parsing never loses the key text and never throws', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (entry) => {
        const k = parseApiKey(entry);
        expect(entry.endsWith(k.key)).toBe(true);
        expect(k.label.length).toBeGreaterThan(0);
      }),
    );
  });
});
