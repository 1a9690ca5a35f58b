import { z } from 'zod';
import {
  createTaskBodySchema,
  partnerListSchema,
  problemSchema,
  taskEventListSchema,
  taskListSchema,
  taskSchema,
} from '../tasks/task-schemas';

const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
const json = (id: string) => ({ 'application/json': { schema: ref(id) } });
const problem = (description: string) => ({ description, content: { 'application/problem+json': { schema: ref('Problem') } } });

const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } };
const common = { '401': problem('No or bad API key') };

/**
 * The OpenAPI 3.1 document. Component schemas are generated from the zod schemas that validate the
 * requests, so the document cannot drift from what the service accepts.
 */
export function buildOpenApiDocument(extraPaths: Record<string, unknown> = {}): Record<string, unknown> {
  const registry = z.registry<{ id: string }>();
  for (const schema of [createTaskBodySchema, taskSchema, taskListSchema, taskEventListSchema, partnerListSchema, problemSchema]) {
    registry.add(schema, { id: schema.meta()!.id as string });
  }
  const { schemas } = z.toJSONSchema(registry, { target: 'draft-2020-12', io: 'input', uri: (id) => `#/components/schemas/${id}` });
  for (const s of Object.values(schemas)) delete (s as Record<string, unknown>).$schema;

  return {
    openapi: '3.1.0',
    info: { title: 'callback-reconciler', version: '1', description: 'Tasks stored before dispatch, callbacks matched and never lost, open tasks reconciled.' },
    components: { schemas, securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    security: [{ bearer: [] }],
    paths: {
      '/v1/tasks': {
        post: {
          summary: 'Create a task (idempotent on partner + requestNo)',
          requestBody: { required: true, content: json('CreateTask') },
          responses: {
            '201': { description: 'Created', headers: { Location: { schema: { type: 'string' } } }, content: json('Task') },
            '200': { description: 'Same request replayed (header Idempotent-Replayed: true)', content: json('Task') },
            '400': problem('Malformed JSON'),
            '409': problem('requestNo already used with a different body'),
            '413': problem('Body over MAX_BODY_BYTES'),
            '415': problem('Not JSON'),
            '422': problem('Invalid fields or unknown partner'),
            ...common,
          },
        },
        get: {
          summary: 'List tasks, newest first',
          parameters: [
            { name: 'status', in: 'query', schema: { type: 'string', enum: ['pending', 'dispatched', 'succeeded', 'failed', 'rejected', 'expired'] } },
            { name: 'partner', in: 'query', schema: { type: 'string' } },
            { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 500, default: 50 } },
            { name: 'cursor', in: 'query', schema: { type: 'string' } },
          ],
          responses: { '200': { description: 'A page (it also ends early past about 4 MB, with nextCursor set)', content: json('TaskList') }, '422': problem('Invalid query'), ...common },
        },
      },
      '/v1/tasks/{id}': {
        get: {
          summary: 'Read a task; waitSeconds holds the answer until it is final',
          parameters: [idParam, { name: 'waitSeconds', in: 'query', schema: { type: 'integer', minimum: 0, maximum: 60 } }],
          responses: { '200': { description: 'The task', content: json('Task') }, '404': problem('No such task'), ...common },
        },
      },
      '/v1/tasks/{id}/events': {
        get: {
          summary: 'The audit trail, oldest first, a page at a time',
          parameters: [
            idParam,
            { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 500, default: 100 } },
            { name: 'cursor', in: 'query', schema: { type: 'string' } },
          ],
          responses: { '200': { description: 'Events', content: json('TaskEventList') }, '404': problem('No such task'), ...common },
        },
      },
      '/v1/tasks/{id}/reconcile': {
        post: {
          summary: 'Check with the partner now',
          parameters: [idParam],
          responses: { '202': { description: 'Accepted; the task as it is now', content: json('Task') }, '404': problem('No such task'), ...common },
        },
      },
      '/v1/partners/{partner}/tasks/{requestNo}': {
        get: {
          summary: 'Read a task by its request number',
          parameters: [
            { name: 'partner', in: 'path', required: true, schema: { type: 'string' } },
            { name: 'requestNo', in: 'path', required: true, schema: { type: 'string' } },
          ],
          responses: { '200': { description: 'The task', content: json('Task') }, '404': problem('No such task'), ...common },
        },
      },
      '/v1/partners': {
        get: { summary: 'The configured partners', responses: { '200': { description: 'Partners', content: json('PartnerList') }, ...common } },
      },
      '/v1/callbacks/{partner}': {
        post: {
          summary: 'A partner reports an outcome (Standard Webhooks signature, not the API key)',
          security: [],
          parameters: [
            { name: 'partner', in: 'path', required: true, schema: { type: 'string' } },
            { name: 'webhook-id', in: 'header', required: true, schema: { type: 'string' } },
            { name: 'webhook-timestamp', in: 'header', required: true, schema: { type: 'string' } },
            { name: 'webhook-signature', in: 'header', required: true, schema: { type: 'string' } },
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
            '200': { description: 'applied, ignored or duplicate', content: { 'application/json': { schema: { type: 'object', properties: { outcome: { type: 'string', enum: ['applied', 'ignored', 'duplicate'] } } } } } },
            '202': { description: 'queued (task not there yet) or poll (untrusted partner)', content: { 'application/json': { schema: { type: 'object', properties: { outcome: { type: 'string', enum: ['queued', 'poll'] } } } } } },
            '400': problem('Malformed, or unreadable by the mapping (kept as unreadable)'),
            '401': problem('Bad or missing signature (nothing stored)'),
            '404': problem('Unknown partner'),
            '413': problem('Body over MAX_BODY_BYTES'),
          },
        },
      },
      '/healthz': { get: { summary: 'Process is up', security: [], responses: { '200': { description: 'OK' } } } },
      '/readyz': { get: { summary: 'Database answers and migrations are current', security: [], responses: { '200': { description: 'Ready' }, '503': problem('Not ready') } } },
      '/metrics': { get: { summary: 'Prometheus metrics', security: [], responses: { '200': { description: 'Prometheus text' } } } },
      ...extraPaths,
    },
  };
}
