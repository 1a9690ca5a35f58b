import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openBenchPostgres, type BenchPostgres } from './support/database';
import { stopAllLoads } from './support/load';
import { DIST_ROOT, REPO_ROOT, RESULTS_DIR, SCENARIOS_DIR } from './support/paths';
import { judge, renderMarkdown, writeReport, type RunReport } from './support/report';
import { Teardown } from './support/teardown';
import { serviceOverridesText } from './support/start-flags';
import type { ResultRow, RunOptions, Scenario, ScenarioContext } from './support/types';

/**
 * `npm run bench [-- <scenario>... ] [--profile]`: runs the named scenarios (all when none is named), prints
 * one markdown table on stdout (progress goes to stderr) and writes bench/results/latest.{json,md}.
 * Exits 1 when a scenario fails or a hard check (not a target) does not hold.
 */

const log = (message: string) => process.stderr.write(`[bench] ${message}\n`);

function isScenario(v: unknown): v is Scenario {
  return typeof v === 'object' && v !== null && typeof (v as Scenario).name === 'string' && typeof (v as Scenario).run === 'function';
}

/** Every `bench/scenarios/*.js` exporting `scenario` or a default export; sorted by name. */
function discoverScenarios(): Scenario[] {
  const found: Scenario[] = [];
  for (const file of readdirSync(SCENARIOS_DIR).sort()) {
    if (!file.endsWith('.js')) continue;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(path.join(SCENARIOS_DIR, file)) as { scenario?: unknown; default?: unknown };
    const s = mod.scenario ?? mod.default;
    if (isScenario(s)) found.push(s);
    else log(`ignoring ${file}: it exports no { name, run }`);
  }
  return found;
}

function gitCommit(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'migrations'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    return dirty ? `${sha} (+ uncommitted changes in src/migrations)` : sha;
  } catch {
    return 'unknown';
  }
}

function parseArgs(argv: string[], known: Scenario[]): { selected: Scenario[]; options: RunOptions } {
  const options: RunOptions = { profile: false, big: false };
  const names: string[] = [];
  for (const arg of argv) {
    if (arg === '--profile') options.profile = true;
    else if (arg === '--big') options.big = true;
    else if (arg === '--help' || arg === '-h') {
      process.stdout.write(`usage: npm run bench -- [--profile] [--big] [scenario...]\nscenarios:\n${known.map((s) => `  ${s.name.padEnd(12)} ${s.description}`).join('\n')}\n`);
      process.exit(0);
    } else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else names.push(arg);
  }
  const unknown = names.filter((n) => !known.some((s) => s.name === n));
  if (unknown.length > 0) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${known.map((s) => s.name).join(', ')}`);
  const selected = names.length === 0 ? known : known.filter((s) => names.includes(s.name));
  return { selected, options };
}

async function main(): Promise<number> {
  if (!existsSync(path.join(DIST_ROOT, 'src', 'main.js'))) throw new Error('dist/src/main.js is missing: run `npm run bench` (it builds first)');
  const known = discoverScenarios();
  const { selected, options } = parseArgs(process.argv.slice(2), known);

  // Everything still open is torn down on Ctrl-C / SIGTERM too, then the runner exits.
  const global = new Teardown(log);
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${signal}: tearing down`);
    stopAllLoads();
    void global.run().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const postgres: BenchPostgres = await openBenchPostgres(log);
  global.add('postgres', () => postgres.close());

  const report: RunReport = {
    meta: {
      startedAt: new Date().toISOString(),
      gitCommit: gitCommit(),
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model ?? 'unknown',
      loadAverage: os.loadavg(),
      node: process.version,
      postgres: postgres.version,
      postgresSource: `${postgres.source} ${postgres.displayUrl}`,
      scenarios: selected.map((s) => s.name),
      serviceOverrides: serviceOverridesText(),
    },
    rows: [],
    notes: {},
    details: {},
    sections: [],
    failed: false,
  };

  try {
    for (const scenario of selected) {
      log(`scenario ${scenario.name}: ${scenario.description}`);
      const tmpDir = await mkdtemp(path.join(os.tmpdir(), `bench-${scenario.name}-`));
      const teardown = global.child(`scenario ${scenario.name}`);
      // BENCH_KEEP_LOGS=1 keeps the scenario's directory (service and simulator logs) for a look afterwards.
      if (process.env.BENCH_KEEP_LOGS === '1') log(`keeping ${tmpDir} (BENCH_KEEP_LOGS=1)`);
      else teardown.add('tmp dir', () => rm(tmpDir, { recursive: true, force: true }));
      const notes = (report.notes[scenario.name] = [] as string[]);
      const details = (report.details[scenario.name] = {} as Record<string, unknown>);
      const ctx: ScenarioContext = {
        postgres,
        tmpDir,
        repoRoot: REPO_ROOT,
        distRoot: DIST_ROOT,
        resultsDir: RESULTS_DIR,
        options,
        log: (m) => log(`${scenario.name}: ${m}`),
        note: (m) => notes.push(m),
        detail: (k, v) => {
          details[k] = v;
        },
        section: (title, markdown) => report.sections.push({ title, markdown }),
        teardown,
      };
      let rows: ResultRow[] = [];
      try {
        rows = await scenario.run(ctx);
      } catch (err) {
        const e = err as Error;
        log(`scenario ${scenario.name} failed: ${e.stack ?? e.message}`);
        rows.push({ scenario: scenario.name, metric: 'ERROR', value: e.message.split('\n')[0] ?? 'failed', ok: false, assertion: true });
        notes.push(`failed: ${e.message}`);
      } finally {
        const errors = await teardown.run();
        if (errors.length > 0) notes.push(`teardown: ${errors.map((e) => e.message).join('; ')}`);
      }
      report.rows.push(...rows.map(judge));
      if (interrupted) break;
    }
  } finally {
    await global.run();
  }

  report.meta.finishedAt = new Date().toISOString();
  report.failed = report.rows.some((r) => r.assertion && r.ok === false);
  const files = await writeReport(RESULTS_DIR, report);
  process.stdout.write(renderMarkdown(report));
  log(`wrote ${path.relative(REPO_ROOT, files.md)} and ${path.relative(REPO_ROOT, files.json)}`);
  return report.failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`failed: ${err instanceof Error ? (process.env['BENCH_DEBUG'] ? (err.stack ?? err.message) : err.message) : String(err)}`);
    process.exit(1);
  },
);
