import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { PartnerConfig } from '../config/partners';
import type { ExchangeRequest, ExchangeResult, PartnerExchange } from './partner-exchange';

/** The code a thread is started with: it loads the thread's entry, from TypeScript sources under ts-jest. */
const BOOTSTRAP = `
const { workerData } = require('node:worker_threads');
const sources = workerData.sources;
if (sources) {
  require.extensions['.ts'] = (module, filename) => {
    if (!(filename in sources)) throw new Error('no transpiled source for ' + filename);
    module._compile(sources[filename], filename);
  };
}
require(workerData.entry);
`;

/** The thread's own modules: when this file runs as TypeScript (tests), they are transpiled here once. */
const THREAD_MODULES = ['exchange-thread', 'partner-exchange'];
let transpiledSources: Record<string, string> | undefined;

function threadEntry(): { entry: string; sources?: Record<string, string> } {
  const ext = path.extname(__filename);
  const entry = path.join(__dirname, `exchange-thread${ext}`);
  if (ext !== '.ts') return { entry };
  if (!transpiledSources) {
    // typescript is a dev dependency: this branch runs only from sources (ts-jest), never from dist.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ts = require('typescript') as typeof import('typescript');
    transpiledSources = Object.fromEntries(
      THREAD_MODULES.map((name) => {
        const file = path.join(__dirname, `${name}.ts`);
        const out = ts.transpileModule(readFileSync(file, 'utf8'), {
          fileName: file,
          compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
        });
        return [file, out.outputText];
      }),
    );
  }
  return { entry, sources: transpiledSources };
}

/** The error code of a call whose thread ended before it answered: it may have been sent (ambiguous). */
export const THREAD_EXIT_CODE = 'ERR_PARTNER_THREAD_EXIT';

interface Slot {
  worker: Worker;
  startedAt: number;
  /** Between a thread's end and its replacement: calls wait in the outbox. */
  down: boolean;
  outbox: [number, ExchangeRequest][];
  pending: Map<number, (result: ExchangeResult) => void>;
  flushScheduled: boolean;
}

/** A thread that ends sooner than this after its start is replaced only after this long (no busy restart loop). */
const RESTART_BACKOFF_MS = 1000;

/**
 * Partner HTTP on worker threads (PARTNER_IO_THREADS): axios, its sockets and the JSON of every dispatch
 * and status query run off the main event loop, which keeps the API, the database and the batchers. Calls
 * go out in one message per turn of the loop and per thread, round robin. A thread that ends (it should
 * not: every call is bounded by its timeouts) fails its calls in flight as ambiguous, since each may have
 * left, and is started again.
 */
export class ThreadExchange implements PartnerExchange {
  private readonly slots: Slot[];
  private nextId = 1;
  private turn = 0;
  private closed = false;

  constructor(
    private readonly partners: readonly PartnerConfig[],
    threads: number,
    private readonly observe: { logger?: Logger; onUnexpectedExit?: () => void } = {},
  ) {
    if (!(threads >= 1)) throw new Error('ThreadExchange needs at least one thread');
    this.slots = Array.from({ length: threads }, () => ({ worker: undefined as unknown as Worker, startedAt: 0, down: false, outbox: [], pending: new Map(), flushScheduled: false }));
    this.slots.forEach((slot) => this.start(slot));
  }

  send(req: ExchangeRequest): Promise<ExchangeResult> {
    if (this.closed) return Promise.resolve({ ok: false, code: THREAD_EXIT_CODE, message: 'the partner I/O threads are closed', durationMs: 0 });
    const slot = this.slots[this.turn++ % this.slots.length]!;
    const id = this.nextId++;
    return new Promise((resolve) => {
      slot.pending.set(id, resolve);
      slot.outbox.push([id, req]);
      if (slot.flushScheduled) return;
      slot.flushScheduled = true;
      setImmediate(() => this.flush(slot));
    });
  }

  /** Calls in flight on every thread (tests, diagnostics). */
  get inFlight(): number {
    return this.slots.reduce((n, s) => n + s.pending.size, 0);
  }

  /** The threads now running (tests, diagnostics). */
  get workers(): readonly Worker[] {
    return this.slots.map((s) => s.worker);
  }

  /** Ends the threads; calls still in flight answer as ambiguous. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const slot of this.slots) {
      void slot.worker.terminate(); // its exit fails what it holds
      if (!slot.down) continue;
      // Waiting for a replacement that will not come now: nothing of theirs was sent.
      slot.outbox = [];
      for (const id of [...slot.pending.keys()]) this.settle(slot, id, { ok: false, code: THREAD_EXIT_CODE, message: 'the partner I/O threads are closed', durationMs: 0 });
    }
  }

  private flush(slot: Slot): void {
    slot.flushScheduled = false;
    if (slot.down) return; // sent by start() once the replacement runs
    const batch = slot.outbox;
    slot.outbox = [];
    if (batch.length === 0) return;
    try {
      slot.worker.postMessage(batch);
    } catch (err) {
      // Unreachable in practice (requests are JSON read from the database); failed as unclear, never dropped.
      for (const [id] of batch) this.settle(slot, id, { ok: false, message: `request not sendable to the partner I/O thread: ${String(err).slice(0, 400)}`, durationMs: 0 });
    }
  }

  private settle(slot: Slot, id: number, result: ExchangeResult): void {
    const resolve = slot.pending.get(id);
    if (!resolve) return;
    slot.pending.delete(id);
    resolve(result);
  }

  private start(slot: Slot): void {
    const { entry, sources } = threadEntry();
    const worker = new Worker(BOOTSTRAP, {
      eval: true,
      workerData: { entry, sources, partners: this.partners },
      // The thread holds only the calls in flight, each answer at most 1 MiB (its bytes off the heap). Only
      // touched pages count in RSS: the old-generation cap is room for many large answers parsed at once,
      // the small young generation keeps the thread's own footprint down (measured: no loss of rate).
      resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 3 },
      stdout: false,
      stderr: false,
    });
    worker.unref();
    slot.worker = worker;
    slot.startedAt = Date.now();
    slot.down = false;
    if (slot.outbox.length > 0 && !slot.flushScheduled) {
      slot.flushScheduled = true;
      setImmediate(() => this.flush(slot));
    }
    worker.on('message', (answers: [number, ExchangeResult][]) => {
      for (const [id, result] of answers) this.settle(slot, id, result);
    });
    worker.on('error', (err) => this.observe.logger?.error({ err }, 'partner I/O thread failed'));
    worker.on('exit', (code) => {
      if (slot.worker !== worker) return;
      // Calls not posted yet never left; they fail with the rest rather than go out after their answer.
      slot.outbox = [];
      for (const id of [...slot.pending.keys()]) {
        this.settle(slot, id, { ok: false, code: THREAD_EXIT_CODE, message: `the partner I/O thread ended (exit ${code}) before the partner answered`, durationMs: 0 });
      }
      if (this.closed) return;
      this.observe.onUnexpectedExit?.();
      const delayMs = Date.now() - slot.startedAt < RESTART_BACKOFF_MS ? RESTART_BACKOFF_MS : 0;
      this.observe.logger?.error({ exitCode: code, restartInMs: delayMs }, 'partner I/O thread ended; starting another');
      slot.down = true;
      setTimeout(() => {
        if (this.closed) return;
        this.start(slot);
      }, delayMs).unref();
    });
  }
}
