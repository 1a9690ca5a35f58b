import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { HttpProblem } from './problem';

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * Bearer-key check for the client API. Keys are compared as SHA-256 digests with timingSafeEqual, so
 * neither a key's content nor its length leaks through timing. No keys configured means open (the config
 * allows that only on a loopback host).
 */
export function requireApiKey(keys: readonly string[]): RequestHandler {
  const digests = keys.map(digest);
  return (req, _res, next) => {
    if (digests.length === 0) return next();
    const header = req.get('authorization') ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) {
      return next(new HttpProblem(401, 'missing "Authorization: Bearer <key>" header', undefined, { 'WWW-Authenticate': 'Bearer' }));
    }
    const given = digest(match[1]!);
    // Compare against every key (no early exit), so timing does not tell which key nearly matched.
    let ok = false;
    for (const d of digests) ok = timingSafeEqual(given, d) || ok;
    return ok ? next() : next(new HttpProblem(401, 'the API key is not valid', undefined, { 'WWW-Authenticate': 'Bearer error="invalid_token"' }));
  };
}
