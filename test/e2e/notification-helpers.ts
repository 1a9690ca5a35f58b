import { createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AxiosInstance } from 'axios';
import type { ApiNotification } from '../../src/notifications/notification-schemas';
import { eventually } from '../support/service';
import { readBody } from './helpers';

/** One request a test receiver saw. */
export interface Arrival {
  at: number;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** What the receiver answers to the n-th (1-based) request on a path. */
export type Script = (n: number, arrival: Arrival) => { status: number; headers?: Record<string, string>; delayMs?: number; until?: Promise<void> };

/**
 * A client's notification receiver on 127.0.0.1 (the only address tests send notifications to). Each
 * path can be scripted; by default it answers 204.
 */
export interface TestReceiver {
  url: string;
  port: number;
  arrivals: Arrival[];
  on(path: string, script: Script): void;
  byPath(path: string): Arrival[];
  close(): Promise<void>;
}

export async function startReceiver(port = 0): Promise<TestReceiver> {
  const arrivals: Arrival[] = [];
  const scripts = new Map<string, Script>();
  const server = http.createServer((req, res) => {
    void readBody(req).then(async (body) => {
      const path = (req.url ?? '/').split('?')[0]!;
      const arrival: Arrival = { at: Date.now(), path, headers: req.headers, body };
      arrivals.push(arrival);
      const n = arrivals.filter((a) => a.path === path).length;
      const answer = scripts.get(path)?.(n, arrival) ?? { status: 204 };
      if (answer.delayMs) await new Promise((r) => setTimeout(r, answer.delayMs).unref());
      if (answer.until) await answer.until;
      if (res.destroyed) return;
      res.writeHead(answer.status, answer.headers ?? {});
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    arrivals,
    on: (path, script) => scripts.set(path, script),
    byPath: (path) => arrivals.filter((a) => a.path === path),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Standard Webhooks verification written out from the specification, independent of the
 * `standardwebhooks` package and of the service's code: v1 = base64(HMAC-SHA256(key, "id.timestamp.body")).
 */
export function verifyBySpec(secret: string, headers: http.IncomingHttpHeaders, body: string): boolean {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const id = String(headers['webhook-id']);
  const ts = String(headers['webhook-timestamp']);
  const expected = createHmac('sha256', key).update(`${id}.${ts}.${body}`).digest();
  return String(headers['webhook-signature'])
    .split(' ')
    .some((sig) => {
      const [version, value] = sig.split(',');
      const got = Buffer.from(value ?? '', 'base64');
      return version === 'v1' && got.length === expected.length && timingSafeEqual(got, expected);
    });
}

export async function listNotifications(api: AxiosInstance, taskId: string): Promise<ApiNotification[]> {
  const res = await api.get(`/v1/tasks/${taskId}/notifications`);
  if (res.status !== 200) throw new Error(`notifications of ${taskId}: ${res.status} ${JSON.stringify(res.data)}`);
  return (res.data as { items: ApiNotification[] }).items;
}

/** Waits until the task's notifications satisfy `ok` and returns them. */
export function notificationsWhen(api: AxiosInstance, taskId: string, ok: (items: ApiNotification[]) => boolean, what: string, timeoutMs = 15_000): Promise<ApiNotification[]> {
  return eventually(async () => {
    const items = await listNotifications(api, taskId);
    return ok(items) ? items : undefined;
  }, what, timeoutMs);
}

/** p-th percentile (0-100) of a list of numbers, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
