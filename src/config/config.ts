import { realpathSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import cron from 'node-cron';
import { z } from 'zod';
import { loadPartnersFile, type PartnerConfig } from './partners';

/** Named defaults, so a reader sees every time and size limit in one place. */
export const DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 3000,
  dataDir: './.data',
  reconcileCron: '*/10 * * * * *',
  callbackLookupTimeoutMs: 3000,
  maxBodyBytes: 262_144,
  logLevel: 'info',
  dbPoolSize: 10,
  dbConnectTimeoutMs: 5000,
  /** Longest any one statement may run; the claim and settle statements take milliseconds. */
  dbStatementTimeoutMs: 15_000,
  /** In-flight dispatches per process; beyond it new tasks wait for the reconciler instead of piling up sockets. */
  dispatchConcurrency: 128,
  reconcileConcurrency: 32,
  reconcileBatchSize: 200,
  /** A reconciler claim outlives a stuck replica by at most this long. */
  reconcileLeaseMs: 60_000,
  shutdownTimeoutMs: 10_000,
  /** After SIGTERM, /readyz answers 503 this long before the listener closes, so load balancers stop sending first. */
  shutdownReadinessDelayMs: 2000,
  /** How long start-up waits for the database (with backoff) before giving up; readiness is 503 meanwhile. */
  dbStartupTimeoutMs: 60_000,
  /** `waitSeconds` reads held open at once per process; beyond it they are answered at once. */
  maxLongPollWaiters: 1000,
  retentionDays: 30,
  /** Group commit: most items in one statement, and how long a batch waits for company while another is in flight. */
  batchMaxSize: 64,
  batchWindowMs: 1,
  /** Back-pressure: a write not started within this long is answered 503 with Retry-After. */
  batchMaxWaitMs: 2000,
  /** Back-pressure: beyond this many waiting writes per kind, new ones are answered 503 at once. */
  batchMaxQueued: 4096,
});

/** The example partners file shipped with the service: one partner served by the bundled simulator. */
export const BUNDLED_PARTNERS_FILE = path.resolve(__dirname, '../../../config/partners.example.json');
const BUNDLED_PARTNERS_FILE_FROM_SOURCE = path.resolve(__dirname, '../../config/partners.example.json');

const intFromEnv = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const envSchema = z.object({
  DATABASE_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL').optional(),
  DATA_DIR: z.string().min(1).default(DEFAULTS.dataDir),
  HOST: z.string().min(1).default(DEFAULTS.host),
  PORT: intFromEnv(0, 65_535).default(DEFAULTS.port),
  PUBLIC_BASE_URL: z.url({ protocol: /^https?$/ }).optional(),
  PARTNERS_FILE: z.string().min(1).optional(),
  API_KEYS: z.string().optional(),
  RECONCILE_CRON: z
    .string()
    .default(DEFAULTS.reconcileCron)
    .refine((expr) => cron.validate(expr), 'must be a valid node-cron expression'),
  CALLBACK_LOOKUP_TIMEOUT_MS: intFromEnv(0, 60_000).default(DEFAULTS.callbackLookupTimeoutMs),
  MAX_BODY_BYTES: intFromEnv(1024, 64 * 1024 * 1024).default(DEFAULTS.maxBodyBytes),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(DEFAULTS.logLevel),
  DB_POOL_SIZE: intFromEnv(1, 500).default(DEFAULTS.dbPoolSize),
  DB_CONNECT_TIMEOUT_MS: intFromEnv(100, 120_000).default(DEFAULTS.dbConnectTimeoutMs),
  DB_STATEMENT_TIMEOUT_MS: intFromEnv(100, 3_600_000).default(DEFAULTS.dbStatementTimeoutMs),
  DISPATCH_CONCURRENCY: intFromEnv(1, 10_000).default(DEFAULTS.dispatchConcurrency),
  RECONCILE_CONCURRENCY: intFromEnv(1, 10_000).default(DEFAULTS.reconcileConcurrency),
  RECONCILE_BATCH_SIZE: intFromEnv(1, 10_000).default(DEFAULTS.reconcileBatchSize),
  RECONCILE_LEASE_MS: intFromEnv(5000, 3_600_000).default(DEFAULTS.reconcileLeaseMs),
  MAX_LONG_POLL_WAITERS: intFromEnv(0, 1_000_000).default(DEFAULTS.maxLongPollWaiters),
  SHUTDOWN_TIMEOUT_MS: intFromEnv(0, 600_000).default(DEFAULTS.shutdownTimeoutMs),
  SHUTDOWN_READINESS_DELAY_MS: intFromEnv(0, 120_000).default(DEFAULTS.shutdownReadinessDelayMs),
  DB_STARTUP_TIMEOUT_MS: intFromEnv(0, 3_600_000).default(DEFAULTS.dbStartupTimeoutMs),
  RETENTION_DAYS: intFromEnv(1, 3650).default(DEFAULTS.retentionDays),
  BATCH_MAX_SIZE: intFromEnv(1, 1000).default(DEFAULTS.batchMaxSize),
  BATCH_WINDOW_MS: intFromEnv(0, 1000).default(DEFAULTS.batchWindowMs),
  BATCH_MAX_WAIT_MS: intFromEnv(1, 120_000).default(DEFAULTS.batchMaxWaitMs),
  BATCH_MAX_QUEUED: intFromEnv(1, 1_000_000).default(DEFAULTS.batchMaxQueued),
});

