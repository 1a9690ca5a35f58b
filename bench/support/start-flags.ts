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
