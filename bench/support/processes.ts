import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';

export interface StartOptions {
  /** For messages only. */
  name: string;
  command: string;
  args: readonly string[];
  /** The child's whole environment (nothing is inherited unless you pass it). */
  env: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdout and stderr are appended here (the child never blocks on a pipe the runner does not read). */
  logFile: string;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface StopResult extends ExitInfo {
  /** True when SIGKILL was needed. */
  forced: boolean;
  /** From the signal to the exit. */
  ms: number;
}

export interface ChildHandle {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  exitInfo(): ExitInfo | undefined;
  /** SIGTERM (or `signal`), then SIGKILL after `timeoutMs`; resolves once it is gone. Safe to call twice. */
  stop(opts?: { signal?: NodeJS.Signals; timeoutMs?: number }): Promise<StopResult>;
  /** The last lines of its log, for error messages. */
  tail(lines?: number): string;
}

/** Environment variables worth passing to a child in any case (nothing that configures the service). */
export function baseEnv(): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ', 'USER'];
  return Object.fromEntries(keep.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
}

export function startProcess(opts: StartOptions): ChildHandle {
  const fd = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(opts.command, [...opts.args], { cwd: opts.cwd, env: opts.env, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  let info: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      info = { code, signal };
      resolve(info);
    });
    child.once('error', () => {
      info ??= { code: null, signal: null };
      resolve(info);
    });
  });
  if (child.pid === undefined) throw new Error(`${opts.name}: could not start ${opts.command}`);
  const pid = child.pid;

  let stopping: Promise<StopResult> | undefined;
  const stop = ({ signal = 'SIGTERM', timeoutMs = 15_000 }: { signal?: NodeJS.Signals; timeoutMs?: number } = {}) =>
    (stopping ??= (async () => {
      const started = Date.now();
      if (info) return { ...info, forced: false, ms: 0 };
      child.kill(signal);
      let forced = false;
      const timer = setTimeout(() => {
        forced = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      const result = await exited;
      clearTimeout(timer);
      return { ...result, forced, ms: Date.now() - started };
    })());

  const tail = (lines = 20): string => {
    try {
      return readFileSync(opts.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  };

  return { name: opts.name, pid, child, logFile: opts.logFile, exited, exitInfo: () => info, stop, tail };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `url` until it answers 200. Fails early, with the log tail, when `process` exits first, and after
 * `timeoutMs` with the last answer seen.
 */
export async function waitForHttpOk(url: string, opts: { timeoutMs?: number; intervalMs?: number; process?: ChildHandle } = {}): Promise<void> {
  const { timeoutMs = 30_000, intervalMs = 100 } = opts;
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    const gone = opts.process?.exitInfo();
    if (gone) {
      throw new Error(`${opts.process!.name} exited (code ${gone.code}, signal ${gone.signal}) before ${url} was ready:\n${opts.process!.tail()}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      const body = await res.text();
      if (res.status === 200) return;
      last = `${res.status} ${body.slice(0, 200)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(intervalMs);
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last})${opts.process ? `\n${opts.process.tail()}` : ''}`);
}
