import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler, Response } from 'express';
import type { ApiKey } from '../config/config';
import { HttpProblem } from './problem';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Who acts when no keys are configured (loopback only). */
export const OPEN_ACCESS_LABEL = 'local';

/** The label of the key that authenticated this request (set by requireApiKey). */
export function keyLabel(res: Response): string {
  return (res.locals.apiKeyLabel as string | undefined) ?? OPEN_ACCESS_LABEL;
}

/**
 * Bearer-key check for the client API. Keys are compared as SHA-256 digests with timingSafeEqual, so
 * neither a key's content nor its length leaks through timing. No keys configured means open (the config
 * allows that only on a loopback host).
 */
export function requireApiKey(keys: readonly ApiKey[]): RequestHandler {
  const digests = keys.map((k) => digest(k.key));
  return (req, res, next) => {
    if (digests.length === 0) return next();
    const header = req.get('authorization') ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) {
      return next(new HttpProblem(401, 'missing "Authorization: Bearer <key>" header', undefined, { 'WWW-Authenticate': 'Bearer' }));
    }
    const given = digest(match[1]!);
    // Compare against every key (no early exit), so timing does not tell which key nearly matched.
    let matched = -1;
    digests.forEach((d, i) => {
      if (timingSafeEqual(given, d)) matched = i;
    });
    if (matched >= 0) res.locals.apiKeyLabel = keys[matched]!.label;
    return matched >= 0 ? next() : next(new HttpProblem(401, 'the API key is not valid', undefined, { 'WWW-Authenticate': 'Bearer error="invalid_token"' }));
  };
}
