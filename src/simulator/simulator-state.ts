import { DEFAULT_SCRIPT, type FinalStatus, type SimulationScript } from './directives';
import type { CallbackAnswer } from './callback-sender';
import { RingLog } from './ring-log';

/** Enough history for a benchmark's timing questions, bounded so a long run cannot exhaust memory. */
export const REQUEST_LOG_CAPACITY = 200_000;

/** Counters over everything the simulator saw since start or the last reset. */
export interface SimulatorTotals {
  /** Dispatch attempts processed (repeats of a requestNo included; those refused while down excluded). */
  dispatches: number;
  /** Dispatch attempts the partner counted as received (a 2xx answer, or a reset after receipt). */
  received: number;
  /** Status queries processed (those refused while down excluded). */
  statusQueries: number;
  /** Callback HTTP attempts made, retries included. */
  callbacksSent: number;
  /** Callback HTTP attempts that were not answered with a 2xx (connection error, timeout, 3xx, 4xx, 5xx). */
  callbacksFailed: number;
  /** Dispatches and status queries answered 503 because the simulator was set down. */
  rejectedWhileDown: number;
}

/** What the simulator saw for one requestNo; tests assert on it ("dispatched exactly once", "asked before re-sending"). */
export interface RequestStats {
  dispatches: number;
  /**
   * Dispatch attempts that reached the partner as a request it accepted (a 2xx, or a reset after
   * receipt). More than one means the request was delivered again although the partner already had it:
   * since the status endpoint answers 404 only before the first receipt, a caller that asks before
   * re-sending an ambiguous dispatch never gets here twice. The chaos suite counts on it.
   */
  received: number;
  statusQueries: number;
  callbacksSent: number;
  callbacksFailed: number;
  /** The receiver's answer to the most recent callback attempt (status 0: no HTTP answer). */
  lastCallbackAnswer?: CallbackAnswer;
  /** The `Idempotency-Key` header of the most recent dispatch, to check the caller sends `<requestNo>`. */
  lastIdempotencyKey?: string;
}

/** One line of the chronological request log; `at` is epoch milliseconds. */
export interface RequestLogEntry {
  at: number;
  kind: 'dispatch' | 'status';
  requestNo: string;
}

/** A snapshot of everything the simulator counted; a copy the caller may keep or mutate. */
export interface SimulatorStats {
  totals: SimulatorTotals;
  byRequestNo: Record<string, RequestStats>;
  requestLog: RequestLogEntry[];
}

/** Everything the simulator knows about one requestNo. */
export interface RequestRecord {
  readonly requestNo: string;
  readonly stats: RequestStats;
  /** The directives of the most recent dispatch attempt (a retried dispatch carries the same payload). */
  script: SimulationScript;
  callbackUrl: string | undefined;
  /** Set on the first dispatch that counts as received; unset means the status endpoint answers 404. */
  firstReceivedAt: number | undefined;
  /** A final status a received dispatch already answered with; the status endpoint then reports it. */
  finalStatusFromDispatch: FinalStatus | undefined;
}

/**
 * The simulator's memory: one record per requestNo plus totals and a bounded request log.
 *
 * `generation` changes on every reset, so work started before a reset (a delayed callback, a retry) can
 * tell that its record is gone and must not count into the fresh stats.
 */
export class SimulatorState {
  private readonly records = new Map<string, RequestRecord>();
  private readonly log = new RingLog<RequestLogEntry>(REQUEST_LOG_CAPACITY);
  private totals: SimulatorTotals = emptyTotals();
  private currentGeneration = 0;

  get generation(): number {
    return this.currentGeneration;
  }

