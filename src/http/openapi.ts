import { z } from 'zod';
import {
  createTaskBodySchema,
  partnerListSchema,
  problemSchema,
  taskEventListSchema,
  taskEventSchema,
  taskListSchema,
  taskSchema,
} from '../tasks/task-schemas';

/**
 * The OpenAPI 3.1 document of the service, served at `/openapi.json`.
 *
 * Component schemas are generated from the zod schemas that validate requests and shape answers, so the
 * document cannot drift from what the service accepts. Every operation goes through {@link operation},
 * which adds what every answer of this service carries (`X-Request-Id`), what any route can answer (`500`,
 * and `503` + `Retry-After` while the database is unreachable) and, for keyed routes, the `401`. The
 * document is checked in CI by `@redocly/cli lint` (config: `redocly.yaml`), swagger-parser and ajv
 * (2020-12), and the live answers of every route are validated against it (test/e2e/openapi-live.test.ts).
 *
 * Adding a route (other modules plug in here):
 * 1. give its zod answer schemas `.meta({ id: 'Name' })` and list them in {@link COMPONENT_SCHEMAS} (or pass
 *    them as `extraSchemas`);
 * 2. describe it with `operation({...})` in {@link apiPaths} (or pass it in `extraPaths`), with an
 *    `operationId` and every status code it can answer; `problem(...)`, `jsonOf(...)` and `ref(...)` help.
 * test/e2e/openapi.test.ts fails when an express route is missing from the document.
 */

/** Named zod schemas that become `components.schemas` (each carries `.meta({ id })`). */
export const COMPONENT_SCHEMAS: readonly z.ZodType[] = [
  createTaskBodySchema,
  taskSchema,
  taskListSchema,
  taskEventSchema,
  taskEventListSchema,
  partnerListSchema,
  problemSchema,
];

export type HttpMethod = 'get' | 'post' | 'put' | 'patch' | 'delete';
export type OpenApiObject = Record<string, unknown>;
/** `paths` of the document: path template → method → operation object. */
export type OpenApiPaths = Record<string, Partial<Record<HttpMethod, OpenApiObject>>>;

export const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const header = (id: string) => ({ $ref: `#/components/headers/${id}` });

/** A JSON answer whose body is the named component schema (or an inline schema). */
export function jsonOf(description: string, schema: string | OpenApiObject, headers: Record<string, unknown> = {}): OpenApiObject {
  return { description, headers, content: { 'application/json': { schema: typeof schema === 'string' ? ref(schema) : schema } } };
}

/** An RFC 9457 problem answer. */
export function problem(description: string, headers: Record<string, unknown> = {}): OpenApiObject {
  return { description, headers, content: { 'application/problem+json': { schema: ref('Problem') } } };
}

export interface OperationSpec {
  operationId: string;
  summary: string;
  description?: string;
  tags: string[];
  /** `apiKey`: the client API's bearer key (adds 401); `none`: ops and partner-facing routes. */
  auth: 'apiKey' | 'none';
  /**
   * True for routes that need the database (and every /v1 route, which is refused while the service
   * starts up): documents `503` + `Retry-After`.
   */
  database: boolean;
  parameters?: OpenApiObject[];
  requestBody?: OpenApiObject;
  responses: Record<string, OpenApiObject>;
}

/**
 * One operation with what every operation of this service shares: `X-Request-Id` on every answer, `500`
 * for the unexpected, `503` + `Retry-After` on routes that need the database, `401` on keyed routes.
 */
export function operation(spec: OperationSpec): OpenApiObject {
  const responses: Record<string, OpenApiObject> = { ...spec.responses };
  if (spec.auth === 'apiKey') responses['401'] ??= problem('No or bad API key', { 'WWW-Authenticate': header('WWW-Authenticate') });
  if (spec.database) responses['503'] ??= problem('Starting up, or the database is unreachable; try again after Retry-After seconds', { 'Retry-After': header('Retry-After') });
  responses['500'] ??= problem('Unexpected error (logged; the answer never carries internals)');
  for (const [status, response] of Object.entries(responses)) {
    responses[status] = { ...response, headers: { 'X-Request-Id': header('X-Request-Id'), ...(response.headers as object | undefined) } };
  }
  const { auth, database: _database, ...rest } = spec;
  return { ...rest, ...(auth === 'none' ? { security: [] } : {}), responses };
}

