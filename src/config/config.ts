import { createHash } from 'node:crypto';
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
  /** Worker threads that carry the partner HTTP (dispatches, status queries); 0 keeps it on the main thread. */
  partnerIoThreads: 1,
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
  notifyTimeoutMs: 5000,
  /** The schedule Svix publishes: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. */
  notifyScheduleSeconds: '5,300,1800,7200,18000,36000,36000',
  /** Notification attempts in flight per process (0: this process delivers none; other replicas do). */
  notifyConcurrency: 32,
  /** Attempts in flight per receiver host and process, so one slow receiver cannot take every slot. */
  notifyHostConcurrency: 4,
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
  PARTNER_IO_THREADS: intFromEnv(0, 16).default(DEFAULTS.partnerIoThreads),
  RECONCILE_BATCH_SIZE: intFromEnv(1, 10_000).default(DEFAULTS.reconcileBatchSize),
  RECONCILE_LEASE_MS: intFromEnv(5000, 3_600_000).default(DEFAULTS.reconcileLeaseMs),
  MAX_LONG_POLL_WAITERS: intFromEnv(0, 1_000_000).default(DEFAULTS.maxLongPollWaiters),
  SHUTDOWN_TIMEOUT_MS: intFromEnv(0, 600_000).default(DEFAULTS.shutdownTimeoutMs),
  SHUTDOWN_READINESS_DELAY_MS: intFromEnv(0, 120_000).default(DEFAULTS.shutdownReadinessDelayMs),
  DB_STARTUP_TIMEOUT_MS: intFromEnv(0, 3_600_000).default(DEFAULTS.dbStartupTimeoutMs),
  RETENTION_DAYS: intFromEnv(1, 3650).default(DEFAULTS.retentionDays),
  NOTIFY_SECRET: z
    .string()
    .regex(/^whsec_[A-Za-z0-9+/]{22,}={0,2}$/, 'must be whsec_ followed by a base64 key of at least 16 bytes')
    .optional(),
  NOTIFY_TIMEOUT_MS: intFromEnv(100, 120_000).default(DEFAULTS.notifyTimeoutMs),
  NOTIFY_SCHEDULE_SECONDS: z
    .string()
    .default(DEFAULTS.notifyScheduleSeconds)
    .transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean).map(Number))
    .refine((list) => list.length >= 1 && list.length <= 50 && list.every((n) => Number.isFinite(n) && n >= 0 && n <= 30 * 86_400), 'must be 1-50 comma-separated waits in seconds (0 to 2592000)'),
  NOTIFY_ALLOWED_HOSTS: z.string().optional(),
  // 0: this replica writes notifications (the outbox) but delivers none; replicas with workers do.
  NOTIFY_CONCURRENCY: intFromEnv(0, 10_000).default(DEFAULTS.notifyConcurrency),
  NOTIFY_HOST_CONCURRENCY: intFromEnv(1, 10_000).default(DEFAULTS.notifyHostConcurrency),
  LONG_POLL_NOTIFY: z.enum(['true', 'false']).default('true'),
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
  readonly apiKeys: readonly ApiKey[];
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
  /** Worker threads for partner HTTP (PARTNER_IO_THREADS); 0: on the main thread. */
  readonly partnerIoThreads: number;
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
  /** Unset: no notification is sent and a task with a notifyUrl is refused (422). */
  readonly notifySecret: string | undefined;
  readonly notifyTimeoutMs: number;
  /** Waits before each retry of a notification, in seconds; past the last one it is `failed`. */
  readonly notifyScheduleSeconds: readonly number[];
  /** `host` or `host:port` (lower case) allowed as notifyUrl although private or loopback. */
  readonly notifyAllowedHosts: readonly string[];
  readonly notifyConcurrency: number;
  readonly notifyHostConcurrency: number;
  /**
   * Settling moves are announced by a Postgres NOTIFY after their commit (batched every 10 ms; see
   * SettledWakeSender) so `waitSeconds` reads on every replica wake at once. False
   * (e.g. behind a transaction-pooling PgBouncer, which cannot LISTEN) falls back to re-reading every 500 ms.
   */
  readonly longPollNotify: boolean;
  /** Group commit of creates and callbacks (see src/db/batcher.ts). */
  readonly batch: { readonly maxSize: number; readonly windowMs: number; readonly maxWaitMs: number; readonly maxQueued: number };
}

