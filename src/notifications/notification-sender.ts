import http from 'node:http';
import https from 'node:https';
import { Webhook } from 'standardwebhooks';
import type { NotificationRow, TaskRow } from '../db/schema';
import { toApiTask } from '../tasks/task-service';
import type { AddressGuard } from './address-guard';

/** Bytes of a receiver's answer we read before hanging up (we only need its status). */
const MAX_ANSWER_BYTES = 64 * 1024;

/** What one attempt came to. `statusCode` is undefined when no answer came (timeout, connection error, refused address). */
export interface AttemptResult {
  statusCode?: number;
  retryAfter?: string;
  error?: string;
  durationMs: number;
}

/** The notification body: Standard Webhooks' `{type, timestamp, data}`; the same bytes on every attempt. */
export function notificationBody(n: Pick<NotificationRow, 'type' | 'occurred_at' | 'task_snapshot'>): string {
  return JSON.stringify({
    type: n.type,
    timestamp: new Date(n.occurred_at).toISOString(),
    data: toApiTask(n.task_snapshot as TaskRow),
  });
}

/**
 * Sends one signed notification attempt. Node's http client follows no redirects; the timeout covers DNS,
 * connect and the answer's headers (an AbortController, not a socket timeout); every connection goes
 * through the AddressGuard unless its host is allow-listed.
 */
export class NotificationSender {
  private readonly webhook: Webhook;
  private readonly agents: ReturnType<AddressGuard['agents']>;

  constructor(
    secret: string,
    private readonly guard: AddressGuard,
    private readonly timeoutMs: number,
    maxSocketsPerHost: number,
  ) {
    this.webhook = new Webhook(secret);
    this.agents = guard.agents(maxSocketsPerHost);
  }

  /** Headers of one attempt: the id is the notification's, the timestamp and signature are this attempt's. */
  sign(id: string, body: string, at: Date): Record<string, string> {
    return {
      'content-type': 'application/json',
      'user-agent': 'callback-reconciler-notifications/1',
      'webhook-id': id,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': this.webhook.sign(id, at, body),
    };
  }

  async send(n: NotificationRow): Promise<AttemptResult> {
    const started = performance.now();
    const done = (r: Omit<AttemptResult, 'durationMs'>): AttemptResult => ({ ...r, durationMs: performance.now() - started });
    let url: URL;
    try {
      url = new URL(n.url);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') return done({ error: 'unsupported protocol' });
      this.guard.assertLiteralAllowed(url);
    } catch (err) {
      return done({ error: describe(err) });
    }
    const body = notificationBody(n);
    const headers = { ...this.sign(n.id, body, new Date()), 'content-length': String(Buffer.byteLength(body)) };
    const pool = this.guard.isAllowListed(url) ? this.agents.allowed : this.agents.guarded;
    const isHttps = url.protocol === 'https:';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.timeoutMs);
    try {
      return await new Promise<AttemptResult>((resolve) => {
        const req = (isHttps ? https : http).request(url, { method: 'POST', headers, agent: isHttps ? pool.https : pool.http, signal: abort.signal }, (res) => {
          const retryAfter = res.headers['retry-after'];
          resolve(done({ statusCode: res.statusCode ?? 0, ...(typeof retryAfter === 'string' ? { retryAfter } : {}) }));
          // Drain a small answer so the connection can be reused; hang up on a big one.
          let seen = 0;
          const drainLimit = setTimeout(() => res.destroy(), this.timeoutMs);
          res.on('close', () => clearTimeout(drainLimit));
          res.on('data', (c: Buffer) => {
            seen += c.length;
            if (seen > MAX_ANSWER_BYTES) res.destroy();
          });
          res.on('error', () => undefined);
        });
        req.on('error', (err) => resolve(done({ error: abort.signal.aborted ? `timeout after ${this.timeoutMs} ms` : describe(err) })));
        req.end(body);
      });
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    for (const group of [this.agents.guarded, this.agents.allowed]) {
      group.http.destroy();
      group.https.destroy();
    }
  }
}

/** A short, storable description of a failed attempt (never a stack). */
function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const text = e?.name === 'AddressRefusedError' ? `address refused: ${e.message}` : `${e?.code ?? e?.name ?? 'error'}: ${e?.message ?? String(err)}`;
  return text.replace(/[\u0000-\u001f]/g, ' ').slice(0, 500);
}
