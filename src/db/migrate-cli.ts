import { ConfigError, loadConfig, type Config } from '../config/config';
import { PartnersFileError } from '../config/partners';
import { createLogger } from '../observability/logger';
import { openDatabase } from './database';
import { EmbeddedPostgresError, startEmbeddedPostgres, type EmbeddedPostgres } from './embedded-postgres';
import { MigrationError, migrateToLatest } from './migrator';
import { waitForDatabase } from './wait-for-database';

/**
 * `node dist/src/db/migrate-cli.js` (in the image: no build needed; `npm run migrate` builds first): applies every pending migration and exits, for deployments that migrate as a
 * separate step before rolling out replicas (the service also migrates at start, so this is optional).
 * Uses DATABASE_URL, or the embedded PostgreSQL under DATA_DIR when it is unset, exactly like the service,
 * and like it waits for the database up to DB_STARTUP_TIMEOUT_MS (a Kubernetes Job may start first).
 * Prints what it applied as one JSON log line; exits 0 on success, 1 on failure, 2 on a bad environment.
 *
 * @example DATABASE_URL=postgres://postgres@127.0.0.1:5432/app npm run migrate
 */
async function main(): Promise<number> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof PartnersFileError) {
      process.stderr.write(`callback-reconciler migrate: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const logger = createLogger(config.logLevel, { component: 'migrate' });

  let embedded: EmbeddedPostgres | undefined;
  try {
    if (!config.databaseUrl) {
      logger.warn({ dataDir: config.dataDir }, 'DATABASE_URL is unset: migrating the embedded PostgreSQL under DATA_DIR (for trials only, NOT for production)');
      embedded = await startEmbeddedPostgres(config.dataDir, logger);
    }
    const url = embedded?.url ?? config.databaseUrl!;
    const database = openDatabase({ url, poolSize: 1, connectTimeoutMs: config.dbConnectTimeoutMs, applicationName: 'callback-reconciler-migrate' });
    try {
      await waitForDatabase(database.db, { timeoutMs: config.dbStartupTimeoutMs, logger });
      const applied = await migrateToLatest(database.db);
      logger.info({ applied, database: embedded ? 'embedded' : 'DATABASE_URL' }, applied.length > 0 ? 'migrations applied' : 'already up to date');
    } finally {
      await database.close();
    }
    return 0;
  } catch (err) {
    if (err instanceof EmbeddedPostgresError) {
      process.stderr.write(`callback-reconciler migrate: ${err.message}\n`);
      return 1;
    }
    const results = err instanceof MigrationError ? err.results : undefined;
    logger.error({ err, ...(results ? { results } : {}) }, 'migration failed');
    return 1;
  } finally {
    await embedded?.stop().catch((err: unknown) => logger.warn({ err }, 'embedded PostgreSQL did not stop cleanly'));
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`callback-reconciler migrate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