/** A client API key and the label its actions are recorded under (the `by` of a manual event). */
export interface ApiKey {
  readonly label: string;
  readonly key: string;
}

const LABELLED_KEY = /^([A-Za-z0-9._-]{1,64}):(.+)$/;
const MIN_KEY_LENGTH = 16;

/**
 * One `API_KEYS` entry: `label:key` (e.g. `oncall:…`), or a plain key, labelled by a short fingerprint
 * of itself (`key-1a2b3c4d`) so its actions can still be told apart without showing the key. A plain key
 * that itself contains `:` after a label-like prefix must be given a label in front.
 */
export function parseApiKey(entry: string): ApiKey {
  const m = LABELLED_KEY.exec(entry);
  if (m && m[2]!.length >= MIN_KEY_LENGTH) return Object.freeze({ label: m[1]!, key: m[2]! });
  return Object.freeze({ label: `key-${createHash('sha256').update(entry).digest('hex').slice(0, 8)}`, key: entry });
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
  const apiKeys = (e.API_KEYS ?? '').split(',').map((k) => k.trim()).filter(Boolean).map(parseApiKey);
  if (apiKeys.length === 0 && !isLoopbackHost(e.HOST)) {
    throw new ConfigError(`API_KEYS: required when HOST (${e.HOST}) is not a loopback address`);
  }
  if (apiKeys.some((k) => k.key.length < MIN_KEY_LENGTH)) {
    throw new ConfigError(`API_KEYS: every key must be at least ${MIN_KEY_LENGTH} characters (a label goes in front: label:key)`);
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
    partnerIoThreads: e.PARTNER_IO_THREADS,
    reconcileBatchSize: e.RECONCILE_BATCH_SIZE,
    reconcileLeaseMs: e.RECONCILE_LEASE_MS,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    shutdownReadinessDelayMs: e.SHUTDOWN_READINESS_DELAY_MS,
    dbStartupTimeoutMs: e.DB_STARTUP_TIMEOUT_MS,
    maxLongPollWaiters: e.MAX_LONG_POLL_WAITERS,
    retentionDays: e.RETENTION_DAYS,
    notifySecret: e.NOTIFY_SECRET,
    notifyTimeoutMs: e.NOTIFY_TIMEOUT_MS,
    notifyScheduleSeconds: Object.freeze(e.NOTIFY_SCHEDULE_SECONDS),
    notifyAllowedHosts: Object.freeze(parseAllowedHosts(e.NOTIFY_ALLOWED_HOSTS)),
    notifyConcurrency: e.NOTIFY_CONCURRENCY,
    notifyHostConcurrency: e.NOTIFY_HOST_CONCURRENCY,
    longPollNotify: e.LONG_POLL_NOTIFY === 'true',
    batch: Object.freeze({ maxSize: e.BATCH_MAX_SIZE, windowMs: e.BATCH_WINDOW_MS, maxWaitMs: e.BATCH_MAX_WAIT_MS, maxQueued: e.BATCH_MAX_QUEUED }),
  });
}

/** `a.example, [::1]:8080, LOCALHOST` → `['a.example', '[::1]:8080', 'localhost']` (hosts compare in lower case). */
function parseAllowedHosts(value: string | undefined): string[] {
  const hosts = (value ?? '').split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
  for (const h of hosts) {
    if (/[/?#@\s]/.test(h)) throw new ConfigError(`NOTIFY_ALLOWED_HOSTS: "${h}" must be a host or host:port`);
  }
  return hosts;
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
