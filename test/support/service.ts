import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import axios, { type AxiosInstance } from 'axios';
import pino from 'pino';
import type { Clock } from '../../src/clock';
import { loadConfig } from '../../src/config/config';
import { freePort } from '../../src/db/embedded-postgres';
import { startRuntime, type Runtime } from '../../src/runtime';
import { startSimulator, type Simulator } from '../../src/simulator/simulator';
import type { TestDatabase } from './database';

export const TEST_API_KEY = 'test-key-0123456789abcdef';
export const TEST_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
export const OTHER_SECRET = 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD';

export interface TestService {
  runtime: Runtime;
  simulator: Simulator;
  url: string;
  /** Axios against the service with the API key; never throws on an HTTP status. */
  api: AxiosInstance;
  stop(): Promise<void>;
}

export interface TestServiceOptions {
  db: TestDatabase;
  /** Extra fields merged into the `sim` partner's config (besides id, baseUrl and the callback secret). */
  partner?: Record<string, unknown>;
  /** More partners, written as given (baseUrl may use "{simulator}"). */
  extraPartners?: Record<string, unknown>[];
  env?: Record<string, string>;
  clock?: Clock;
  /** Reuse a running simulator (several services over one partner). */
  simulator?: Simulator;
  /** False: no reconciler, housekeeping or safety-net loops; the test drives them (e.g. `runtime.reconciler.runOnce()`). */
  background?: boolean;
}

/** Writes a partners file for tests and returns its path. */
export function writePartnersFile(partners: unknown[]): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'cr-partners-'));
  const file = path.join(dir, 'partners.json');
  writeFileSync(file, JSON.stringify({ partners }, null, 2));
  return file;
}

/**
 * A real service over real HTTP on a free port, with its own database and the simulator as its partner
 * `sim`. Configuration goes through loadConfig, the same path as production.
 */
export async function startTestService(opts: TestServiceOptions): Promise<TestService> {
  const simulator = opts.simulator ?? (await startSimulator({ secrets: [TEST_SECRET], defaultCallbackDelayMs: 100 }));
  const port = await freePort();
  const sim = {
    id: 'sim',
    baseUrl: simulator.url,
    dispatch: { path: '/requests', timeoutMs: 1000, maxAttempts: 3 },
    status: { path: '/requests/{requestNo}', timeoutMs: 1000 },
    callback: { secret: TEST_SECRET, verify: 'signature' },
    ...opts.partner,
  };
  const extra = (opts.extraPartners ?? []).map((p) => JSON.parse(JSON.stringify(p).replaceAll('{simulator}', simulator.url)));
  const config = loadConfig({
    HOST: '127.0.0.1',
    PORT: String(port),
    API_KEYS: TEST_API_KEY,
    PARTNERS_FILE: writePartnersFile([sim, ...extra]),
    DATABASE_URL: opts.db.url,
    LOG_LEVEL: 'silent',
    SHUTDOWN_TIMEOUT_MS: '2000',
    // Tests stop services many times; the readiness delay has its own test (startup-and-drain.test.ts).
    SHUTDOWN_READINESS_DELAY_MS: '0',
    ...opts.env,
  });
  const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
  const runtime = await startRuntime({
    config,
    logger,
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.background !== undefined ? { background: opts.background } : {}),
  });
  const api = axios.create({
    baseURL: runtime.url,
    headers: { authorization: `Bearer ${TEST_API_KEY}` },
    validateStatus: () => true,
  });
  return {
    runtime,
    simulator,
    url: runtime.url,
    api,
    stop: async () => {
      await runtime.stop();
      if (!opts.simulator) await simulator.close();
    },
  };
}

/** Polls `probe` until it returns a defined value or `timeoutMs` passes (then fails with `what`). */
export async function eventually<T>(probe: () => Promise<T | undefined | false>, what: string, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
