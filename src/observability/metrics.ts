import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const PREFIX = 'callback_reconciler_';

/** Gauges prom-client's default metrics name with a counter's `_total` suffix; each has a twin without it. */
const DEPRECATED_DEFAULT_GAUGES = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** What the pool gauges read; the pg Pool has these, tests may pass a plain object. */
export interface PoolCounts {
  readonly totalCount: number;
  readonly idleCount: number;
  readonly waitingCount: number;
}

/** Latency buckets from 1 ms to 30 s: partner calls and waits span that range. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * Every metric of the service, on a registry of its own (so several app instances can live in one test
 * process). Names are part of the contract in SERVICE.md; no label ever carries an id.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly tasksCreated = new Counter({
    name: `${PREFIX}tasks_created_total`,
    help: 'Tasks created (idempotent replays are not counted).',
    labelNames: ['partner'] as const,
    registers: [this.registry],
  });

  readonly taskTransitions = new Counter({
    name: `${PREFIX}task_transitions_total`,
    help: 'Changes of task status, by what caused them.',
    labelNames: ['partner', 'from', 'to', 'source'] as const,
    registers: [this.registry],
  });

  readonly dispatchDuration = new Histogram({
    name: `${PREFIX}dispatch_duration_seconds`,
    help: 'Time of one dispatch request to a partner, by outcome (received, refused, transient, ambiguous).',
    labelNames: ['partner', 'outcome'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly partnerErrors = new Counter({
    name: `${PREFIX}partner_errors_total`,
    help: 'Failed partner calls by operation (dispatch, status) and class (connect, timeout, http_4xx, http_5xx, unknown).',
    labelNames: ['partner', 'operation', 'class'] as const,
    registers: [this.registry],
  });

  readonly callbacks = new Counter({
    name: `${PREFIX}callbacks_total`,
    help: 'Partner callbacks by outcome (applied, ignored, queued, duplicate, conflict, unauthorized, unreadable, poll).',
    labelNames: ['partner', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly callbackLookupWait = new Histogram({
    name: `${PREFIX}callback_lookup_wait_seconds`,
    help: 'How long a callback waited for its task to appear (the bounded re-lookup).',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly reconcilerChecks = new Counter({
    name: `${PREFIX}reconciler_checks_total`,
    help: 'Reconciler checks of open tasks, by outcome.',
    labelNames: ['partner', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly reconcilerSweepDuration = new Histogram({
    name: `${PREFIX}reconciler_sweep_duration_seconds`,
    help: 'Duration of one reconciler sweep.',
    buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  readonly tasksOpen = new Gauge({
    name: `${PREFIX}tasks_open`,
    help: 'Open tasks by partner and status (refreshed by one replica per tick).',
    labelNames: ['partner', 'status'] as const,
    registers: [this.registry],
  });

  readonly oldestOpenTaskAge = new Gauge({
    name: `${PREFIX}oldest_open_task_age_seconds`,
    help: 'Age of the oldest open task per partner.',
    labelNames: ['partner'] as const,
    registers: [this.registry],
  });

  readonly settlementConflicts = new Counter({
    name: `${PREFIX}settlement_conflicts_total`,
    help: 'Reports that contradicted a final status; recorded, never applied.',
    labelNames: ['partner'] as const,
    registers: [this.registry],
  });

  readonly tasksUnknownPartner = new Counter({
    name: `${PREFIX}tasks_unknown_partner_total`,
    help: 'Open tasks found whose partner is no longer configured; not checked again until they expire.',
    labelNames: ['partner'] as const,
    registers: [this.registry],
  });

  readonly breakerState = new Gauge({
    name: `${PREFIX}partner_breaker_open`,
    help: 'Circuit breaker per partner on this replica: 1 open or half-open, 0 closed.',
    labelNames: ['partner'] as const,
    registers: [this.registry],
  });

  readonly notifications = new Counter({
    name: `${PREFIX}notifications_total`,
    help: 'Notification attempts by outcome: delivered, retry (failed, another attempt scheduled), failed (schedule used up), gone (410).',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly notificationDelivery = new Histogram({
    name: `${PREFIX}notification_delivery_seconds`,
    help: 'Time of one notification attempt, whatever its outcome.',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly notificationsPending = new Gauge({
    name: `${PREFIX}notifications_pending`,
    help: 'Notifications not yet delivered, failed or gone (refreshed by one replica per tick; 0 on the others).',
    registers: [this.registry],
  });

  /** Every HTTP answer, by route template (never a raw path: ids would explode the series). */
  readonly httpRequests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests answered, by method, route template and status code.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [this.registry],
  });

  readonly httpRequestDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Time from receiving an HTTP request to finishing its answer, by method and route template.',
    labelNames: ['method', 'route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });

  private readonly queueSources = new Map<string, () => number>();

  /** Items waiting for a group-commit batch, per batcher (create, callback, transition, lease, notification): back-pressure shows here first. */
  readonly batchQueueDepth = new Gauge({
    name: `${PREFIX}batch_queue_depth`,
    help: 'Items waiting for a group-commit batch, by batcher; beyond BATCH_MAX_QUEUED (or BATCH_MAX_WAIT_MS) creates and callbacks get 503.',
    labelNames: ['batcher'] as const,
    registers: [this.registry],
    collect: () => {
      for (const [name, depth] of this.queueSources) this.batchQueueDepth.set({ batcher: name }, depth());
    },
  });

  /** Requests refused with 503 because a batcher or the pool was saturated. */
  readonly batchRefused = new Counter({
    name: `${PREFIX}batch_refused_total`,
    help: 'Writes refused with 503 because the group-commit queue or the connection pool was saturated, by batcher.',
    labelNames: ['batcher'] as const,
    registers: [this.registry],
  });

  /** Partner I/O threads that ended unexpectedly (PARTNER_IO_THREADS): each is replaced at once. */
  readonly partnerIoThreadExits = new Counter({
    name: `${PREFIX}partner_io_thread_exits_total`,
    help: 'Partner I/O threads that ended unexpectedly; each is replaced, and its calls in flight are recorded as unclear (ambiguous) outcomes.',
    registers: [this.registry],
  });

  /** Read at scrape time, so the hot path does not update a gauge per item. */
  observeQueue(name: string, depth: () => number): void {
    this.queueSources.set(name, depth);
  }

  /** The pool the two pool gauges read at scrape time (see observePool). */
  private pool: PoolCounts | undefined;

  readonly dbPoolConnections: Gauge<'state'> = new Gauge({
    name: `${PREFIX}db_pool_connections`,
    help: "Connections of this process's database pool, by state (idle, busy).",
    labelNames: ['state'] as const,
    registers: [this.registry],
    collect: () => {
      if (!this.pool) return;
      this.dbPoolConnections.set({ state: 'idle' }, this.pool.idleCount);
      this.dbPoolConnections.set({ state: 'busy' }, this.pool.totalCount - this.pool.idleCount);
    },
  });

  readonly dbPoolWaiting: Gauge = new Gauge({
    name: `${PREFIX}db_pool_waiting`,
    help: 'Queries of this process waiting for a free database connection; a count that keeps growing means the pool is too small or connections leak.',
    registers: [this.registry],
    collect: () => {
      if (this.pool) this.dbPoolWaiting.set(this.pool.waitingCount);
    },
  });

  /** Exposes a pool's counts on the pool gauges, read at scrape time so the hot path updates nothing. */
  observePool(pool: PoolCounts): void {
    this.pool = pool;
  }

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics) {
      // Standard names, no prefix: stock Node.js / process dashboards and alerts find them as they are.
      collectDefaultMetrics({ register: this.registry });
      // prom-client also exports these three gauges under a `_total` name, which Prometheus reserves for
      // counters (`promtool check metrics` flags them); the same values stay available without the suffix.
      for (const name of DEPRECATED_DEFAULT_GAUGES) this.registry.removeSingleMetric(name);
    }
  }
}