const idParam = { name: 'id', in: 'path', required: true, description: 'The task id (a UUID).', schema: { type: 'string', format: 'uuid' } };
const partnerParam = { name: 'partner', in: 'path', required: true, description: 'A configured partner id.', schema: { type: 'string' } };
const invalidQuery = problem('Invalid query parameters (each bad one named in `errors`)');
const noTask = problem('No such task');

/** The routes of the service (tasks, partners, callbacks, ops). */
export function apiPaths(): OpenApiPaths {
  const outcome = (values: string[]) => ({
    type: 'object',
    required: ['outcome'],
    properties: { outcome: { type: 'string', enum: values } },
  });
  return {
    '/v1/tasks': {
      post: operation({
        operationId: 'createTask',
        summary: 'Create a task (idempotent on partner + requestNo)',
        description: 'Answers once the task is committed; the dispatch to the partner starts right after, never before.',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        requestBody: { required: true, content: { 'application/json': { schema: ref('CreateTask') } } },
        responses: {
          '201': jsonOf('Created', 'Task', { Location: header('Location') }),
          '200': jsonOf('The same request replayed: the stored task, unchanged', 'Task', {
            Location: header('Location'),
            'Idempotent-Replayed': header('Idempotent-Replayed'),
          }),
          '400': problem('Malformed JSON'),
          '409': problem('requestNo already used for this partner with a different body'),
          '413': problem('Body over MAX_BODY_BYTES'),
          '415': problem('Not JSON'),
          '422': problem('Invalid fields, input the database cannot store, or an unknown partner (each named in `errors`)'),
        },
      }),
      get: operation({
        operationId: 'listTasks',
        summary: 'List tasks, newest first (keyset pages)',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        parameters: [
          { name: 'status', in: 'query', schema: { type: 'string', enum: ['pending', 'dispatched', 'succeeded', 'failed', 'rejected', 'expired'] } },
          { name: 'partner', in: 'query', schema: { type: 'string' } },
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 500, default: 50 } },
          { name: 'cursor', in: 'query', description: 'The `nextCursor` of the previous page (opaque).', schema: { type: 'string' } },
        ],
        responses: { '200': jsonOf('A page (it also ends early past about 4 MB, with nextCursor set)', 'TaskList'), '422': invalidQuery },
      }),
    },
    '/v1/tasks/{id}': {
      get: operation({
        operationId: 'getTask',
        summary: 'Read a task; waitSeconds holds the answer until it is final',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        parameters: [idParam, { name: 'waitSeconds', in: 'query', schema: { type: 'integer', minimum: 0, maximum: 60, default: 0 } }],
        responses: { '200': jsonOf('The task', 'Task'), '404': noTask, '422': invalidQuery },
      }),
    },
    '/v1/tasks/{id}/events': {
      get: operation({
        operationId: 'listTaskEvents',
        summary: 'The audit trail, oldest first, a page at a time',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        parameters: [
          idParam,
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 500, default: 100 } },
          { name: 'cursor', in: 'query', description: 'The `nextCursor` of the previous page (opaque).', schema: { type: 'string' } },
        ],
        responses: { '200': jsonOf('Events', 'TaskEventList'), '404': noTask, '422': invalidQuery },
      }),
    },
    '/v1/tasks/{id}/reconcile': {
      post: operation({
        operationId: 'reconcileTask',
        summary: 'Check with the partner now',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        parameters: [idParam],
        responses: { '202': jsonOf('Accepted; the task as it is now', 'Task'), '404': noTask },
      }),
    },
    '/v1/partners/{partner}/tasks/{requestNo}': {
      get: operation({
        operationId: 'getTaskByRequestNo',
        summary: 'Read a task by its request number',
        tags: ['tasks'],
        auth: 'apiKey',
        database: true,
        parameters: [partnerParam, { name: 'requestNo', in: 'path', required: true, schema: { type: 'string' } }],
        responses: { '200': jsonOf('The task', 'Task'), '404': noTask },
      }),
    },
    '/v1/partners': {
      get: operation({
        operationId: 'listPartners',
        summary: 'The configured partners (never a secret or header value)',
        tags: ['partners'],
        auth: 'apiKey',
        // No database needed, but like every /v1 route it answers 503 while the service starts up.
        database: true,
        responses: { '200': jsonOf('Partners', 'PartnerList') },
      }),
    },
    '/v1/callbacks/{partner}': {
      post: operation({
        operationId: 'receiveCallback',
        summary: 'A partner reports an outcome (Standard Webhooks signature, not the API key)',
        tags: ['callbacks'],
        auth: 'none',
        database: true,
        parameters: [
          partnerParam,
          { name: 'webhook-id', in: 'header', required: true, schema: { type: 'string' } },
          { name: 'webhook-timestamp', in: 'header', required: true, schema: { type: 'string' } },
          { name: 'webhook-signature', in: 'header', required: true, description: '`v1,<base64 HMAC-SHA256>`; several, space-separated, during a secret rotation.', schema: { type: 'string' } },
        ],
        requestBody: {
          required: true,
          content: {
            'application/json': {
              schema: {
                type: 'object',
                description: 'The partner protocol shape, or the shape its `mapping` describes',
                properties: { requestNo: { type: 'string' }, status: { type: 'string', enum: ['processing', 'succeeded', 'failed'] }, result: {}, error: {} },
              },
            },
          },
        },
        responses: {
          '200': jsonOf('applied, ignored or duplicate', outcome(['applied', 'ignored', 'duplicate'])),
          '202': jsonOf('queued (its task is not there yet; applied when it appears) or poll (an untrusted partner: its status is asked)', outcome(['queued', 'poll'])),
          '400': problem('Malformed, or unreadable by the mapping (kept as unreadable)'),
          '401': problem('Bad or missing signature (nothing stored)'),
          '404': problem('Unknown partner'),
          '413': problem('Body over MAX_BODY_BYTES'),
        },
      }),
    },
    '/healthz': {
      get: operation({
        operationId: 'getHealth',
        summary: 'Liveness: the process answers',
        tags: ['ops'],
        auth: 'none',
        database: false,
        responses: { '200': jsonOf('Up', { type: 'object', required: ['status'], properties: { status: { type: 'string', enum: ['ok'] } } }) },
      }),
    },
    '/readyz': {
      get: operation({
        operationId: 'getReadiness',
        summary: 'Readiness: the database answers and migrations are current; 503 while starting up or draining',
        tags: ['ops'],
        auth: 'none',
        database: false,
        responses: {
          '200': jsonOf('Ready', { type: 'object', required: ['status'], properties: { status: { type: 'string', enum: ['ready'] } } }),
          '503': problem('Not ready: waiting for the database, migrations not current, or draining', { 'Retry-After': header('Retry-After') }),
        },
      }),
    },
    '/metrics': {
      get: operation({
        operationId: 'getMetrics',
        summary: 'Prometheus metrics (text exposition format 0.0.4)',
        tags: ['ops'],
        auth: 'none',
        database: false,
        responses: { '200': { description: 'Prometheus text', content: { 'text/plain': { schema: { type: 'string' } } } } },
      }),
    },
    '/openapi.json': {
      get: operation({
        operationId: 'getOpenApi',
        summary: 'This document',
        tags: ['ops'],
        auth: 'none',
        database: false,
        responses: { '200': jsonOf('OpenAPI 3.1', { type: 'object' }) },
      }),
    },
  };
}

