import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startScriptFlags } from '../../bench/support/start-flags';

/**
 * The V8 heap sizing a user gets is the same from `npm start` (README) and from the image (Dockerfile), and
 * the bench measures exactly that (it reads the start script).
 */
const root = path.resolve(__dirname, '../..');

test('npm start and the Dockerfile CMD size the V8 heap the same way', () => {
  const fromStart = startScriptFlags(root);
  expect(fromStart).toEqual(expect.arrayContaining([expect.stringMatching(/^--max-old-space-size=\d+$/), expect.stringMatching(/^--max-semi-space-size=\d+$/)]));
  const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8');
  const cmd = /^CMD (\[.*\])$/m.exec(dockerfile);
  expect(cmd).not.toBeNull();
  const words = JSON.parse(cmd![1]!) as string[];
  expect(words[0]).toBe('node');
  expect(words.at(-1)).toBe('dist/src/main.js');
  expect(words.slice(1, -1)).toEqual(fromStart);
});

test('the zero-setup check finds the process npm start runs (its pattern once missed the heap flags)', () => {
  const script = readFileSync(path.join(root, '.ci/zero-setup-check'), 'utf8');
  const pattern = /pgrep -s "\$service_pid" -f '([^']+)'/.exec(script);
  expect(pattern).not.toBeNull();
  const start = (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start;
  const re = new RegExp(pattern![1]!);
  // pgrep -f matches the whole command line: the node process matches, the `sh -c` npm wraps it in does not.
  expect(re.test(start)).toBe(true);
  expect(re.test(`sh -c ${start}`)).toBe(false);
});