  /** Counts a dispatch attempt and returns its record and 0-based attempt index for this requestNo. */
  recordDispatch(requestNo: string, script: SimulationScript, callbackUrl: string | undefined, idempotencyKey: string | undefined): { record: RequestRecord; attemptIndex: number } {
    const record = this.recordFor(requestNo);
    const attemptIndex = record.stats.dispatches;
    record.stats.dispatches += 1;
    record.stats.lastIdempotencyKey = idempotencyKey;
    record.script = script;
    record.callbackUrl = callbackUrl ?? record.callbackUrl;
    this.totals.dispatches += 1;
    this.log.append({ at: Date.now(), kind: 'dispatch', requestNo });
    return { record, attemptIndex };
  }

  /** Counts a status query and returns its record and 0-based query index for this requestNo. */
  recordStatusQuery(requestNo: string): { record: RequestRecord; queryIndex: number } {
    const record = this.recordFor(requestNo);
    const queryIndex = record.stats.statusQueries;
    record.stats.statusQueries += 1;
    this.totals.statusQueries += 1;
    this.log.append({ at: Date.now(), kind: 'status', requestNo });
    return { record, queryIndex };
  }

  /**
   * Marks the request received and remembers a final status the dispatch answer carried.
   * @returns true only for the first receipt, which is when callbacks are scheduled.
   */
  markReceived(record: RequestRecord, finalStatusInAnswer: FinalStatus | undefined): boolean {
    record.stats.received += 1;
    this.totals.received += 1;
    if (finalStatusInAnswer !== undefined) record.finalStatusFromDispatch = finalStatusInAnswer;
    if (record.firstReceivedAt !== undefined) return false;
    record.firstReceivedAt = Date.now();
    return true;
  }

  recordCallbackAttempt(record: RequestRecord, answer: CallbackAnswer, accepted: boolean): void {
    record.stats.callbacksSent += 1;
    record.stats.lastCallbackAnswer = answer;
    this.totals.callbacksSent += 1;
    if (!accepted) {
      record.stats.callbacksFailed += 1;
      this.totals.callbacksFailed += 1;
    }
  }

  recordRejectedWhileDown(): void {
    this.totals.rejectedWhileDown += 1;
  }

  /** Forgets every request and counter; work started before the reset sees a new generation. */
  reset(): void {
    this.records.clear();
    this.log.clear();
    this.totals = emptyTotals();
    this.currentGeneration += 1;
  }

  snapshot(): SimulatorStats {
    const byRequestNo: Record<string, RequestStats> = {};
    for (const [requestNo, record] of this.records) byRequestNo[requestNo] = copyRequestStats(record.stats);
    return { totals: { ...this.totals }, byRequestNo, requestLog: this.log.toArray() };
  }

  /** The stats of one requestNo, or undefined when the simulator never saw it. */
  statsFor(requestNo: string): RequestStats | undefined {
    const record = this.records.get(requestNo);
    return record === undefined ? undefined : copyRequestStats(record.stats);
  }

  private recordFor(requestNo: string): RequestRecord {
    let record = this.records.get(requestNo);
    if (record === undefined) {
      record = {
        requestNo,
        stats: { dispatches: 0, received: 0, statusQueries: 0, callbacksSent: 0, callbacksFailed: 0 },
        script: DEFAULT_SCRIPT,
        callbackUrl: undefined,
        firstReceivedAt: undefined,
        finalStatusFromDispatch: undefined,
      };
      this.records.set(requestNo, record);
    }
    return record;
  }
}

function emptyTotals(): SimulatorTotals {
  return { dispatches: 0, received: 0, statusQueries: 0, callbacksSent: 0, callbacksFailed: 0, rejectedWhileDown: 0 };
}

function copyRequestStats(stats: RequestStats): RequestStats {
  const copy: RequestStats = {
    dispatches: stats.dispatches,
    received: stats.received,
    statusQueries: stats.statusQueries,
    callbacksSent: stats.callbacksSent,
    callbacksFailed: stats.callbacksFailed,
  };
  if (stats.lastCallbackAnswer !== undefined) copy.lastCallbackAnswer = stats.lastCallbackAnswer;
  if (stats.lastIdempotencyKey !== undefined) copy.lastIdempotencyKey = stats.lastIdempotencyKey;
  return copy;
}
