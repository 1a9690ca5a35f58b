import fc from 'fast-check';
import { ConfigError, loadConfig } from '../../src/config/config';
import { writePartnersFile } from '../support/service';

/** The start-up wait and the readiness delay: documented defaults, and every value either accepted as given or refused by name. */

const partnersFile = writePartnersFile([{ id: 'classroom', baseUrl: 'http://127.0.0.1:4010', callback: { verify: 'poll' } }]);
const env = (extra: Record<string, string>) => ({ PARTNERS_FILE: partnersFile, ...extra });

test('defaults: wait up to 60 s for the database, 2 s of readiness 503 before the listener closes', () => {
  expect(loadConfig(env({}))).toMatchObject({ dbStartupTimeoutMs: 60_000, shutdownReadinessDelayMs: 2000 });
});

const cases = [
  { name: 'DB_STARTUP_TIMEOUT_MS', key: 'dbStartupTimeoutMs', max: 3_600_000 },
  { name: 'SHUTDOWN_READINESS_DELAY_MS', key: 'shutdownReadinessDelayMs', max: 120_000 },
] as const;

test.each(cases)('property: $name takes any whole number of ms in [0, $max] as given and refuses anything else by name', ({ name, key, max }) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max }), (ms) => loadConfig(env({ [name]: String(ms) }))[key] === ms),
  );
  fc.assert(
    fc.property(
      fc.oneof(fc.integer({ min: max + 1 }), fc.integer({ max: -1 }), fc.double({ min: 0.1, max: 1000, noInteger: true }), fc.stringMatching(/^[a-z]{1,8}$/)),
      (bad) => {
        try {
          loadConfig(env({ [name]: String(bad) }));
          return false;
        } catch (err) {
          return err instanceof ConfigError && err.message.includes(name);
        }
      },
    ),
  );
});
