import { waitForQuiet, type CpuReport, type QuietResult } from './cpu';
import { fmtNumber } from './stats';
import type { ScenarioContext } from './types';

/** Settings shared by every scenario: quiet-wait before a phase and the NOISY flag after it (see README). */

export const envNumber = (name: string, fallback: number): number => {
  const raw = process.env[name];
  const v = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return v;
};

export const PHASE_SETTINGS = {
  /** Before each measured phase, wait up to this long for the machine to be at most BENCH_QUIET_BUSY_PCT busy (0: don't wait). */
  quietMaxWaitS: Number(process.env['BENCH_QUIET_MAX_WAIT_S'] ?? 30),
  quietBusyPct: envNumber('BENCH_QUIET_BUSY_PCT', 25),
  /** Other processes using more than this (% of one core) during a phase get the phase flagged as noisy. */
  noisyOthersPct: 25,
};

/** Waits (bounded) for the machine to be mostly idle; call it while the processes under test are idle. */
export async function quietBeforePhase(ctx: ScenarioContext): Promise<QuietResult> {
  if (!(PHASE_SETTINGS.quietMaxWaitS > 0)) return { busyPct: Number.NaN, waitedS: 0, quiet: true };
  return waitForQuiet({ maxBusyPct: PHASE_SETTINGS.quietBusyPct, maxWaitS: PHASE_SETTINGS.quietMaxWaitS, log: ctx.log });
}

/** Flags a phase that ran while other processes took a noticeable share of the CPU. */
export function noiseNote(ctx: ScenarioContext, phase: string, cpu: CpuReport | undefined, quiet: QuietResult): void {
  const parts: string[] = [];
  if (!quiet.quiet) parts.push(`the machine was still ${quiet.busyPct.toFixed(0)} % busy after waiting ${quiet.waitedS.toFixed(0)} s for quiet`);
  if (cpu && cpu.othersPct > PHASE_SETTINGS.noisyOthersPct) parts.push(`other processes used ${cpu.othersPct.toFixed(0)} % of a core during the measurement`);
  if (parts.length > 0) ctx.note(`⚠ ${phase}: NOISY, ${parts.join('; ')}; its figures are not comparable with a quiet run`);
}

export const ms = (v: number): string => `${fmtNumber(v)} ms`;
export const pct = (v: number): string => `${v.toFixed(0)} %`;

/** One line of CPU use by every party, as in the create scenario. */
export function cpuText(c: CpuReport, names: string[], runnerRole = 'runner'): string {
  const parts = names.map((n) => `${n} ${pct(c.processes[n] ?? Number.NaN)}`);
  parts.push(`postgres ${pct(c.postgresPct)} (this database's backends ${pct(c.postgresOwnPct)})`, `${runnerRole} ${pct(c.runnerPct)}`, `other processes ${pct(c.othersPct)}`);
  const waits = names.filter((n) => Number.isFinite(c.runQueueWaitPct[n])).map((n) => `${n} ${pct(c.runQueueWaitPct[n]!)}`);
  return `${parts.join(', ')} of one core; machine ${pct(c.machineBusyPct)} busy${waits.length ? `; waiting for a CPU: ${waits.join(', ')} of the time` : ''}`;
}
