/**
 * Group commit for hot single-row statements: concurrent callers' items are gathered into one statement
 * (one round trip, one commit, one fsync) instead of one each. Each caller still gets its own answer.
 *
 * When to run a batch:
 * - nothing in flight (the service is idle): at once, on the next turn of the event loop, so a lone request
 *   never waits for company;
 * - some batch already in flight: after `windowMs` (about 1 ms) or as soon as `maxBatch` items are waiting;
 * - every slot busy (`maxConcurrent` batches in flight): when a slot frees, with everything that waited.
 *
 * Back-pressure: more than `maxQueued` waiting items, or an item not started within `maxWaitMs`, is
 * refused with {@link BatcherSaturatedError} (the routes answer 503 with Retry-After) instead of queueing
 * without limit.
 *
 * Failures: a batch that throws a data error (`isolate`) is split and each item run alone, so one bad
 * item fails only its own caller; any other error (connection, pool) fails every caller of the batch
 * with that error.
 *
 * @example
 * const creates = new Batcher({ name: 'create', run: (tasks) => repo.insertMany(tasks) });
 * const result = await creates.submit(task);
 */
export interface BatcherOptions<I, O> {
  /** Names the batcher in metrics and errors. */
  name: string;
  /** Runs one batch; resolves with one output per item, in the items' order. */
  run: (items: I[]) => Promise<O[]>;
  maxBatch?: number;
  windowMs?: number;
  maxConcurrent?: number;
  maxQueued?: number;
  maxWaitMs?: number;
  /** True for errors caused by the data of some item (so running the items alone isolates it). */
  isolate?: (err: unknown) => boolean;
  /**
   * Items with the same key never share a batch: the later one waits for a following batch. For statements
   * where two items touching one row in one statement would break a rule (one event per change).
   */
  keyOf?: (item: I) => string;
}

export const BATCH_DEFAULTS = Object.freeze({
  maxBatch: 64,
  windowMs: 1,
  maxConcurrent: 4,
  maxQueued: 4096,
  maxWaitMs: 2000,
});

/** How long a refused caller is told to wait before trying again. */
export const SATURATED_RETRY_AFTER_SECONDS = 1;

/** The batcher is saturated: the item was not taken (and nothing of it was written). */
export class BatcherSaturatedError extends Error {
  override name = 'BatcherSaturatedError';
  constructor(
    readonly batcher: string,
    readonly reason: 'queue_full' | 'wait_exceeded' | 'stopped',
  ) {
    super(`${batcher}: ${reason === 'queue_full' ? 'too many requests waiting' : reason === 'stopped' ? 'stopped' : 'waited too long for the database'}`);
  }
}

interface Waiting<I, O> {
  item: I;
  key: string | undefined;
  deadline: number;
  resolve: (o: O) => void;
  reject: (e: unknown) => void;
}

export class Batcher<I, O> {
  readonly name: string;
  private readonly opts: Required<Omit<BatcherOptions<I, O>, 'keyOf' | 'isolate'>> & Pick<BatcherOptions<I, O>, 'keyOf' | 'isolate'>;
  private queue: Waiting<I, O>[] = [];
  private inFlight = 0;
  private flushScheduled: 'immediate' | 'window' | undefined;
  private windowTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly idle = new Set<() => void>();
  /** Batches run and items carried, for tests and the bench. */
  readonly stats = { batches: 0, items: 0, largest: 0, refused: 0 };

  constructor(opts: BatcherOptions<I, O>) {
    this.name = opts.name;
    this.opts = { ...BATCH_DEFAULTS, ...opts };
  }

  /** Items waiting for a batch (not those in flight): the queue depth metric. */
  get depth(): number {
    return this.queue.length;
  }

  get active(): number {
    return this.inFlight;
  }

