/**
 * Every wait the simulator does (callback delays, retry back-off, scripted slow answers), in one place so
 * `reset()` and `close()` can cancel all of them: a test that closes the simulator must not leave timers
 * that keep the process alive or fire callbacks into the next test.
 */
export class CancellableTimers {
  private readonly pending = new Map<NodeJS.Timeout, (elapsed: boolean) => void>();

  /**
   * Resolves `true` after `ms`, or `false` as soon as the wait is cancelled (by `cancelAll()` or by
   * `signal`), so the caller can stop instead of acting on stale state.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const onAbort = (): void => this.cancel(timer);
      const settle = (elapsed: boolean): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve(elapsed);
      };
      const timer = setTimeout(() => {
        this.pending.delete(timer);
        settle(true);
      }, ms);
      this.pending.set(timer, settle);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Cancels every pending wait; each resolves `false`. */
  cancelAll(): void {
    for (const timer of [...this.pending.keys()]) this.cancel(timer);
  }

  get size(): number {
    return this.pending.size;
  }

  private cancel(timer: NodeJS.Timeout): void {
    const settle = this.pending.get(timer);
    if (settle === undefined) return;
    clearTimeout(timer);
    this.pending.delete(timer);
    settle(false);
  }
}
