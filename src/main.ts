import { ConfigError, loadConfig, type Config } from './config/config';
import { PartnersFileError } from './config/partners';
import { EmbeddedPostgresError, startEmbeddedPostgres, type EmbeddedPostgres } from './db/embedded-postgres';
import { createLogger, type Logger } from './observability/logger';
import { startRuntime, type Runtime } from './runtime';
import { startBundledSimulator } from './simulator/bundled';
import type { Simulator } from './simulator/simulator';

/**
 * Process entry: config → database (embedded when DATABASE_URL is unset) → migrate → HTTP server and
 * background loops; with the bundled partners file, the simulator is started beside it so a fresh clone
 * works with nothing configured. SIGTERM drains and exits 0; a second signal, or the drain outliving the
 * shutdown timeout, exits at once.
 */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof PartnersFileError) {
      process.stderr.write(`callback-reconciler: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));

  let embedded: EmbeddedPostgres | undefined;
  let simulator: Simulator | undefined;
  let runtime: Runtime | undefined;
  try {
    if (!config.databaseUrl) embedded = await startEmbeddedPostgres(config.dataDir, logger);
    if (config.usesBundledPartners) simulator = await startBundledSimulator(config, logger);
    runtime = await startRuntime({ config, ...(embedded ? { databaseUrl: embedded.url } : {}), logger });
  } catch (err) {
    if (err instanceof EmbeddedPostgresError) {
      // One clear line that says what to do, not a stack from a child process.
      process.stderr.write(`callback-reconciler: ${err.message}\n`);
      await simulator?.close();
      await exitAfterFlush(logger, 1);
    }
    logger.fatal({ err }, 'start-up failed');
    await simulator?.close();
    await embedded?.stop();
    process.exit(1);
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting without draining');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'draining');
    const force = setTimeout(() => {
      logger.error('drain outlived the shutdown timeout; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs + 5000);
    force.unref();
    try {
      await runtime?.stop();
      await simulator?.close();
      await embedded?.stop();
      await exitAfterFlush(logger, 0);
    } catch (err) {
      logger.error({ err }, 'error while draining');
      await exitAfterFlush(logger, 1);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

/**
 * Exits once every log line is written. pino writes to stdout asynchronously; exiting at once lets the
 * exit-time synchronous flush overtake a write still in flight, so the last lines came out of order.
 */
function exitAfterFlush(logger: Logger, code: number): Promise<never> {
  return new Promise(() => logger.flush(() => process.exit(code)));
}

void main();