export interface OpenApiOptions {
  /** The service's public base URL (PUBLIC_BASE_URL), named in `servers`. */
  serverUrl?: string;
  /** More routes (modules that own their paths plug in here). */
  extraPaths?: OpenApiPaths;
  /** More named zod schemas for `components.schemas`. */
  extraSchemas?: readonly z.ZodType[];
}

/** The whole document. */
export function buildOpenApiDocument(opts: OpenApiOptions = {}): OpenApiObject {
  return {
    openapi: '3.1.0',
    info: {
      title: 'callback-reconciler',
      version: '1',
      description: 'Tasks stored before dispatch, callbacks matched and never lost, open tasks reconciled.',
      license: { name: 'UNLICENSED', identifier: 'LicenseRef-UNLICENSED' },
    },
    servers: [{ url: opts.serverUrl ?? 'http://127.0.0.1:3000', description: 'This service (PUBLIC_BASE_URL)' }],
    tags: [
      { name: 'tasks', description: 'The client API' },
      { name: 'partners', description: 'Configured partners' },
      { name: 'callbacks', description: 'Partner-facing: outcomes reported by partners' },
      { name: 'ops', description: 'Health, readiness, metrics, this document (no key)' },
    ],
    components: {
      schemas: componentSchemas([...COMPONENT_SCHEMAS, ...(opts.extraSchemas ?? [])]),
      headers: {
        'X-Request-Id': { description: 'The request id (the caller\'s when sane, else generated); it is in the request\'s log line.', schema: { type: 'string' } },
        'Retry-After': { description: 'Seconds to wait before trying again.', schema: { type: 'integer', minimum: 0 } },
        'Idempotent-Replayed': { description: 'The answer is the stored task of an earlier identical request.', schema: { type: 'string', enum: ['true'] } },
        Location: { description: 'The task\'s URL.', schema: { type: 'string' } },
        'WWW-Authenticate': { description: 'The bearer challenge.', schema: { type: 'string' } },
      },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A key from API_KEYS' } },
    },
    security: [{ bearer: [] }],
    paths: { ...apiPaths(), ...opts.extraPaths },
  };
}

