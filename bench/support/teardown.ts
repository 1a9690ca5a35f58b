/**
 * A LIFO list of clean-up steps. `run()` is idempotent and runs every step even when some fail, so it can
 * be called early (to free CPU before the next phase) and again from a `finally` without double work.
 */
export class Teardown {
  private readonly steps: { label: string; fn: () => unknown }[] = [];

  constructor(private readonly log: (message: string) => void = () => undefined) {}

  add(label: string, fn: () => unknown): void {
    this.steps.push({ label, fn });
  }

  /** A nested list whose steps run when this one runs (unless the child ran first). */
  child(label: string): Teardown {
    const child = new Teardown(this.log);
    this.add(label, () => child.run());
    return child;
  }

  get size(): number {
    return this.steps.length;
  }

  private running: Promise<Error[]> | undefined;

  /** Runs every step; a concurrent call (Ctrl-C during a normal teardown) waits for the same run. */
  run(): Promise<Error[]> {
    this.running ??= this.drain().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async drain(): Promise<Error[]> {
    const errors: Error[] = [];
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      try {
        await step.fn();
      } catch (err) {
        const error = err instanceof Error ? err : new Error(String(err));
        this.log(`teardown "${step.label}" failed: ${error.message}`);
        errors.push(error);
      }
    }
    return errors;
  }
}
