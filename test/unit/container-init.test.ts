import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { eventually } from '../support/service';

/**
 * scripts/container-init.sh (the image's PID 1) passes SIGTERM on to the service even through a shell
 * wrapper that neither execs nor forwards signals, leaves the service's own children to it, and exits
 * with the command's exit code.
 */

const INIT = path.resolve(__dirname, '../../scripts/container-init.sh');
const dir = mkdtempSync(path.join(tmpdir(), 'cr-init-'));
const service = path.join(dir, 'service.js');
// A stand-in service with a child process of its own (as the embedded PostgreSQL is): on SIGTERM it says
// whether its child is still alive (it must be: stopping it is the service's job), then exits 0.
writeFileSync(
  service,
  `const { spawn } = require('node:child_process');
   const child = spawn('sleep', ['60'], { stdio: 'ignore' });
   process.on('SIGTERM', () => {
     console.log('draining; child alive: ' + (child.exitCode === null && child.signalCode === null));
     child.kill();
     setTimeout(() => { console.log('stopped'); process.exit(0); }, 300);
   });
   console.log('up');
   setInterval(() => {}, 1000);`,
);

async function runUntilSignalled(args: string[]): Promise<{ code: number | null; out: string }> {
  const init = spawn('sh', [INIT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  init.stdout.on('data', (c: Buffer) => (out += c.toString()));
  init.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => init.on('exit', (code) => resolve(code)));
  await eventually(async () => out.includes('up'), 'the service to start', 20_000, 50);
  init.kill('SIGTERM');
  return { code: await exited, out };
}

test('a shell wrapper that neither execs nor forwards signals: the service still drains, exit 0', async () => {
  const { code, out } = await runUntilSignalled(['sh', '-c', `node ${service}; echo "wrapper: service exited $?"`]);
  expect(out).toContain('draining; child alive: true');
  expect(out).toContain('stopped');
  expect(out).toContain('wrapper: service exited 0');
  expect(code).toBe(0);
}, 30_000);

test('the service run directly: drained, exit 0; and a failing command passes its exit code through', async () => {
  const { code, out } = await runUntilSignalled(['node', service]);
  expect(out).toContain('draining; child alive: true');
  expect(code).toBe(0);
  const failing = spawn('sh', [INIT, 'sh', '-c', 'exit 7']);
  expect(await new Promise((resolve) => failing.on('exit', resolve))).toBe(7);
}, 30_000);
