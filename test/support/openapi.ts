import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Ajv2020, { type ValidateFunction } from 'ajv/dist/2020';
import addFormats from 'ajv-formats';

/**
 * The ecosystem's own validators, run on the OpenAPI document the service serves, and a checker of live
 * answers against it. Shared by openapi.test.ts (the document) and openapi-live.test.ts (the answers).
 */

const ROOT = path.resolve(__dirname, '../..');
const run = promisify(execFile);

type Json = Record<string, unknown>;
export type OpenApiDoc = Json & { paths: Record<string, Record<string, Json>>; components: { schemas: Record<string, Json> } };

export const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'] as const;

/** `@redocly/cli lint` with the repository's redocly.yaml; returns its problems (errors and warnings). */
export async function redoclyLint(doc: OpenApiDoc): Promise<{ totals: { errors: number; warnings: number }; problems: { ruleId: string; message: string; severity: string }[] }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cr-openapi-'));
  const file = path.join(dir, 'openapi.json');
  writeFileSync(file, JSON.stringify(doc, null, 2));
  const bin = path.join(ROOT, 'node_modules', '@redocly', 'cli', 'bin', 'cli.js');
  // Exits non-zero when it finds errors; the JSON report on stdout says which either way.
  const out = await run(process.execPath, [bin, 'lint', '--config', path.join(ROOT, 'redocly.yaml'), '--format', 'json', file], {
    cwd: ROOT,
    env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' },
    maxBuffer: 32 * 1024 * 1024,
  }).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? '' }));
  const start = out.stdout.indexOf('{');
  if (start < 0) throw new Error(`redocly printed no report:\n${out.stdout}\n${out.stderr}`);
  return JSON.parse(out.stdout.slice(start)) as never;
}

/**
 * `@apidevtools/swagger-parser` validate() and dereference(), in a child process: its parser is ESM-only,
 * which jest's CommonJS runtime cannot load. Returns what failed (nothing when both pass).
 */
export async function swaggerParserCheck(doc: OpenApiDoc): Promise<{ validated: boolean; dereferencedRefsLeft: number; error?: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cr-openapi-'));
  const file = path.join(dir, 'openapi.json');
  writeFileSync(file, JSON.stringify(doc));
  const script = `
    import SwaggerParser from '@apidevtools/swagger-parser';
    import { readFileSync } from 'node:fs';
    const read = () => JSON.parse(readFileSync(process.argv[1], 'utf8'));
    try {
      await SwaggerParser.validate(read());
      const deref = await SwaggerParser.dereference(read());
      const left = (JSON.stringify(deref.paths).match(/"\$ref"/g) ?? []).length;
      console.log(JSON.stringify({ validated: true, dereferencedRefsLeft: left }));
    } catch (err) {
      console.log(JSON.stringify({ validated: false, dereferencedRefsLeft: -1, error: String(err && err.message || err) }));
    }`;
  const out = await run(process.execPath, ['--input-type=module', '-e', script, file], { cwd: ROOT, maxBuffer: 32 * 1024 * 1024 });
  return JSON.parse(out.stdout) as never;
}

/** `$ref: '#/components/schemas/X'` → `urn:cr:schema:X`, so each component is an ajv schema of its own. */
function rewriteRefs<T>(node: T): T {
  return JSON.parse(JSON.stringify(node).replace(/"#\/components\/schemas\/([^"]+)"/g, '"urn:cr:schema:$1"')) as T;
}

