import type { BenchPostgres } from './database';
import type { Teardown } from './teardown';

/** How a figure is judged; `null`/absent means "reported, no target". */
export interface Target {
  op: '>=' | '>' | '<=' | '<' | '==';
  value: number;
}

/** One line of the results table. */
export interface ResultRow {
  /** Which scenario (and variant) produced it, e.g. `create (LOG_LEVEL=warn)`. */
  scenario: string;
  metric: string;
  /** The raw figure (null when it could not be measured). */
  value: number | string | null;
  unit?: string;
  /** Shown instead of the formatted value, when set. */
  display?: string;
  target?: Target;
  /** Shown as the target when set (for checks that are not a simple comparison). */
  targetText?: string;
  /** true/false: target met or not; null: no target. Filled in from `target` when left undefined. */
  ok?: boolean | null;
  /** A failed hard check (not just a missed target): makes the run exit non-zero. */
  assertion?: boolean;
}

export interface RunOptions {
  /** Also run a profiling pass where the scenario supports it (`--profile`). */
  profile: boolean;
  /** Also measure the create rate with BENCH_BIG_ROWS (10 million) tasks already stored (`--big`; slow). */
  big: boolean;
}

/** What a scenario gets from the runner. */
export interface ScenarioContext {
  readonly postgres: BenchPostgres;
  /** A temporary directory for this scenario only; removed after it. */
  readonly tmpDir: string;
  /** Repository root (where package.json is). */
  readonly repoRoot: string;
  /** Where the compiled service lives (`<repo>/dist`). */
  readonly distRoot: string;
  /** `<repo>/bench/results` (git-ignored); for artefacts such as CPU profiles. */
  readonly resultsDir: string;
  readonly options: RunOptions;
  /** Progress on stderr (stdout carries only the final table). */
  log(message: string): void;
  /** A line printed under the table. */
  note(message: string): void;
  /** Extra structured data kept in latest.json under this scenario. */
  detail(key: string, value: unknown): void;
  /** A markdown section printed after the table (e.g. a profile summary). */
  section(title: string, markdown: string): void;
  /** Runs when the scenario ends, even when it throws (last registered runs first). */
  readonly teardown: Teardown;
}

/** One benchmark; add a file under bench/scenarios exporting `scenario` (or a default export) of this type. */
export interface Scenario {
  name: string;
  description: string;
  run(ctx: ScenarioContext): Promise<ResultRow[]>;
}
