import { readFileSync } from 'node:fs';
import { z } from 'zod';

/**
 * The partners file: which external partners tasks may be sent to, and how to talk to each.
 * Values written as `env:NAME` are read from the environment so secrets stay out of the file.
 */

const ENV_REF = /^env:([A-Za-z_][A-Za-z0-9_]*)$/;

const jsonPointer = z
  .string()
  .refine((p) => p === '' || p.startsWith('/'), 'must be a JSON Pointer (RFC 6901) such as "/data/id"');

const partnerSchema = z
  .object({
    id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/, 'must be 1-64 chars of a-z, 0-9, "_" or "-"'),
    baseUrl: z.url({ protocol: /^https?$/ }),
    dispatch: z
      .object({
        path: z.string().startsWith('/').default('/requests'),
        timeoutMs: z.number().int().min(10).max(120_000).default(5000),
        maxAttempts: z.number().int().min(1).max(100).default(8),
      })
      .prefault({}),
    status: z
      .object({
        path: z.string().startsWith('/').includes('{requestNo}').default('/requests/{requestNo}'),
        timeoutMs: z.number().int().min(10).max(120_000).default(3000),
      })
      .prefault({}),
    callback: z
      .object({
        /** One secret, or several during a rotation; each must be a Standard Webhooks `whsec_` secret. */
        secret: z.union([z.string(), z.array(z.string()).min(1)]).optional(),
        verify: z.enum(['signature', 'poll']).default('signature'),
      })
      .prefault({}),
    reconcile: z
      .object({
        scheduleSeconds: z.array(z.number().positive().max(86_400 * 7)).min(1).default([30, 60, 300, 900, 3600]),
        maxAgeSeconds: z.number().int().positive().default(86_400),
      })
      .prefault({}),
    rateLimit: z.object({ perSecond: z.number().int().positive().max(100_000) }).optional(),
    headers: z.record(z.string(), z.string()).default({}),
    mapping: z
      .object({
        requestNo: jsonPointer.default('/requestNo'),
        status: jsonPointer.default('/status'),
        result: jsonPointer.default('/result'),
        error: jsonPointer.default('/error'),
        statusValues: z.record(z.string(), z.enum(['processing', 'succeeded', 'failed'])).default({}),
      })
      .prefault({}),
  })
  .strict()
  .superRefine((p, ctx) => {
    const secrets = p.callback.secret === undefined ? [] : [p.callback.secret].flat();
    if (p.callback.verify === 'signature' && secrets.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['callback', 'secret'], message: 'required when verify is "signature"' });
    }
    secrets.forEach((s, i) => {
      if (!s.startsWith('whsec_')) {
        ctx.addIssue({ code: 'custom', path: ['callback', 'secret', ...(Array.isArray(p.callback.secret) ? [i] : [])], message: 'must start with "whsec_"' });
      }
    });
  });

const partnersFileSchema = z
  .object({ partners: z.array(partnerSchema).min(1) })
  .strict()
  .superRefine((f, ctx) => {
    const seen = new Set<string>();
    f.partners.forEach((p, i) => {
      if (seen.has(p.id)) ctx.addIssue({ code: 'custom', path: ['partners', i, 'id'], message: `duplicate partner id "${p.id}"` });
      seen.add(p.id);
    });
  });

export type PartnerConfig = Readonly<
  Omit<z.infer<typeof partnerSchema>, 'callback'> & {
    callback: { secrets: readonly string[]; verify: 'signature' | 'poll' };
  }
>;

/** Raised for any problem with the partners file; the message names the file and the field. */
export class PartnersFileError extends Error {
  override name = 'PartnersFileError';
}

/** Replaces every `env:NAME` string (at any depth) with the variable's value; a missing variable is an error naming the field. */
function resolveEnvRefs(value: unknown, env: NodeJS.ProcessEnv, path: string): unknown {
  if (typeof value === 'string') {
    const m = ENV_REF.exec(value);
    if (!m) return value;
    const name = m[1]!;
    const resolved = env[name];
    if (resolved === undefined || resolved === '') {
      throw new PartnersFileError(`${path}: environment variable ${name} is not set`);
    }
    return resolved;
  }
  if (Array.isArray(value)) return value.map((v, i) => resolveEnvRefs(v, env, `${path}[${i}]`));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolveEnvRefs(v, env, `${path}.${k}`)]));
  }
  return value;
}

/** Validates an already-parsed partners document; `source` names it in error messages. */
export function parsePartners(doc: unknown, env: NodeJS.ProcessEnv, source = 'partners file'): readonly PartnerConfig[] {
  const resolved = resolveEnvRefs(doc, env, 'partners file');
  const parsed = partnersFileSchema.safeParse(resolved);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`);
    throw new PartnersFileError(`${source} is invalid:\n  ${lines.join('\n  ')}`);
  }
  return Object.freeze(
    parsed.data.partners.map((p) =>
      Object.freeze({
        ...p,
        baseUrl: p.baseUrl.replace(/\/+$/, ''),
        callback: { verify: p.callback.verify, secrets: p.callback.secret === undefined ? [] : [p.callback.secret].flat() },
      }),
    ),
  );
}

/** Reads and validates the partners file at `file`. */
export function loadPartnersFile(file: string, env: NodeJS.ProcessEnv): readonly PartnerConfig[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PartnersFileError(`PARTNERS_FILE ${file} cannot be read: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new PartnersFileError(`PARTNERS_FILE ${file} is not valid JSON: ${(err as Error).message}`);
  }
  return parsePartners(doc, env, `PARTNERS_FILE ${file}`);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, seg) => (typeof seg === 'number' ? `${acc}[${seg}]` : acc ? `${acc}.${String(seg)}` : String(seg)), '') || '(root)';
}