  /** Resolves with this item's output once its batch has committed; rejects with its batch's error. */
  submit(item: I): Promise<O> {
    if (this.stopped) return Promise.reject(new BatcherSaturatedError(this.name, 'stopped'));
    if (this.queue.length >= this.opts.maxQueued) {
      this.stats.refused++;
      return Promise.reject(new BatcherSaturatedError(this.name, 'queue_full'));
    }
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, key: this.opts.keyOf?.(item), deadline: performance.now() + this.opts.maxWaitMs, resolve, reject });
      this.armExpiry();
      this.schedule();
    });
  }

  /** Refuses new items and waits for queued and in-flight batches to finish. */
  async drain(): Promise<void> {
    this.stopped = true;
    while (this.inFlight > 0 || this.queue.length > 0) {
      await new Promise<void>((resolve) => this.idle.add(resolve));
    }
  }

  private schedule(): void {
    if (this.inFlight >= this.opts.maxConcurrent || this.queue.length === 0) return;
    if (this.inFlight === 0 || this.queue.length >= this.opts.maxBatch) {
      if (this.flushScheduled === 'immediate') return;
      if (this.windowTimer) clearTimeout(this.windowTimer);
      this.windowTimer = undefined;
      this.flushScheduled = 'immediate';
      // setImmediate, not a microtask: requests parsed in the same I/O turn join this batch.
      setImmediate(() => this.flush());
      return;
    }
    if (this.flushScheduled) return;
    this.flushScheduled = 'window';
    this.windowTimer = setTimeout(() => this.flush(), this.opts.windowMs);
  }

  private flush(): void {
    this.flushScheduled = undefined;
    if (this.windowTimer) clearTimeout(this.windowTimer);
    this.windowTimer = undefined;
    while (this.inFlight < this.opts.maxConcurrent && this.queue.length > 0) {
      const batch = this.take();
      if (batch.length === 0) break;
      this.inFlight++;
      void this.runBatch(batch).finally(() => {
        this.inFlight--;
        if (this.queue.length > 0) this.flushNow();
        else this.notifyIdle();
      });
      // Another batch right away only if a full one is waiting; otherwise let the window gather more.
      if (this.queue.length < this.opts.maxBatch) break;
    }
    if (this.queue.length > 0) this.schedule();
  }

  /** A slot freed with items waiting: they have waited at least one round trip already, so go now. */
  private flushNow(): void {
    if (this.flushScheduled === 'immediate') return;
    if (this.windowTimer) clearTimeout(this.windowTimer);
    this.windowTimer = undefined;
    this.flushScheduled = undefined;
    this.flush();
  }

  /** Up to maxBatch items in arrival order, skipping (and keeping queued) an item whose key is taken. */
  private take(): Waiting<I, O>[] {
    const now = performance.now();
    const batch: Waiting<I, O>[] = [];
    const rest: Waiting<I, O>[] = [];
    const keys = new Set<string>();
    for (const w of this.queue) {
      if (w.deadline <= now) {
        this.refuse(w);
      } else if (batch.length >= this.opts.maxBatch || (w.key !== undefined && keys.has(w.key))) {
        rest.push(w);
      } else {
        if (w.key !== undefined) keys.add(w.key);
        batch.push(w);
      }
    }
    this.queue = rest;
    this.armExpiry();
    return batch;
  }

  private async runBatch(batch: Waiting<I, O>[]): Promise<void> {
    this.stats.batches++;
    this.stats.items += batch.length;
    this.stats.largest = Math.max(this.stats.largest, batch.length);
    try {
      const out = await this.opts.run(batch.map((w) => w.item));
      if (out.length !== batch.length) throw new Error(`${this.name}: batch returned ${out.length} results for ${batch.length} items`);
      batch.forEach((w, i) => w.resolve(out[i]!));
    } catch (err) {
      if (batch.length > 1 && this.opts.isolate?.(err)) {
        // One item's data broke the statement: run each alone so only its own caller fails.
        for (const w of batch) await this.runBatch([w]);
        return;
      }
      for (const w of batch) w.reject(err);
    }
  }

  private refuse(w: Waiting<I, O>): void {
    this.stats.refused++;
    w.reject(new BatcherSaturatedError(this.name, 'wait_exceeded'));
  }

  /** One timer for the oldest waiting item, so a caller is refused on time even while every slot hangs. */
  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    const head = this.queue[0];
    if (!head) return;
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = undefined;
      const now = performance.now();
      const keep: Waiting<I, O>[] = [];
      for (const w of this.queue) (w.deadline <= now ? this.refuse(w) : keep.push(w));
      this.queue = keep;
      this.armExpiry();
      if (this.queue.length === 0 && this.inFlight === 0) this.notifyIdle();
    }, Math.max(1, Math.ceil(head.deadline - performance.now())));
    this.expiryTimer.unref();
  }

  private notifyIdle(): void {
    if (this.inFlight > 0 || this.queue.length > 0) return;
    for (const done of this.idle) done();
    this.idle.clear();
  }
}

/** SQLSTATE classes caused by the data of a row (22 data exception, 23 integrity constraint), not the connection. */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}
