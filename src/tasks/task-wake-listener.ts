import { Client } from 'pg';
import type { Logger } from 'pino';

/** The Postgres channel the transition statement notifies with a task id when the task settles. */
export const TASK_SETTLED_CHANNEL = 'cr_task_settled';
/** Wait before reconnecting a lost LISTEN connection, doubling to the cap. */
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;

export interface TaskWakeListenerOptions {
  url: string;
  logger: Logger;
  /** A task settled (on any replica, this one included). */
  onSettled: (taskId: string) => void;
  /** The connection was (re)established after a loss: notifications may have been missed meanwhile. */
  onResync: () => void;
  connectTimeoutMs: number;
}

/**
 * One LISTEN connection per process, outside the pool, so `waitSeconds` reads wake within milliseconds
 * of a task settling on any replica without each waiting request polling the database. NOTIFY is issued
 * only by settling transitions (in the same statement), because NOTIFY serialises committing
 * transactions that use it. A lost connection is re-established with backoff; on reconnect every local
 * waiter is told to look again. `isLive` says whether wake-ups can be relied on right now.
 */
export class TaskWakeListener {
  private client: Client | undefined;
  private live = false;
  private stopped = false;
  private everConnected = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private backoffMs = RECONNECT_MIN_MS;

  constructor(private readonly opts: TaskWakeListenerOptions) {}

  get isLive(): boolean {
    return this.live;
  }

  /** Connects and listens; resolves once listening, or after a failed first try (it keeps retrying). */
  async start(): Promise<void> {
    this.stopped = false;
    await this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.live = false;
    const c = this.client;
    this.client = undefined;
    await c?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new Client({ connectionString: this.opts.url, connectionTimeoutMillis: this.opts.connectTimeoutMs, application_name: 'callback-reconciler-listen' });
    const lost = (err?: Error) => {
      if (this.client !== client) return;
      this.client = undefined;
      this.live = false;
      client.end().catch(() => undefined);
      if (this.stopped) return;
      this.opts.logger.warn({ err }, 'task wake connection lost; reconnecting');
      this.scheduleReconnect();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    client.on('notification', (msg) => {
      if (msg.channel === TASK_SETTLED_CHANNEL && msg.payload) this.opts.onSettled(msg.payload);
    });
    this.client = client;
    try {
      await client.connect();
      await client.query(`listen ${TASK_SETTLED_CHANNEL}`);
      if (this.stopped || this.client !== client) {
        await client.end().catch(() => undefined);
        return;
      }
      this.live = true;
      this.backoffMs = RECONNECT_MIN_MS;
      if (this.everConnected) this.opts.onResync();
      this.everConnected = true;
    } catch (err) {
      lost(err as Error);
    }
  }

  private scheduleReconnect(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.connect(), this.backoffMs);
    this.retryTimer.unref();
    this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
  }
}