/**
 * zod → JSON Schema 2020-12 for `components.schemas`. Every schema that has an id must be listed (an id'd
 * schema that is not would land in an invalid `__shared` entry); `$id` and `$schema` are dropped (a
 * fragment `$id` is not a valid 2020-12 `$id`), and `anyOf: [{}, {type: null}]` (zod's `unknown().nullable()`)
 * becomes `{}`, which already admits null.
 */
function componentSchemas(list: readonly z.ZodType[]): Record<string, unknown> {
  const registry = z.registry<{ id: string }>();
  for (const schema of list) {
    const id = schema.meta()?.id;
    if (typeof id !== 'string') throw new Error('an OpenAPI component schema needs .meta({ id })');
    registry.add(schema, { id });
  }
  const { schemas } = z.toJSONSchema(registry, { target: 'draft-2020-12', io: 'input', uri: (id) => `#/components/schemas/${id}` });
  if ('__shared' in schemas) throw new Error(`a schema with an id is used but not listed: ${Object.keys(schemas.__shared?.$defs ?? {}).join(', ')}`);
  for (const s of Object.values(schemas)) {
    delete (s as Record<string, unknown>).$schema;
    delete (s as Record<string, unknown>).$id;
  }
  return simplifyAnyValue(schemas) as Record<string, unknown>;
}

function simplifyAnyValue(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(simplifyAnyValue);
  if (node === null || typeof node !== 'object') return node;
  const obj = node as Record<string, unknown>;
  const anyOf = obj.anyOf;
  if (Array.isArray(anyOf) && anyOf.some((s) => s !== null && typeof s === 'object' && Object.keys(s).length === 0)) {
    const { anyOf: _dropped, ...rest } = obj;
    return simplifyAnyValue(rest);
  }
  return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, simplifyAnyValue(v)]));
}
