import { z } from 'zod';
import { findUnstorable, isStorableText, MAX_JSON_DEPTH } from '../db/storable';
import { fieldErrors, HttpProblem, type FieldError } from '../http/problem';
import { TASK_STATUSES, EVENT_SOURCES } from './task';

/** Request and answer shapes of the client API. The same schemas validate requests and generate /openapi.json. */

/**
 * 1-128 characters of `A-Za-z0-9._:-`, not made of dots only: the request number is substituted into the
 * partner's status path, where `.` and `..` would collapse to another path even when percent-encoded.
 */
export const REQUEST_NO_PATTERN = /^(?!\.+$)[A-Za-z0-9._:-]{1,128}$/;

export const requestNoSchema = z
  .string()
  .regex(REQUEST_NO_PATTERN, 'must be 1-128 characters of A-Z, a-z, 0-9, ".", "_", ":" or "-", not dots only');

/** True for a request number a task can have; anything else cannot name a stored task. */
export function isValidRequestNo(s: string): boolean {
  return REQUEST_NO_PATTERN.test(s);
}

/** Query text Postgres can compare against (no NUL, no unpaired surrogate). */
const storableText = (max: number) => z.string().min(1).max(max).refine(isStorableText, 'contains a NUL character or an unpaired surrogate');

const jsonObject = z.record(z.string(), z.unknown());

export const createTaskBodySchema = z
  .object({
    partner: z.string().min(1).max(64).meta({ description: 'Id of a configured partner (see GET /v1/partners).' }),
    requestNo: requestNoSchema.optional().meta({ description: 'Your idempotency key for this partner; generated when absent.' }),
    kind: z.string().min(1).max(128).optional(),
    payload: jsonObject.meta({ description: 'Sent to the partner as is.' }),
    notifyUrl: z.url({ protocol: /^https?$/ }).max(2048).optional(),
    metadata: jsonObject.optional().meta({ description: 'Kept with the task, never sent to the partner.' }),
  })
  .strict()
  .meta({ id: 'CreateTask' });
export type CreateTaskBody = z.infer<typeof createTaskBodySchema>;

/**
 * Validates a create body and returns it with `payload` and `metadata` exactly as the client sent them.
 * (zod copies records by assignment, so a key named `__proto__` would silently vanish from its copy; the
 * parsed JSON has it as an own key.) Refuses with 422, naming the field, anything Postgres cannot store:
 * NUL characters, unpaired surrogates, nesting deeper than MAX_JSON_DEPTH.
 */
export function parseCreateTaskBody(raw: unknown): CreateTaskBody {
  const parsed = createTaskBodySchema.safeParse(raw);
  if (!parsed.success) throw new HttpProblem(422, 'the task has invalid fields', fieldErrors(parsed.error));
  const original = raw as Record<string, unknown>;
  const errors: FieldError[] = [];
  for (const field of ['partner', 'requestNo', 'kind', 'payload', 'notifyUrl', 'metadata'] as const) {
    // payload and metadata are containers themselves: their own level counts towards the limit.
    const found = findUnstorable(original[field], MAX_JSON_DEPTH);
    if (found) errors.push({ field: [field, found.path].filter(Boolean).join('.'), message: found.reason });
  }
  if (errors.length > 0) throw new HttpProblem(422, 'the task has values that cannot be stored', errors);
  const body: CreateTaskBody = { ...parsed.data, payload: original.payload as Record<string, unknown> };
  if (original.metadata !== undefined) body.metadata = original.metadata as Record<string, unknown>;
  return body;
}

const isoTime = z.iso.datetime();

export const taskSchema = z
  .object({
    id: z.uuid(),
    partner: z.string(),
    requestNo: z.string(),
    kind: z.string().nullable(),
    status: z.enum(TASK_STATUSES),
    payload: jsonObject,
    result: z.unknown().nullable(),
    error: z.unknown().nullable(),
    notifyUrl: z.string().nullable(),
    metadata: jsonObject.nullable(),
    dispatchAttempts: z.int(),
    checkAttempts: z.int(),
    settledBy: z.enum(['callback', 'poll', 'dispatch']).nullable(),
    nextCheckAt: isoTime.nullable(),
    createdAt: isoTime,
    updatedAt: isoTime,
    dispatchedAt: isoTime.nullable(),
    completedAt: isoTime.nullable(),
  })
  .meta({ id: 'Task' });
export type ApiTask = z.infer<typeof taskSchema>;

export const taskListSchema = z
  .object({ items: z.array(taskSchema), nextCursor: z.string().nullable() })
  .meta({ id: 'TaskList' });

export const taskEventSchema = z
  .object({
    at: isoTime,
    from: z.enum(TASK_STATUSES).nullable(),
    to: z.enum(TASK_STATUSES),
    source: z.enum(EVENT_SOURCES),
    detail: z.unknown().nullable(),
  })
  .meta({ id: 'TaskEvent' });

export const taskEventListSchema = z
  .object({ items: z.array(taskEventSchema), nextCursor: z.string().nullable() })
  .meta({ id: 'TaskEventList' });

export const listEventsQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(500).default(100),
    cursor: storableText(200).optional(),
  })
  .strict();

export const listTasksQuerySchema = z
  .object({
    status: z.enum(TASK_STATUSES).optional(),
    partner: storableText(64).optional(),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: storableText(200).optional(),
  })
  .strict();

export const getTaskQuerySchema = z
  .object({ waitSeconds: z.coerce.number().int().min(0).max(60).default(0) })
  .strict();

export const partnerListSchema = z
  .object({ items: z.array(z.object({ id: z.string(), baseUrl: z.string() })) })
  .meta({ id: 'PartnerList' });

export const problemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.int(),
    detail: z.string().optional(),
    errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  })
  .meta({ id: 'Problem' });
