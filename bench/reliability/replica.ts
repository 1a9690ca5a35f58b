import path from 'node:path';
import { baseEnv, sleep, startProcess, waitForHttpOk, type ChildHandle } from '../support/processes';

export interface ReplicaOptions {
  name: string;
  /** Fixed for the replica's life, so the load balancer finds it again after a restart. */
  port: number;
  distRoot: string;
  repoRoot: string;
  logFile: string;
  /** The service's environment besides PORT and HOST. */
  env: NodeJS.ProcessEnv;
  log: (message: string) => void;
}

/**
 * One service process (`node dist/src/main.js`) that the chaos suite kills with SIGKILL and starts again
 * on the same port. A start that fails (the database is down at that moment, so migrating fails and the
 * process exits) is retried until it is ready or the replica is told to stay down.
 */
export class Replica {
  private handle: ChildHandle | undefined;
  /** Every process ever started, so stop() can make sure none outlives the run. */
  private readonly started: ChildHandle[] = [];
  private starting: Promise<void> | undefined;
  private wanted = false;
  /** Answered /readyz since it was last started; cleared when killed. */
  ready = false;
  kills = 0;
  starts = 0;
  failedStarts = 0;

  constructor(private readonly opts: ReplicaOptions) {}

  get name(): string {
    return this.opts.name;
  }

  get url(): string {
    return `http://127.0.0.1:${this.opts.port}`;
  }

  get pid(): number | undefined {
    return this.handle && !this.handle.exitInfo() ? this.handle.pid : undefined;
  }

  /** Up: the process runs (it may still be starting). */
  get alive(): boolean {
    return this.handle !== undefined && this.handle.exitInfo() === undefined;
  }

  /** Starts the process and resolves once /readyz answers 200, retrying failed starts. */
  start(): Promise<void> {
    this.wanted = true;
    // Already running: a second process would fail on the port and, worse, orphan this one.
    if (!this.starting && this.alive) return Promise.resolve();
    this.starting ??= this.startUntilReady().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** SIGKILL: no drain, no lease hand-back; whatever it held must be recovered by the others. */
  async kill(): Promise<void> {
    this.wanted = false;
    this.ready = false;
    const h = this.handle;
    if (h && !h.exitInfo()) {
      this.kills += 1;
      h.child.kill('SIGKILL');
      await h.exited;
    }
    await this.starting?.catch(() => undefined);
  }

  /** SIGTERM and wait (SIGKILL after the timeout). */
  async stop(): Promise<void> {
    this.wanted = false;
    this.ready = false;
    await this.starting?.catch(() => undefined);
    await Promise.all(this.started.map((h) => h.stop({ timeoutMs: 20_000 })));
  }

  private async startUntilReady(): Promise<void> {
    for (;;) {
      if (!this.wanted) return;
      this.starts += 1;
      const handle = startProcess({
        name: this.opts.name,
        command: process.execPath,
        args: [path.join(this.opts.distRoot, 'src', 'main.js')],
        env: { ...baseEnv(), ...this.opts.env, PORT: String(this.opts.port), HOST: '127.0.0.1' },
        cwd: this.opts.repoRoot,
        logFile: this.opts.logFile,
      });
      this.handle = handle;
      this.started.push(handle);
      try {
        await waitForHttpOk(`${this.url}/readyz`, { process: handle, timeoutMs: 60_000, intervalMs: 100 });
        this.ready = this.wanted;
        return;
      } catch (err) {
        if (!this.wanted) return;
        this.failedStarts += 1;
        this.opts.log(`${this.opts.name}: start failed (${(err as Error).message.split('\n')[0]}); trying again`);
        handle.child.kill('SIGKILL');
        await handle.exited;
        await sleep(500);
      }
    }
  }
}
