import type { Logger } from 'pino';

/**
 * A named piece of background work run every `intervalMs`: `start`, `stop` (waits for the run in flight),
 * `runOnce`, and an overlap guard so a slow run is never joined by the next tick. Errors are logged and
 * the loop goes on.
 */
export class BackgroundLoop {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly intervalMs: number,
    private readonly work: () => Promise<unknown>,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.runOnce(), this.intervalMs);
    this.timer.unref();
  }

  /** Runs the work now unless a run is already in flight, in which case it waits for that one. */
  runOnce(): Promise<void> {
    this.running ??= this.work()
      .then(() => undefined)
      .catch((err: unknown) => this.logger.error({ err, loop: this.name }, 'background run failed'))
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
