import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { DEMO_PARTNER_SECRET } from '../../src/config/simulator-config';
import { DIST_ROOT, REPO_ROOT, RESULTS_DIR } from '../support/paths';
import { freePort } from '../support/ports';
import { baseEnv, startProcess, waitForHttpOk, type ChildHandle } from '../support/processes';

/** What the reliability suites share: argument parsing, the simulator process, the partners file, results. */

export const SUITE_API_KEY = 'reliability-suite-key-0123456789';

export function requireBuild(): void {
  if (!existsSync(path.join(DIST_ROOT, 'src', 'main.js'))) throw new Error('dist/src/main.js is missing: run through npm (the script builds first)');
}

/** `--name value` and `--flag` arguments; unknown names are refused so a typo never runs the wrong suite. */
export function parseArgs(argv: readonly string[], known: Record<string, 'number' | 'flag'>): Record<string, number | boolean> {
  const out: Record<string, number | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [rawName, inline] = arg.split('=', 2) as [string, string | undefined];
    const name = rawName.replace(/^--/, '');
    const kind = known[name];
    if (!arg.startsWith('--') || !kind) throw new Error(`unknown argument ${arg}; known: ${Object.keys(known).map((k) => `--${k}`).join(' ')}`);
    if (kind === 'flag') {
      out[name] = true;
      continue;
    }
    const value = Number(inline ?? argv[++i]);
    if (!Number.isFinite(value) || value < 0) throw new Error(`--${name} needs a number >= 0`);
    out[name] = value;
  }
  return out;
}

export interface SimulatorProcess {
  url: string;
  handle: ChildHandle;
  setDown(down: boolean): Promise<void>;
  setSlow(delayMs: number): Promise<void>;
  stats(): Promise<{ totals: Record<string, number>; byRequestNo: Record<string, { dispatches: number; received: number; statusQueries: number; callbacksSent: number; callbacksFailed: number }> }>;
}

/** The bundled simulator as its own process (so it never shares an event loop with the harness). */
export async function startSimulator(logFile: string, repoRoot: string): Promise<SimulatorProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const handle = startProcess({
    name: 'simulator',
    command: process.execPath,
    args: [path.join(DIST_ROOT, 'src', 'simulator', 'main.js')],
    env: { ...baseEnv(), SIM_HOST: '127.0.0.1', SIM_PORT: String(port), SIM_SECRETS: DEMO_PARTNER_SECRET, LOG_LEVEL: 'warn' },
    cwd: repoRoot,
    logFile,
  });
  await waitForHttpOk(`${url}/_sim/stats`, { process: handle });
  const post = async (route: string, body: unknown) => {
    const res = await fetch(`${url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    if (res.status !== 200) throw new Error(`simulator ${route}: HTTP ${res.status}`);
  };
  return {
    url,
    handle,
    setDown: (down) => post('/_sim/down', { down }),
    setSlow: (delayMs) => post('/_sim/slow', { delayMs }),
    stats: async () => (await (await fetch(`${url}/_sim/stats`)).json()) as Awaited<ReturnType<SimulatorProcess['stats']>>,
  };
}

/** A partners file with one partner served by the simulator; `extra` is merged in. */
export async function writePartners(file: string, id: string, simulatorUrl: string, extra: Record<string, unknown>): Promise<void> {
  const partner = {
    id,
    baseUrl: simulatorUrl,
    callback: { secret: DEMO_PARTNER_SECRET, verify: 'signature' },
    headers: {},
    ...extra,
  };
  await writeFile(file, JSON.stringify({ partners: [partner] }, null, 2));
}

/**
 * A free port below the kernel's ephemeral range. A replica keeps its port across restarts; a port from
 * the ephemeral range can meanwhile be taken as the local end of some outgoing connection, and the
 * restart then fails with EADDRINUSE (seen in the first chaos runs).
 */
export async function stablePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number((await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')).trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: keep the usual default
  }
  const from = Math.max(1024, Math.min(20_000, low - 5000));
  for (let tries = 0; tries < 200; tries++) {
    const port = from + Math.floor(Math.random() * (low - from));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${from}-${low - 1}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** Writes `<name>.md` and `<name>.json` under bench/results; returns the paths. */
export async function writeResults(name: string, markdown: string, json: unknown): Promise<string[]> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const md = path.join(RESULTS_DIR, `${name}.md`);
  const js = path.join(RESULTS_DIR, `${name}.json`);
  await writeFile(md, `${markdown}\n`);
  await writeFile(js, `${JSON.stringify(json, null, 2)}\n`);
  return [md, js];
}

export const secondsSince = (t0: number): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

/** The short commit of the checkout (`unknown` outside git). */
export function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}
