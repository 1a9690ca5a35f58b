import type { PartnerConfig } from '../config/partners';
import { escapeUnstorableText, makeStorable } from '../db/storable';
import type { PartnerStatus } from '../tasks/task';

/**
 * A partner's `error` is kept for people to read, not for machines: past this many characters of JSON it
 * is cut, so a misbehaving partner cannot fill rows, events and every answer with megabytes.
 */
export const MAX_PARTNER_ERROR_CHARS = 4096;

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

// Maps, not object literals: a partner's word may be "constructor", "__proto__" or "toString".
const OUR_WORDS: ReadonlyMap<string, PartnerStatus> = new Map([['processing', 'processing'], ['succeeded', 'succeeded'], ['failed', 'failed']]);
const statusValueMaps = new WeakMap<object, ReadonlyMap<string, PartnerStatus>>();

function partnerWords(statusValues: Readonly<Record<string, PartnerStatus>>): ReadonlyMap<string, PartnerStatus> {
  let words = statusValueMaps.get(statusValues);
  if (!words) statusValueMaps.set(statusValues, (words = new Map(Object.entries(statusValues))));
  return words;
}

/**
 * Turns a partner's body (a status answer, a callback, or a dispatch answer) into a report using the
 * partner's `mapping`. `requireRequestNo` is set for callbacks, which carry nothing else to match on.
 */
export function mapPartnerBody(partner: PartnerConfig, body: unknown, requireRequestNo: boolean): MappingResult {
  const m = partner.mapping;
  const rawStatus = readPointer(body, m.status);
  if (rawStatus === undefined || rawStatus === null) return { ok: false, reason: `no status at ${m.status || '(root)'}` };
  const word = typeof rawStatus === 'object' ? JSON.stringify(rawStatus) ?? '' : String(rawStatus);
  const status = partnerWords(m.statusValues).get(word) ?? OUR_WORDS.get(word);
  // The reason ends up in events and answers: keep it short and storable.
  if (!status) return { ok: false, reason: `unknown status "${escapeUnstorableText(word.slice(0, 64))}"` };
  const rawRequestNo = readPointer(body, m.requestNo);
  const requestNo = typeof rawRequestNo === 'string' || typeof rawRequestNo === 'number' ? String(rawRequestNo) : undefined;
  if (requireRequestNo && !requestNo) return { ok: false, reason: `no request number at ${m.requestNo || '(root)'}` };
  const report: PartnerReport = { status };
  if (requestNo !== undefined) report.requestNo = requestNo;
  // Whatever a partner's result and error contain, the report must be storable: it settles the task.
  const result = readPointer(body, m.result);
  if (result !== undefined) report.result = makeStorable(result);
  const error = readPointer(body, m.error);
  if (error !== undefined) report.error = boundedError(makeStorable(error));
  return { ok: true, report };
}

/** The partner's error as is when short; else the start of its JSON text, marked as cut. */
export function boundedError(error: unknown): unknown {
  const text = typeof error === 'string' ? error : JSON.stringify(error);
  if (text === undefined || text.length <= MAX_PARTNER_ERROR_CHARS) return error;
  // Cutting may split a surrogate pair; escapeUnstorableText keeps the cut end storable.
  return escapeUnstorableText(`${text.slice(0, MAX_PARTNER_ERROR_CHARS)}… (truncated from ${text.length} characters)`);
}
