import type { PartnerConfig } from '../config/partners';
import type { PartnerStatus } from '../tasks/task';

/** A partner's statement about one request, in our words. */
export interface PartnerReport {
  requestNo?: string;
  status: PartnerStatus;
  result?: unknown;
  error?: unknown;
}

export type MappingResult = { ok: true; report: PartnerReport } | { ok: false; reason: string };

/**
 * Reads a value at an RFC 6901 JSON Pointer. Written here rather than pulled in: it is eight lines, and
 * the popular packages either mutate, throw on missing paths, or ship no types.
 */
export function readPointer(doc: unknown, pointer: string): unknown {
  if (pointer === '') return doc;
  let cur: unknown = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

const OUR_WORDS: Readonly<Record<string, PartnerStatus>> = { processing: 'processing', succeeded: 'succeeded', failed: 'failed' };

/**
 * Turns a partner's body (a status answer, a callback, or a dispatch answer) into a report using the
 * partner's `mapping`. `requireRequestNo` is set for callbacks, which carry nothing else to match on.
 */
export function mapPartnerBody(partner: PartnerConfig, body: unknown, requireRequestNo: boolean): MappingResult {
  const m = partner.mapping;
  const rawStatus = readPointer(body, m.status);
  if (rawStatus === undefined || rawStatus === null) return { ok: false, reason: `no status at ${m.status || '(root)'}` };
  const word = String(rawStatus);
  const status = m.statusValues[word] ?? OUR_WORDS[word];
  if (!status) return { ok: false, reason: `unknown status "${word.slice(0, 64)}"` };
  const rawRequestNo = readPointer(body, m.requestNo);
  const requestNo = typeof rawRequestNo === 'string' || typeof rawRequestNo === 'number' ? String(rawRequestNo) : undefined;
  if (requireRequestNo && !requestNo) return { ok: false, reason: `no request number at ${m.requestNo || '(root)'}` };
  const report: PartnerReport = { status };
  if (requestNo !== undefined) report.requestNo = requestNo;
  const result = readPointer(body, m.result);
  if (result !== undefined) report.result = result;
  const error = readPointer(body, m.error);
  if (error !== undefined) report.error = error;
  return { ok: true, report };
}
