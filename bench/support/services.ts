import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { serviceEnvOverrides, serviceNodeFlags } from './start-flags';
import { DEMO_PARTNER_SECRET } from '../../src/config/simulator-config';
import { openDatabase } from '../../src/db/database';
import { migrateToLatest } from '../../src/db/migrator';
import { DEFAULTS } from '../../src/config/config';
import { freePort } from './ports';
import { baseEnv, startProcess, waitForHttpOk, type ChildHandle, type StopResult } from './processes';
import type { Teardown } from './teardown';
import type { ScenarioContext } from './types';

/**
 * The service and the partner simulator as separate processes (node dist/src/main.js and
 * node dist/src/simulator/main.js), each stopped by the given teardown list.
 */

export const BENCH_PARTNER_ID = 'bench';

/** A cron that fires once a year (1 January, 00:00:00): keeps the reconciler and the gauges job out of a run. */
export const YEARLY_CRON = '0 0 0 1 1 *';

export interface RunningProcess {
  url: string;
  handle: ChildHandle;
  logFile: string;
  /** Set once the teardown stopped it. */
  stopResult(): StopResult | undefined;
}

/** Starts the simulator (LOG_LEVEL=warn, the demo secret) and waits until it answers. */
export async function startSimulatorProcess(ctx: ScenarioContext, td: Teardown, label: string, env: NodeJS.ProcessEnv = {}): Promise<RunningProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const logFile = path.join(ctx.tmpDir, `simulator-${label}.log`);
  const handle = startProcess({
    name: `simulator ${label}`,
    command: process.execPath,
    args: [path.join(ctx.distRoot, 'src', 'simulator', 'main.js')],
    env: { ...baseEnv(), SIM_HOST: '127.0.0.1', SIM_PORT: String(port), SIM_SECRETS: DEMO_PARTNER_SECRET, LOG_LEVEL: 'warn', ...env },
    cwd: ctx.repoRoot,
    logFile,
  });
  let stopped: StopResult | undefined;
  td.add(`stop simulator ${label}`, async () => {
    stopped = await handle.stop();
  });
  await waitForHttpOk(`${url}/_sim/stats`, { process: handle });
  return { url, handle, logFile, stopResult: () => stopped };
}

/** Writes a partners file with one partner `bench` served by `simulatorUrl`; `extra` is merged into the partner. */
export async function writePartnersFile(ctx: ScenarioContext, label: string, simulatorUrl: string, extra: Record<string, unknown> = {}): Promise<string> {
  const file = path.join(ctx.tmpDir, `partners-${label}.json`);
  const doc = {
    partners: [{ id: BENCH_PARTNER_ID, baseUrl: simulatorUrl, callback: { secret: DEMO_PARTNER_SECRET, verify: 'signature' }, headers: {}, ...extra }],
  };
  await writeFile(file, JSON.stringify(doc, null, 2));
  return file;
}

/** Starts one service process on `databaseUrl` and waits for /readyz. DB_POOL_SIZE etc. stay at the service's defaults unless set in `env`. */
export async function startServiceProcess(
  ctx: ScenarioContext,
  td: Teardown,
  opts: { label: string; databaseUrl: string; partnersFile: string; env?: NodeJS.ProcessEnv; logLevel?: string },
): Promise<RunningProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const logFile = path.join(ctx.tmpDir, `service-${opts.label}.log`);
  const handle = startProcess({
    name: `service ${opts.label}`,
    command: process.execPath,
    args: [...serviceNodeFlags(ctx.repoRoot), path.join(ctx.distRoot, 'src', 'main.js')],
    env: {
      ...baseEnv(),
      DATABASE_URL: opts.databaseUrl,
      PORT: String(port),
      HOST: '127.0.0.1',
      PARTNERS_FILE: opts.partnersFile,
      LOG_LEVEL: opts.logLevel ?? 'warn',
      ...serviceEnvOverrides(),
      ...opts.env,
    },
    cwd: ctx.repoRoot,
    logFile,
  });
  let stopped: StopResult | undefined;
  td.add(`stop service ${opts.label}`, async () => {
    stopped = await handle.stop();
  });
  await waitForHttpOk(`${url}/readyz`, { process: handle, timeoutMs: 60_000 });
  return { url, handle, logFile, stopResult: () => stopped };
}

/** Applies the service's migrations to a fresh database from the runner (so rows can be seeded before any service starts). */
export async function migrateDatabase(url: string): Promise<void> {
  const handle = openDatabase({ url, poolSize: 1, connectTimeoutMs: DEFAULTS.dbConnectTimeoutMs, applicationName: 'bench-migrate' });
  try {
    await migrateToLatest(handle.db);
  } finally {
    await handle.close();
  }
}

/** A row id that sorts like the service's UUIDv7 ids: `prefix` (up to 8 hex digits) then the counter. */
export function orderedUuidSql(prefixHex: string, counterExpr: string): string {
  if (!/^[0-9a-f]{1,8}$/.test(prefixHex)) throw new Error(`bad uuid prefix ${prefixHex}`);
  return `(lpad('${prefixHex}', 8, '0') || lpad(to_hex(${counterExpr}), 24, '0'))::uuid`;
}

/** The simulator's totals (`/_sim/stats`), or a text saying why not. */
export async function simulatorTotals(simulatorUrl: string): Promise<Record<string, number> | string> {
  try {
    const r = await fetch(`${simulatorUrl}/_sim/stats`);
    return ((await r.json()) as { totals: Record<string, number> }).totals;
  } catch (err) {
    return `unavailable: ${(err as Error).message}`;
  }
}

/** The service's log: lines at warn or above (the runs are at LOG_LEVEL=warn), counted by message. */
export async function warnLines(logFile: string): Promise<{ total: number; top: string[] }> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const counts = new Map<string, number>();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line) continue;
    let msg = line.slice(0, 120);
    try {
      const rec = JSON.parse(line) as { level?: number; msg?: string };
      if ((rec.level ?? 0) < 40) continue;
      msg = rec.msg ?? msg;
    } catch {
      // plain text (a Node warning)
    }
    total += 1;
    counts.set(msg, (counts.get(msg) ?? 0) + 1);
  }
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([m, n]) => `"${m}" ×${n}`);
  return { total, top };
}
