import path from 'node:path';

/** Repository root: this file is `bench/support/paths.ts`, compiled to `dist/bench/support/paths.js`. */
export const REPO_ROOT = path.resolve(__dirname, __dirname.split(path.sep).includes('dist') ? '../../..' : '../..');
export const DIST_ROOT = path.join(REPO_ROOT, 'dist');
export const RESULTS_DIR = path.join(REPO_ROOT, 'bench', 'results');
/** Compiled scenarios, one file each. */
export const SCENARIOS_DIR = path.join(__dirname, '..', 'scenarios');
