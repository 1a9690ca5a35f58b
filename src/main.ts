import { ConfigError, loadConfig, type Config } from './config/config';
import { PartnersFileError } from './config/partners';
import { EmbeddedPostgresError, startEmbeddedPostgres, type EmbeddedPostgres } from './db/embedded-postgres';
import { createLogger, type Logger } from './observability/logger';
import { startRuntime, type Runtime } from './runtime';
import { startBundledSimulator } from './simulator/bundled';
import type { Simulator } from './simulator/simulator';

/**
 * Process entry: config → database (embedded when DATABASE_URL is unset) → HTTP server → wait for the
 * database (up to DB_STARTUP_TIMEOUT_MS, readiness 503 meanwhile) → migrate → background loops; with the
 * bundled partners file, the simulator is started beside it so a fresh clone works with nothing configured.
 * SIGTERM: /readyz answers 503 for SHUTDOWN_READINESS_DELAY_MS, then the drain, exit 0; a second signal,
 * or the drain outliving the shutdown timeout, exits at once.
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
  // Signals are handled from the first moment: one that arrives while start-up waits for the database
  // ends the wait and the process exits 0, as a stop during a drain would.
  const starting = new AbortController();
  let stopping = false;
  const shutdown = async (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting without draining');
      process.exit(1);
    }
    stopping = true;
    if (!runtime) {
      logger.info({ signal }, 'stopping during start-up');
      starting.abort();
      return;
    }
    // SIGTERM comes from an orchestrator: keep serving with /readyz at 503 for the readiness delay first.
    // SIGINT is a person at a terminal: no delay.
    const readinessDelayMs = signal === 'SIGTERM' ? config.shutdownReadinessDelayMs : 0;
    logger.info({ signal, readinessDelayMs }, 'draining');
    const force = setTimeout(() => {
      logger.error('drain outlived the shutdown timeout; exiting');
      process.exit(1);
    }, readinessDelayMs + config.shutdownTimeoutMs + 5000);
    force.unref();
    try {
      await runtime.stop({ readinessDelayMs });
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

  try {
    if (!config.databaseUrl) {
      logger.warn(
        { dataDir: config.dataDir },
        'DATABASE_URL is unset: using an embedded PostgreSQL under DATA_DIR, for trials only and NOT for production (one process, no backups, no replicas); set DATABASE_URL',
      );
      embedded = await startEmbeddedPostgres(config.dataDir, logger);
    }
    if (config.usesBundledPartners) simulator = await startBundledSimulator(config, logger);
    runtime = await startRuntime({ config, ...(embedded ? { databaseUrl: embedded.url } : {}), logger, signal: starting.signal });
  } catch (err) {
    await simulator?.close();
    if (starting.signal.aborted) {
      await embedded?.stop();
      await exitAfterFlush(logger, 0);
    }
    if (err instanceof EmbeddedPostgresError) {
      // One clear line that says what to do, not a stack from a child process.
      process.stderr.write(`callback-reconciler: ${err.message}\n`);
      await exitAfterFlush(logger, 1);
    }
    logger.fatal({ err }, 'start-up failed');
    await embedded?.stop();
    await exitAfterFlush(logger, 1);
  }
  if (stopping) {
    // A signal arrived after the wait ended but before start-up returned.
    await runtime?.stop({ readinessDelayMs: 0 });
    await simulator?.close();
    await embedded?.stop();
    await exitAfterFlush(logger, 0);
  }
}

/**
 * Exits once every log line is written. pino writes to stdout asynchronously; exiting at once lets the
 * exit-time synchronous flush overtake a write still in flight, so the last lines came out of order.
 */
function exitAfterFlush(logger: Logger, code: number): Promise<never> {
  return new Promise(() => logger.flush(() => process.exit(code)));
}

void main();
