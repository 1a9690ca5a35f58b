import { Migrator, type Kysely, type MigrationResultSet } from 'kysely';
import { migrations } from '../../migrations';

function migrator(db: Kysely<any>): Migrator {
  return new Migrator({
    db,
    provider: { getMigrations: async () => migrations },
    // History must match the code's order: a migration landed out of order is refused, not silently run.
    allowUnorderedMigrations: false,
  });
}

/** Raised when migrations could not be applied; carries Kysely's per-migration results. */
export class MigrationError extends Error {
  override name = 'MigrationError';
  constructor(
    message: string,
    readonly results: MigrationResultSet['results'],
  ) {
    super(message);
  }
}

/**
 * Applies every pending migration. Safe with several replicas starting at once: Kysely holds a lock
 * row while it migrates. Returns the names applied by this call.
 */
export async function migrateToLatest(db: Kysely<any>): Promise<string[]> {
  const { error, results = [] } = await migrator(db).migrateToLatest();
  if (error) {
    const failed = results.find((r) => r.status === 'Error');
    const detail = error instanceof Error ? error.message : String(error);
    throw new MigrationError(`migration ${failed?.migrationName ?? '(before any ran)'} failed: ${detail}`, results);
  }
  return results.filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/** True when every migration the code knows has been applied (readiness). */
export async function migrationsAreCurrent(db: Kysely<any>): Promise<boolean> {
  const known = await migrator(db).getMigrations();
  return known.every((m) => m.executedAt !== undefined);
}
