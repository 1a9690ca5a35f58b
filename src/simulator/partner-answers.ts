import type { FinalStatus, PartnerStatus, SimulationScript } from './directives';
import type { RequestRecord } from './simulator-state';

/** The body shape shared by status answers and callbacks in the partner protocol. */
export interface PartnerReport {
  requestNo: string;
  status: PartnerStatus;
  result?: unknown;
  error?: unknown;
}

/** What a successful task reports when the script names no result; recognisable in assertions. */
export const DEFAULT_RESULT = Object.freeze({ simulated: true });
/** What a failed task reports when the script names no error. */
export const DEFAULT_ERROR = Object.freeze({ code: 'SIMULATED_FAILURE' });

/**
 * The outcome the partner reports in callbacks: the scripted `outcome`, else a final status the dispatch
 * answer already gave (so `bodyStatus: 'failed'` alone makes a consistently failed task), else success.
 * Scripting both lets a test make the partner contradict itself.
 */
export function reportedOutcome(record: RequestRecord): FinalStatus {
  return record.script.outcome ?? record.finalStatusFromDispatch ?? 'succeeded';
}

/**
 * What the status endpoint says about a received request: a final status from the dispatch answer wins;
 * otherwise `processing` until `processingForMs` after first receipt, then the outcome.
 */
export function currentStatus(record: RequestRecord, receivedAt: number, now: number): PartnerStatus {
  if (record.finalStatusFromDispatch !== undefined) return record.finalStatusFromDispatch;
  if (now < receivedAt + (record.script.processingForMs ?? 0)) return 'processing';
  return reportedOutcome(record);
}

/** A report with the scripted (or default) result for success and error for failure. */
export function buildReport(requestNo: string, status: PartnerStatus, script: SimulationScript): PartnerReport {
  const report: PartnerReport = { requestNo, status };
  if (status === 'processing') return report;
  if (status === 'succeeded' || script.result !== undefined) report.result = script.result ?? DEFAULT_RESULT;
  if (status === 'failed' || script.error !== undefined) report.error = script.error ?? DEFAULT_ERROR;
  return report;
}
