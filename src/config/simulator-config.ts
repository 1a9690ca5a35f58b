import { z } from 'zod';

/**
 * The secret the bundled partner signs callbacks with in the demo; `config/partners.example.json` carries
 * the same value so `npm start` works with no setup. Never use it outside local runs.
 */
export const DEMO_PARTNER_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

/** Named defaults of the standalone simulator; the port matches the bundled partners file. */
export const SIMULATOR_CONFIG_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 4010,
  secrets: DEMO_PARTNER_SECRET,
  callbackDelayMs: 100,
  logLevel: 'info',
  unknownStatus: '404',
});

/** SIM_UNKNOWN_STATUS: the status endpoint's answer for a requestNo never dispatched (see SimulatorOptions.unknownStatus). */
const UNKNOWN_STATUS_ANSWERS = ['404', 'processing', 'succeeded', 'failed'] as const;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Standard Webhooks secrets are `whsec_` followed by base64. */
const WEBHOOK_SECRET = /^whsec_[A-Za-z0-9+/]+={0,2}$/;

const intFromEnv = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const simulatorEnvSchema = z.object({
  SIM_HOST: z.string().min(1).default(SIMULATOR_CONFIG_DEFAULTS.host),
  SIM_PORT: intFromEnv(0, 65_535).default(SIMULATOR_CONFIG_DEFAULTS.port),
  SIM_SECRETS: z
    .string()
    .default(SIMULATOR_CONFIG_DEFAULTS.secrets)
    .transform((list) => list.split(',').map((secret) => secret.trim()).filter((secret) => secret !== ''))
    .refine((secrets) => secrets.length > 0, 'must name at least one secret')
    .refine((secrets) => secrets.every((secret) => WEBHOOK_SECRET.test(secret)), 'every secret must look like whsec_<base64>'),
  SIM_CALLBACK_DELAY_MS: intFromEnv(0, 3_600_000).default(SIMULATOR_CONFIG_DEFAULTS.callbackDelayMs),
  SIM_UNKNOWN_STATUS: z.enum(UNKNOWN_STATUS_ANSWERS).default(SIMULATOR_CONFIG_DEFAULTS.unknownStatus),
  LOG_LEVEL: z.enum(LOG_LEVELS).default(SIMULATOR_CONFIG_DEFAULTS.logLevel),
});

/** Everything the standalone simulator (`npm run simulator`) reads from its environment. */
export interface SimulatorConfig {
  readonly host: string;
  readonly port: number;
  /** Callbacks are signed with every one of them, so a rotation can be rehearsed. */
  readonly secrets: readonly string[];
  readonly callbackDelayMs: number;
  readonly logLevel: (typeof LOG_LEVELS)[number];
  /** `'404'` (default): the protocol's "never received"; a status: answered as if the request had been received. */
  readonly unknownStatus: (typeof UNKNOWN_STATUS_ANSWERS)[number];
}

/** Raised when the simulator's environment is invalid; the message names every bad variable. */
export class SimulatorConfigError extends Error {
  override name = 'SimulatorConfigError';
}

/**
 * Builds the simulator's frozen config from an environment. Lives in `config/` because nothing else may
 * read environment variables; fails fast, naming the variable, so a typo never starts a wrong partner.
 * Blank variables count as unset.
 *
 * @example const config = loadSimulatorConfig(process.env);
 */
export function loadSimulatorConfig(env: NodeJS.ProcessEnv): SimulatorConfig {
  const blankAsUnset = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== undefined && value.trim() !== ''));
  const parsed = simulatorEnvSchema.safeParse(blankAsUnset);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
    throw new SimulatorConfigError(`invalid simulator environment:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  return Object.freeze({
    host: e.SIM_HOST,
    port: e.SIM_PORT,
    secrets: Object.freeze(e.SIM_SECRETS),
    callbackDelayMs: e.SIM_CALLBACK_DELAY_MS,
    logLevel: e.LOG_LEVEL,
    unknownStatus: e.SIM_UNKNOWN_STATUS,
  });
}
