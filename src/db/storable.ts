/**
 * What PostgreSQL's `text` and `jsonb` can hold. Both refuse the NUL character, and `jsonb` refuses the
 * `\u0000` escape and unpaired surrogates (which `JSON.stringify` happily emits); very deep nesting costs
 * stack in the parser, the serialiser and every reader. Client input that breaks these rules is refused at
 * the boundary (422); a partner's text is made storable instead (it must never block a settlement).
 */

/** Containers nested deeper than this are refused (client input) or flattened to text (partner input). */
export const MAX_JSON_DEPTH = 64;

// A NUL, or a surrogate half without its partner.
const UNSTORABLE_TEXT = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const UNSTORABLE_TEXT_GLOBAL = new RegExp(UNSTORABLE_TEXT.source, 'g');

/** Why a value cannot be stored, and where (a dotted path below the value; empty for the value itself). */
export interface Unstorable {
  path: string;
  reason: string;
}

/** True when Postgres can store `s` as text. */
export function isStorableText(s: string): boolean {
  return !UNSTORABLE_TEXT.test(s);
}

/**
 * The first part of a JSON value that Postgres cannot store, or undefined when all of it can be.
 * `depth` counts containers: a flat object is depth 1. Stops at the first finding, so the cost is bounded
 * by the value's size and never recurses past `maxDepth`.
 */
export function findUnstorable(value: unknown, maxDepth = MAX_JSON_DEPTH): Unstorable | undefined {
  const visit = (v: unknown, path: string[], depth: number): Unstorable | undefined => {
    if (typeof v === 'string') return isStorableText(v) ? undefined : { path: path.join('.'), reason: TEXT_REASON };
    if (v === null || typeof v !== 'object') return undefined;
    if (depth + 1 > maxDepth) return { path: path.join('.'), reason: `is nested deeper than ${maxDepth} levels` };
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const found = visit(v[i], [...path, String(i)], depth + 1);
        if (found) return found;
      }
      return undefined;
    }
    for (const key of Object.keys(v)) {
      if (!isStorableText(key)) return { path: [...path, printable(key)].join('.'), reason: 'has a key with a NUL character or an unpaired surrogate, which cannot be stored' };
      const found = visit((v as Record<string, unknown>)[key], [...path, key], depth + 1);
      if (found) return found;
    }
    return undefined;
  };
  return visit(value, [], 0);
}

const TEXT_REASON = 'contains a NUL character or an unpaired surrogate, which cannot be stored';

/** `s` with each NUL and unpaired surrogate written as a `\uXXXX` escape, so it can be stored as text. */
export function escapeUnstorableText(s: string): string {
  return s.replace(UNSTORABLE_TEXT_GLOBAL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const printable = escapeUnstorableText;

/**
 * A copy of `value` that Postgres can store: unstorable text (in values and keys) escaped, and every
 * container deeper than `maxDepth` replaced by its JSON text. Used on what partners send, which must be
 * kept and acted on whatever it contains.
 */
export function makeStorable(value: unknown, maxDepth = MAX_JSON_DEPTH): unknown {
  if (findUnstorable(value, maxDepth) === undefined) return value;
  const copy = (v: unknown, depth: number): unknown => {
    if (typeof v === 'string') return escapeUnstorableText(v);
    if (v === null || typeof v !== 'object') return v;
    if (depth + 1 > maxDepth) return escapeUnstorableText(jsonTextOf(v));
    if (Array.isArray(v)) return v.map((item) => copy(item, depth + 1));
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(v)) {
      // defineProperty, not assignment: a key "__proto__" must stay a key, not replace the prototype.
      Object.defineProperty(out, escapeUnstorableText(key), { value: copy((v as Record<string, unknown>)[key], depth + 1), enumerable: true, writable: true, configurable: true });
    }
    return out;
  };
  return copy(value, 0);
}

/** JSON text of a (possibly very deep) value; a value too deep even for the serialiser is summarised. */
function jsonTextOf(v: unknown): string {
  try {
    return JSON.stringify(v) ?? '';
  } catch {
    return '[nested too deeply to keep]';
  }
}
