import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let clockTicks: number | undefined;
/** USER_HZ, the unit of /proc/<pid>/stat times (100 nearly everywhere). */
export function clkTck(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** utime + stime of a process in ticks, and its command name; undefined once gone. */
export function processTicks(pid: number): { ticks: number; comm: string } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  const comm = text.slice(open + 1, close);
  // Fields after the command: state is field 3, utime 14, stime 15 (1-based) → index 11 and 12 here.
  const rest = text.slice(close + 2).split(' ');
  return { ticks: Number(rest[11]) + Number(rest[12]), comm };
}

/**
 * Scheduler statistics of a process's main thread (the JS thread for Node): nanoseconds on a CPU and
 * nanoseconds runnable but waiting for one (run-queue delay).
 */
export function schedStat(pid: number): { runNs: number; waitNs: number } | undefined {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
    return { runNs: run ?? Number.NaN, waitNs: wait ?? Number.NaN };
  } catch {
    return undefined;
  }
}

/** Ticks of every process whose command name is `comm` (e.g. all postgres processes), with its command line. */
export function ticksByComm(comm: string): Map<number, { ticks: number; cmdline: string }> {
  const out = new Map<number, { ticks: number; cmdline: string }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const t = processTicks(Number(entry));
    if (!t || t.comm !== comm) continue;
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      // gone meanwhile
    }
    out.set(Number(entry), { ticks: t.ticks, cmdline });
  }
  return out;
}

/** Busy and total ticks of the whole machine (first line of /proc/stat). */
export function machineTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

export interface CpuReport {
  seconds: number;
  /** Per watched process: CPU time as % of ONE core over the window (200 = both cores of a 2-core box). */
  processes: Record<string, number>;
  /** Per watched process: % of the window its main thread was runnable but waiting for a CPU. */
  runQueueWaitPct: Record<string, number>;
  /** CPU used by everything else on the machine (other test runs...), % of one core. */
  othersPct: number;
  /** All processes named `postgres` together (other clients of the same cluster included), % of one core. */
  postgresPct: number;
  /** Only the backends connected to `postgresDatabase` (when given): the work done for this benchmark's queries. */
  postgresOwnPct: number;
  /** Whole machine, % of ALL cores. */
  machineBusyPct: number;
  /** This process (the runner, which hosts autocannon and in-process loops), % of one core. */
  runnerPct: number;
}

/** Measures CPU use of some processes, of Postgres and of the machine between start() and stop(). */
export class CpuWindow {
  private t0 = 0;
  private procs0 = new Map<string, number>();
  private wait0 = new Map<string, number>();
  private pg0 = new Map<number, { ticks: number; cmdline: string }>();
  private machine0 = { busy: 0, total: 0 };
  private runner0: NodeJS.CpuUsage = { user: 0, system: 0 };

  constructor(
    private readonly watched: Record<string, number>,
    /** Backends whose process title names this database count as "own" Postgres work. */
    private readonly postgresDatabase?: string,
  ) {}

  start(): this {
    this.t0 = performance.now();
    for (const [name, pid] of Object.entries(this.watched)) {
      this.procs0.set(name, processTicks(pid)?.ticks ?? Number.NaN);
      this.wait0.set(name, schedStat(pid)?.waitNs ?? Number.NaN);
    }
    this.pg0 = ticksByComm('postgres');
    this.machine0 = machineTicks();
    this.runner0 = process.cpuUsage();
    return this;
  }

  stop(): CpuReport {
    const seconds = (performance.now() - this.t0) / 1000;
    const hz = clkTck();
    const pct = (ticks: number) => (ticks / hz / seconds) * 100;
    const processes: Record<string, number> = {};
    const runQueueWaitPct: Record<string, number> = {};
    for (const [name, pid] of Object.entries(this.watched)) {
      processes[name] = pct((processTicks(pid)?.ticks ?? Number.NaN) - (this.procs0.get(name) ?? Number.NaN));
      runQueueWaitPct[name] = (((schedStat(pid)?.waitNs ?? Number.NaN) - (this.wait0.get(name) ?? Number.NaN)) / 1e9 / seconds) * 100;
    }
    let pgTicks = 0;
    let pgOwnTicks = 0;
    const own = this.postgresDatabase ? ` ${this.postgresDatabase} ` : undefined;
    for (const [pid, { ticks, cmdline }] of ticksByComm('postgres')) {
      const delta = ticks - (this.pg0.get(pid)?.ticks ?? 0);
      pgTicks += delta;
      if (own && cmdline.includes(own)) pgOwnTicks += delta;
    }
    const m = machineTicks();
    const runner = process.cpuUsage(this.runner0);
    const runnerPct = ((runner.user + runner.system) / 1e6 / seconds) * 100;
    const postgresPct = pct(pgTicks);
    const machineBusyPct = ((m.busy - this.machine0.busy) / Math.max(m.total - this.machine0.total, 1)) * 100;
    const ours = Object.values(processes).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0) + postgresPct + runnerPct;
    const cores = readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d/.test(l)).length || 1;
    return {
      seconds,
      processes,
      runQueueWaitPct,
      postgresPct,
      postgresOwnPct: pct(pgOwnTicks),
      machineBusyPct,
      runnerPct,
      othersPct: Math.max(0, machineBusyPct * cores - ours),
    };
  }
}

export interface QuietResult {
  /** Machine busy % (of all cores) over the last one-second probe. */
  busyPct: number;
  waitedS: number;
  quiet: boolean;
}

/**
 * Waits (up to `maxWaitS`) until the machine is mostly idle, probing one second at a time, so a phase does
 * not start in the middle of someone else's test run. Call it while the processes under test are idle.
 */
export async function waitForQuiet(opts: { maxBusyPct: number; maxWaitS: number; log?: (m: string) => void }): Promise<QuietResult> {
  const started = performance.now();
  let busyPct = 100;
  let logged = false;
  for (;;) {
    const a = machineTicks();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const b = machineTicks();
    busyPct = ((b.busy - a.busy) / Math.max(b.total - a.total, 1)) * 100;
    const waitedS = (performance.now() - started) / 1000;
    if (busyPct <= opts.maxBusyPct) return { busyPct, waitedS, quiet: true };
    if (waitedS >= opts.maxWaitS) return { busyPct, waitedS, quiet: false };
    if (!logged) opts.log?.(`machine ${busyPct.toFixed(0)} % busy before the run; waiting up to ${opts.maxWaitS} s for it to quieten`);
    logged = true;
  }
}
