import { readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * The Node flags the service gets from `npm start` (package.json's start script: V8 heap sizing), so every
 * scenario measures the defaults a user gets. `BENCH_SERVICE_NODE_FLAGS` (space-separated) replaces them,
 * e.g. `BENCH_SERVICE_NODE_FLAGS=` (empty) to measure V8's own defaults.
 */
export function serviceNodeFlags(repoRoot: string): string[] {
  const override = process.env['BENCH_SERVICE_NODE_FLAGS'];
  if (override !== undefined) return override.split(/\s+/).filter(Boolean);
  return startScriptFlags(repoRoot);
}

/** The `--flags` between `node` and the script in package.json's start script. */
export function startScriptFlags(repoRoot: string): string[] {
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const words = (pkg.scripts?.['start'] ?? '').split(/\s+/).filter(Boolean);
  if (words[0] !== 'node') return [];
  return words.slice(1).filter((w) => w.startsWith('--'));
}

/**
 * The environment every service process gets on top of the service's defaults (a scenario's own settings
 * still win): `BENCH_SERVICE_ENV` (space-separated `NAME=value`, e.g. `PARTNER_IO_THREADS=0`, to compare a
 * setting inside one machine's run) and `BENCH_SERVICE_NODE_OPTIONS` as NODE_OPTIONS (e.g.
 * `--max-old-space-size=80`, to tell retention from lazy collection).
 */
export function serviceEnvOverrides(): Record<string, string> {
  const raw = process.env['BENCH_SERVICE_ENV'] ?? '';
  const out: Record<string, string> = {};
  const nodeOptions = process.env['BENCH_SERVICE_NODE_OPTIONS'];
  if (nodeOptions) out['NODE_OPTIONS'] = nodeOptions;
  for (const word of raw.split(/\s+/).filter(Boolean)) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(word);
    if (!m) throw new Error(`BENCH_SERVICE_ENV: "${word}" is not NAME=value`);
    out[m[1]!] = m[2]!;
  }
  return out;
}

/** What this run changes from the defaults a user gets, for the report's header (empty: nothing). */
export function serviceOverridesText(): string {
  const parts: string[] = [];
  if (process.env['BENCH_SERVICE_NODE_FLAGS'] !== undefined) parts.push(`BENCH_SERVICE_NODE_FLAGS="${process.env['BENCH_SERVICE_NODE_FLAGS']}"`);
  if (process.env['BENCH_SERVICE_ENV']) parts.push(`BENCH_SERVICE_ENV="${process.env['BENCH_SERVICE_ENV']}"`);
  if (process.env['BENCH_SERVICE_NODE_OPTIONS']) parts.push(`BENCH_SERVICE_NODE_OPTIONS="${process.env['BENCH_SERVICE_NODE_OPTIONS']}"`);
  return parts.join(', ');
}
