import pino, { type Logger } from 'pino';

/** Structured JSON logs; secrets in headers never reach them. */
export function createLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({
    level,
    base: { service: 'callback-reconciler', ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['req.headers.authorization', 'req.headers["webhook-signature"]', 'headers.Authorization'], censor: '[redacted]' },
  });
}

export type { Logger };
