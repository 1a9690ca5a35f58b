import { HttpProblem } from '../http/problem';
import type { StoryCursor } from './story-repository';

/** Opaque to clients: base64url of `[at, source, id]`. */
export function encodeStoryCursor(c: StoryCursor): string {
  return Buffer.from(JSON.stringify([c.at.toISOString(), c.source, c.id])).toString('base64url');
}

/** Reads a cursor this service issued; anything else is a 422 naming the `cursor` field. */
export function decodeStoryCursor(cursor: string): StoryCursor {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(parsed) && parsed.length === 3) {
      const [at, source, id] = parsed as [unknown, unknown, unknown];
      const date = new Date(typeof at === 'string' ? at : NaN);
      if (!Number.isNaN(date.getTime()) && (source === 0 || source === 1) && Number.isSafeInteger(id) && (id as number) > 0 && (id as number) < 2 ** 53) {
        return { at: date, source, id: id as number };
      }
    }
  } catch {
    // fall through to the 422 below
  }
  throw new HttpProblem(422, 'the cursor is not one this service issued', [{ field: 'cursor', message: 'is invalid' }]);
}