/** Every inline `schema` object under `paths` (parameters, request bodies, responses, headers), with where it is. */
export function inlineSchemas(doc: OpenApiDoc): { where: string; schema: Json }[] {
  const found: { where: string; schema: Json }[] = [];
  const walk = (node: unknown, where: string) => {
    if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${where}/${i}`));
    if (node === null || typeof node !== 'object') return;
    for (const [k, v] of Object.entries(node as Json)) {
      if (k === 'schema' && v && typeof v === 'object') found.push({ where: `${where}/schema`, schema: v as Json });
      else walk(v, `${where}/${k}`);
    }
  };
  walk(doc.paths, '#/paths');
  walk((doc.components as Json).headers, '#/components/headers');
  return found;
}

/**
 * ajv in JSON Schema 2020-12 mode (strict, with formats) holding every component schema. Compiling a
 * schema that is not valid 2020-12, or that points at a component that does not exist, throws.
 */
export function ajvFor(doc: OpenApiDoc): { ajv: Ajv2020; compile(schema: Json): ValidateFunction } {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  for (const [name, schema] of Object.entries(doc.components.schemas)) ajv.addSchema(rewriteRefs(schema), `urn:cr:schema:${name}`);
  return { ajv, compile: (schema) => ajv.compile(rewriteRefs(schema)) };
}

/** A live answer, as the validator needs it. */
export interface LiveAnswer {
  method: string;
  /** The request path, without the query. */
  path: string;
  status: number;
  headers: Record<string, unknown>;
  body: unknown;
}

/** Checks live answers against the document; remembers which operations and statuses it saw. */
export class LiveAnswerChecker {
  private readonly routes: { template: string; re: RegExp }[];
  private readonly compiled = new Map<Json, ValidateFunction>();
  private readonly compile: (schema: Json) => ValidateFunction;
  /** `METHOD template` → statuses seen. */
  readonly seen = new Map<string, Set<number>>();

  constructor(readonly doc: OpenApiDoc) {
    this.compile = ajvFor(doc).compile;
    // Literal paths win over templated ones (`/v1/tasks` before `/v1/tasks/{id}`), as in routing.
    this.routes = Object.keys(doc.paths)
      .sort((a, b) => (a.match(/\{/g)?.length ?? 0) - (b.match(/\{/g)?.length ?? 0))
      .map((template) => ({
        template,
        re: new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\\?\{[^}]+\\?\}/g, '[^/]+')}$`),
      }));
  }

  /** The operations of the document, as `METHOD template`. */
  operations(): string[] {
    return Object.entries(this.doc.paths).flatMap(([template, item]) =>
      HTTP_METHODS.filter((m) => item[m] !== undefined).map((m) => `${m.toUpperCase()} ${template}`),
    );
  }

  /** Returns the problems with one answer (empty when it is as documented). */
  check(answer: LiveAnswer): string[] {
    const what = `${answer.method} ${answer.path} → ${answer.status}`;
    const route = this.routes.find((r) => r.re.test(answer.path));
    if (!route) return [`${what}: the path is not in the document`];
    const op = this.doc.paths[route.template]![answer.method.toLowerCase()] as Json | undefined;
    if (!op) return [`${what}: ${answer.method} is not documented for ${route.template}`];
    const key = `${answer.method.toUpperCase()} ${route.template}`;
    if (!this.seen.has(key)) this.seen.set(key, new Set());
    this.seen.get(key)!.add(answer.status);
    const responses = op.responses as Record<string, Json>;
    const response = responses[String(answer.status)] ?? responses[`${String(answer.status)[0]}XX`] ?? responses.default;
    if (!response) return [`${what}: status not documented (documented: ${Object.keys(responses).join(', ')})`];
    const problems: string[] = [];
    const headers = new Map(Object.entries(answer.headers).map(([k, v]) => [k.toLowerCase(), v]));
    const documentedHeaders = (response.headers ?? {}) as Record<string, Json>;
    if (!documentedHeaders['X-Request-Id']) problems.push(`${what}: X-Request-Id is not documented`);
    if (!headers.has('x-request-id')) problems.push(`${what}: no X-Request-Id header`);
    for (const [name, h] of Object.entries(documentedHeaders)) {
      const header = this.resolve(h);
      const value = headers.get(name.toLowerCase());
      if (value === undefined) {
        if (header.required === true) problems.push(`${what}: required header ${name} missing`);
        continue;
      }
      const schema = header.schema as Json;
      const typed = schema.type === 'integer' && /^-?\d+$/.test(String(value)) ? Number(value) : value;
      const v = this.validator(schema);
      if (!v(typed)) problems.push(`${what}: header ${name}=${String(value)}: ${this.errors(v)}`);
    }
    for (const [name, value] of [['retry-after', 503], ['idempotent-replayed', 200]] as const) {
      // Headers the service sends must be documented on that answer.
      const canonical = Object.keys(documentedHeaders).find((h) => h.toLowerCase() === name);
      if (headers.has(name) && !canonical) problems.push(`${what}: sends ${name} (${String(value)}) but the answer does not document it`);
    }
    const content = response.content as Record<string, Json> | undefined;
    const type = String(headers.get('content-type') ?? '').split(';')[0]!.trim();
    if (!content) {
      if (answer.body !== undefined && answer.body !== '') problems.push(`${what}: a body, but none is documented`);
      return problems;
    }
    const media = content[type];
    if (!media) return [...problems, `${what}: content-type ${type} not documented (documented: ${Object.keys(content).join(', ')})`];
    const v = this.validator(media.schema as Json);
    if (!v(answer.body)) problems.push(`${what}: body does not match the schema: ${this.errors(v)}`);
    return problems;
  }

  private resolve(node: Json): Json {
    const ref = node.$ref;
    if (typeof ref !== 'string') return node;
    const parts = ref.replace(/^#\//, '').split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    let cur: unknown = this.doc;
    for (const p of parts) cur = (cur as Json)[p];
    return cur as Json;
  }

  private validator(schema: Json): ValidateFunction {
    let v = this.compiled.get(schema);
    if (!v) {
      v = this.compile(schema);
      this.compiled.set(schema, v);
    }
    return v;
  }

  private errors(v: ValidateFunction): string {
    return (v.errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message ?? ''}`).join('; ');
  }
}
