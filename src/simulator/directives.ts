import { z } from 'zod';

/**
 * The `payload.simulate` language: how a test scripts the partner's behaviour for one task.
 *
 * Every field is optional; a task without `simulate` gets the default partner (accept with 202, call back
 * `succeeded` after the default delay). Lists are indexed per requestNo so a test can script "fail twice,
 * then accept" without any shared state between tests. Unknown keys are refused with a 400, because a
 * silently ignored typo would make a test pass for the wrong reason.
 *
 * - `dispatch`: answer per attempt (attempt i uses element min(i, len-1)). `status` (default 202): a 2xx
 *   means received; any other status means not received. `bodyStatus` (default `processing`; `none` =
 *   no status field; a final value also fixes what the status endpoint reports). `delayMs`: wait before
 *   answering (receipt is recorded on arrival). `reset`: record receipt, then destroy the socket.
 *   `retryAfter`: seconds, sent as `Retry-After`.
 * - `callback`: `mode` `after` (default; `delayMs` after first receipt, default from the options),
 *   `before` (sent and answered before the dispatch is answered; `delayMs` default 0) or `never`;
 *   `times` copies sent one after another with the same webhook-id, or distinct ids with `distinctIds`.
 * - `outcome` (callbacks and, after `processingForMs`, the status endpoint); defaults to a final
 *   `bodyStatus` of the dispatch answer, else `succeeded`. `result` / `error` go into both.
 * - `status`: answer per status query: `normal`, `404`, `500` or `{mode: 'slow', delayMs}`.
 */

const finalStatusSchema = z.enum(['succeeded', 'failed']);

const dispatchDirectiveSchema = z.strictObject({
  status: z.number().int().min(200).max(599).optional(),
  bodyStatus: z.enum(['processing', 'succeeded', 'failed', 'none']).optional(),
  delayMs: z.number().int().min(0).optional(),
  reset: z.boolean().optional(),
  retryAfter: z.number().int().min(0).optional(),
});

const callbackDirectiveSchema = z.strictObject({
  mode: z.enum(['after', 'before', 'never']).optional(),
  delayMs: z.number().int().min(0).optional(),
  times: z.number().int().min(0).max(1000).optional(),
  distinctIds: z.boolean().optional(),
});

const statusDirectiveSchema = z.union([
  z.enum(['normal', '404', '500']),
  z.strictObject({ mode: z.literal('slow'), delayMs: z.number().int().min(0) }),
]);

const oneOrMany = <T extends z.ZodType>(schema: T) => z.union([schema, z.array(schema).min(1)]);

const simulationScriptSchema = z.strictObject({
  dispatch: oneOrMany(dispatchDirectiveSchema).optional(),
  callback: callbackDirectiveSchema.optional(),
  outcome: finalStatusSchema.optional(),
  result: z.unknown().optional(),
  error: z.unknown().optional(),
  processingForMs: z.number().int().min(0).optional(),
  status: oneOrMany(statusDirectiveSchema).optional(),
});

/** How the partner answers one dispatch attempt. */
export type DispatchDirective = z.infer<typeof dispatchDirectiveSchema>;
/** How (and whether) the partner calls back once it has received a request. */
export type CallbackDirective = z.infer<typeof callbackDirectiveSchema>;
/** How the partner answers one status query. */
export type StatusDirective = z.infer<typeof statusDirectiveSchema>;
/** The whole `payload.simulate` object. */
export type SimulationScript = z.infer<typeof simulationScriptSchema>;
/** A final outcome the partner can report. */
export type FinalStatus = z.infer<typeof finalStatusSchema>;
/** Every status the partner protocol knows. */
export type PartnerStatus = 'processing' | FinalStatus;

/** The script of a task that carries no directives: the plain, well-behaved partner. */
export const DEFAULT_SCRIPT: SimulationScript = Object.freeze({});

/** The outcome of reading `payload.simulate`: a script, or a message a test author can act on. */
export type ScriptParseResult = { ok: true; script: SimulationScript } | { ok: false; problem: string };

/**
 * Reads the directives out of a dispatch payload. Invalid directives are reported instead of ignored,
 * because a silently ignored typo would make a test pass for the wrong reason.
 */
export function readSimulationScript(payload: unknown): ScriptParseResult {
  if (!isPlainObject(payload) || payload['simulate'] === undefined) return { ok: true, script: DEFAULT_SCRIPT };
  const parsed = simulationScriptSchema.safeParse(payload['simulate']);
  if (parsed.success) return { ok: true, script: parsed.data };
  const problems = parsed.error.issues.map((issue) => `${['simulate', ...issue.path.map(String)].join('.')}: ${issue.message}`);
  return { ok: false, problem: problems.join('; ') };
}

/**
 * Picks the directive for the attempt with 0-based `index`: the last element repeats forever, so
 * `[{status: 503}, {status: 202}]` means "fail once, then accept every time".
 */
export function directiveForAttempt<T>(directives: T | readonly T[] | undefined, index: number): T | undefined {
  if (directives === undefined) return undefined;
  if (!Array.isArray(directives)) return directives as T;
  const list = directives as readonly T[];
  return list[Math.min(index, list.length - 1)];
}

/** True for a JSON object (not null, not an array). */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
