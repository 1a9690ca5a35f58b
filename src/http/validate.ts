import type { RequestHandler } from 'express';
import type { z } from 'zod';
import { fieldErrors, HttpProblem } from './problem';

/** Parses `value` with `schema`, or refuses with 422 naming each bad field. */
export function parseOr422<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new HttpProblem(422, `the ${what} has invalid fields`, fieldErrors(parsed.error));
  return parsed.data;
}

/** Refuses anything but a JSON body with 415 before a byte of it is parsed. */
export const requireJsonBody: RequestHandler = (req, _res, next) => {
  if (req.is(['application/json', 'application/*+json'])) return next();
  next(new HttpProblem(415, 'the body must be JSON (Content-Type: application/json)'));
};