export interface Config {
  /** Unset: start an embedded PostgreSQL under `dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  /** Base of the callback URL handed to partners; derived from host and port when not set. */
  readonly publicBaseUrl: string;
  readonly partnersFile: string;
  /** True when PARTNERS_FILE was not given: the bundled simulator is started beside the service. */
  readonly usesBundledPartners: boolean;
  readonly partners: readonly PartnerConfig[];
  /** Empty means no authentication, which is allowed only on a loopback host. */
  readonly apiKeys: readonly string[];
  readonly reconcileCron: string;
  readonly callbackLookupTimeoutMs: number;
  readonly maxBodyBytes: number;
  readonly logLevel: z.infer<typeof envSchema>['LOG_LEVEL'];
  readonly dbPoolSize: number;
  readonly dbConnectTimeoutMs: number;
  /** Postgres statement_timeout of the service's pool (migrations run without one). */
  readonly dbStatementTimeoutMs: number;
  readonly dispatchConcurrency: number;
  readonly reconcileConcurrency: number;
  readonly reconcileBatchSize: number;
  readonly reconcileLeaseMs: number;
  readonly shutdownTimeoutMs: number;
  /** SIGTERM: how long /readyz says 503 while still serving, before the listener closes. */
  readonly shutdownReadinessDelayMs: number;
  /** Start-up: how long to wait for the database before exiting (0: try once). */
  readonly dbStartupTimeoutMs: number;
  /** Cap on `waitSeconds` reads held open at once in this process. */
  readonly maxLongPollWaiters: number;
  readonly retentionDays: number;
  /** Group commit of creates and callbacks (see src/db/batcher.ts). */
  readonly batch: { readonly maxSize: number; readonly windowMs: number; readonly maxWaitMs: number; readonly maxQueued: number };
}

