import { z } from 'zod';
import { EVENT_SOURCES } from '../tasks/task';

/** Answers of the task-story and overview endpoints; they also generate their part of /openapi.json. */

const isoTime = z.iso.datetime();

export const storyPageQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(500).default(100),
    cursor: z.string().min(1).max(200).optional(),
  })
  .strict();

export const partnerCallSchema = z
  .object({
    at: isoTime.meta({ description: 'When the call was sent.' }),
    operation: z.enum(['dispatch', 'status']),
    outcome: z.string().meta({ description: 'dispatch: received, refused, transient, ambiguous; status: found, not_found, error.' }),
    reportedStatus: z.enum(['processing', 'succeeded', 'failed']).nullable().meta({ description: 'What the partner said about the request, when it said.' }),
    httpStatus: z.int().nullable(),
    errorClass: z.enum(['connect', 'timeout', 'http_4xx', 'http_5xx', 'unknown']).nullable(),
    error: z.string().nullable(),
    durationMs: z.int(),
  })
  .meta({ id: 'PartnerCall' });

export const partnerCallListSchema = z
  .object({ items: z.array(partnerCallSchema), nextCursor: z.string().nullable() })
  .meta({ id: 'PartnerCallList', description: 'Dispatch attempts and status queries sent to the partner, oldest first.' });

export const receivedCallbackSchema = z
  .object({
    receivedAt: isoTime,
    webhookId: z.string().nullable(),
    verification: z
      .enum(['verified', 'missing_headers', 'bad_signature', 'stale_timestamp', 'poll_hint'])
      .meta({ description: '`poll_hint`: a `verify: "poll"` partner, never trusted; it only triggered a status query.' }),
    outcome: z
      .enum(['queued', 'applied', 'ignored', 'conflict', 'unreadable', 'refused', 'poll'])
      .meta({ description: 'What came of it; `refused` ones were answered 401 and their bodies were not stored.' }),
    reportedStatus: z.enum(['processing', 'succeeded', 'failed']).nullable(),
    result: z.unknown().nullable(),
    error: z.unknown().nullable(),
    body: z.string().nullable().meta({ description: 'The stored body, cut to 2048 characters (null when refused).' }),
    duplicates: z.int().meta({ description: 'Redeliveries of the same webhook-id received afterwards.' }),
    lastDuplicateAt: isoTime.nullable(),
    matchedAt: isoTime.nullable(),
    early: z.boolean().meta({ description: 'It arrived before the task was created.' }),
  })
  .meta({ id: 'ReceivedCallback' });

export const receivedCallbackListSchema = z
  .object({ items: z.array(receivedCallbackSchema), nextCursor: z.string().nullable() })
  .meta({ id: 'ReceivedCallbackList', description: "Callbacks received for the task's request number, oldest first." });

export const partnerOverviewSchema = z.object({
  id: z.string(),
  configured: z.boolean().meta({ description: 'False for a partner that has tasks but is no longer in the configuration.' }),
  open: z.object({ pending: z.int(), dispatched: z.int() }),
  expired: z.int(),
  oldestOpenTaskAgeSeconds: z.number().nullable(),
  conflicts24h: z.int().meta({ description: 'Reports that contradicted a final status in the last 24 hours.' }),
  breaker: z.enum(['closed', 'open', 'half-open']).meta({ description: "This replica's circuit breaker for the partner." }),
});

export const overviewSchema = z
  .object({ generatedAt: isoTime, partners: z.array(partnerOverviewSchema) })
  .meta({ id: 'Overview' });

export const sessionSchema = z
  .object({
    label: z.string().meta({ description: 'The label of the API key used (`local` when the service runs without keys on loopback).' }),
    authRequired: z.boolean(),
  })
  .meta({ id: 'Session' });

/** The detail of an event written for an operator's action (source `manual`). */
export const manualActionDetail = (action: string, by: string, extra: Record<string, unknown> = {}) => ({ type: 'manual', action, by, ...extra });

export const MANUAL_SOURCE: (typeof EVENT_SOURCES)[number] = 'manual';