/** Raised when the environment is invalid; the message names every bad variable. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

/**
 * Builds the one frozen Config from an environment. The only place that reads environment variables
 * (the partners file's `env:` references included); fails fast with a message naming the bad variable.
 *
 * @example const config = loadConfig(process.env);
 */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const blankAsUnset = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = envSchema.safeParse(blankAsUnset);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`invalid environment:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  const apiKeys = (e.API_KEYS ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  if (apiKeys.length === 0 && !isLoopbackHost(e.HOST)) {
    throw new ConfigError(`API_KEYS: required when HOST (${e.HOST}) is not a loopback address`);
  }
  if (apiKeys.some((k) => k.length < 16)) {
    throw new ConfigError('API_KEYS: every key must be at least 16 characters');
  }
  const partnersFile = e.PARTNERS_FILE ?? bundledPartnersFile();
  const usesBundledPartners = e.PARTNERS_FILE === undefined;
  if (!isLoopbackHost(e.HOST)) {
    // Reachable from other machines: the demo's public secret would let anyone forge callbacks, and
    // partners would be told to call back a loopback address they cannot reach.
    const problems: string[] = [];
    if (usesBundledPartners || isBundledPartnersFile(partnersFile)) {
      problems.push(`PARTNERS_FILE: required when HOST (${e.HOST}) is not a loopback address; the bundled demo partners file carries a public secret`);
    }
    if (e.PUBLIC_BASE_URL === undefined) {
      problems.push(`PUBLIC_BASE_URL: required when HOST (${e.HOST}) is not a loopback address; partners call back this URL, and a default built from HOST would not reach this service`);
    }
    if (problems.length > 0) throw new ConfigError(`unsafe configuration:\n  ${problems.join('\n  ')}`);
  }
  const urlHost = isIP(e.HOST) === 6 ? `[${e.HOST}]` : e.HOST === '0.0.0.0' ? '127.0.0.1' : e.HOST;
  return Object.freeze({
    databaseUrl: e.DATABASE_URL,
    dataDir: path.resolve(e.DATA_DIR),
    host: e.HOST,
    port: e.PORT,
    publicBaseUrl: (e.PUBLIC_BASE_URL ?? `http://${urlHost}:${e.PORT}`).replace(/\/+$/, ''),
    partnersFile,
    usesBundledPartners,
    partners: loadPartnersFile(partnersFile, env),
    apiKeys: Object.freeze(apiKeys),
    reconcileCron: e.RECONCILE_CRON,
    callbackLookupTimeoutMs: e.CALLBACK_LOOKUP_TIMEOUT_MS,
    maxBodyBytes: e.MAX_BODY_BYTES,
    logLevel: e.LOG_LEVEL,
    dbPoolSize: e.DB_POOL_SIZE,
    dbConnectTimeoutMs: e.DB_CONNECT_TIMEOUT_MS,
    dbStatementTimeoutMs: e.DB_STATEMENT_TIMEOUT_MS,
    dispatchConcurrency: e.DISPATCH_CONCURRENCY,
    reconcileConcurrency: e.RECONCILE_CONCURRENCY,
    reconcileBatchSize: e.RECONCILE_BATCH_SIZE,
    reconcileLeaseMs: e.RECONCILE_LEASE_MS,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    shutdownReadinessDelayMs: e.SHUTDOWN_READINESS_DELAY_MS,
    dbStartupTimeoutMs: e.DB_STARTUP_TIMEOUT_MS,
    maxLongPollWaiters: e.MAX_LONG_POLL_WAITERS,
    retentionDays: e.RETENTION_DAYS,
    batch: Object.freeze({ maxSize: e.BATCH_MAX_SIZE, windowMs: e.BATCH_WINDOW_MS, maxWaitMs: e.BATCH_MAX_WAIT_MS, maxQueued: e.BATCH_MAX_QUEUED }),
  });
}

/** True when `file` is the bundled demo file (or a link to it), whichever path names it. */
function isBundledPartnersFile(file: string): boolean {
  const real = (f: string) => {
    try {
      return realpathSync(f);
    } catch {
      return path.resolve(f);
    }
  };
  const target = real(file);
  return target === real(BUNDLED_PARTNERS_FILE) || target === real(BUNDLED_PARTNERS_FILE_FROM_SOURCE);
}

/** The bundled file sits at the repository root; __dirname differs between `dist/src/config` and `src/config`. */
function bundledPartnersFile(): string {
  return __dirname.includes(`${path.sep}dist${path.sep}`) ? BUNDLED_PARTNERS_FILE : BUNDLED_PARTNERS_FILE_FROM_SOURCE;
}
