import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { buildApp } from './app';
import { HttpDrain } from './http/drain';
import { Lifecycle } from './http/lifecycle';
import { BackgroundLoop } from './background-loop';
import { callbackRoutes } from './callbacks/callback-routes';
import { CallbackService } from './callbacks/callback-service';
import { InboxRepository, type StoreAndApply, type StoreAndApplyResult } from './callbacks/inbox-repository';
import { systemClock, type Clock } from './clock';
import type { Config } from './config/config';
import type { PartnerConfig } from './config/partners';
import { openDatabase, type DatabaseHandle } from './db/database';
import { migrateToLatest } from './db/migrator';
import { waitForDatabase } from './db/wait-for-database';
import { Dispatcher } from './dispatch/dispatcher';
import { createLogger } from './observability/logger';
import { Metrics } from './observability/metrics';
import { PartnerRegistry } from './partners/partner-registry';
import { TaskRepository, type InsertResult, type ConfirmLease, type LeaseConfirmation, type NewTask, type TransitionResult, type TransitionSpec } from './tasks/task-repository';
import { Batcher, isDataError } from './db/batcher';
import { LongPollLimit } from './tasks/task-routes';
import { TaskService } from './tasks/task-service';
import { TaskNotifier, TaskTransitions } from './tasks/task-transitions';
import { SettledWakeSender, TaskWakeListener } from './tasks/task-wake-listener';
import { AddressGuard, type Resolver } from './notifications/address-guard';
import { DeliveryWorker, LEASE_MARGIN_MS as NOTIFY_LEASE_MARGIN_MS } from './notifications/delivery-worker';
import { NotificationRepository, type AttemptRecord } from './notifications/notification-repository';
import { notificationRoutes } from './notifications/notification-routes';
import { NotificationSender } from './notifications/notification-sender';
import { NotificationService } from './notifications/notification-service';
import { Housekeeping } from './reconciler/housekeeping';
import { Reconciler } from './reconciler/reconciler';
import { TaskChecker } from './reconciler/task-checker';
import { PartnerCallLog } from './story/partner-call-log';
import { StoryRepository } from './story/story-repository';
import { StoryService } from './story/story-service';

/** How often the inbox safety net looks for queued callbacks whose task exists by now. */
export const INBOX_SAFETY_NET_INTERVAL_MS = 1000;
/** How often the delivery worker looks for notifications written by other replicas or due for a retry. */
export const NOTIFY_POLL_MS = 1000;

/** Part of SHUTDOWN_TIMEOUT_MS kept for handing claims back and closing the pool (at most a fifth of it). */
const STOP_RESERVE_MS = 1000;

/** A check is at most a status query and then a dispatch, each bounded by its timeout. */
function worstCheckMs(partner: PartnerConfig | undefined): number {
  return partner ? partner.status.timeoutMs + partner.dispatch.timeoutMs : 0;
}

/**
 * The batchers (creates, callbacks, moves, lease fences, notification outcomes) share the pool with reads
 * and the reconciler: each may hold at most a quarter of it (at least one connection), so a burst of
 * writes never starves the rest. Two batches of up to 64 in flight are plenty: a batch costs about one
 * round trip whatever its size.
 */
function batchOptions(config: Config) {
  return {
    maxBatch: config.batch.maxSize,
    windowMs: config.batch.windowMs,
    maxWaitMs: config.batch.maxWaitMs,
    maxQueued: config.batch.maxQueued,
    maxConcurrent: Math.max(1, Math.floor(config.dbPoolSize / 4)),
  };
}

export interface RuntimeOptions {
  config: Config;
  /** Overrides config.databaseUrl (main passes the embedded database's URL). */
  databaseUrl?: string;
  clock?: Clock;
  logger?: Logger;
  /** Tests may leave the port to the OS with 0 (the default is config.port). */
  port?: number;
  /** False: do not start the reconciler, housekeeping and safety net (tests drive them with runOnce). */
  background?: boolean;
  /**
   * False: notifications are written to the outbox but never sent (tests whose tasks carry arbitrary
   * notifyUrls, so no test traffic can leave for a real address). Default true.
   */
  deliverNotifications?: boolean;
  /** How notifyUrl host names are resolved for the address checks (tests inject one; default: the system's). */
  notifyResolver?: Resolver;
  /** Aborts the start-up wait for the database (a signal arrived meanwhile). */
  signal?: AbortSignal;
  /** Called once the server listens, before the database is waited for (main logs it; tests probe /readyz). */
  onListening?: (url: string) => void;
}

/** Everything one running service holds; tests reach into it, main only starts and stops it. */
export interface Runtime {
  readonly config: Config;
  readonly url: string;
  readonly app: Express;
  readonly server: Server;
  readonly database: DatabaseHandle;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly instanceId: string;
  readonly partners: PartnerRegistry;
  readonly repo: TaskRepository;
  readonly notifier: TaskNotifier;
  readonly transitions: TaskTransitions;
  readonly dispatcher: Dispatcher;
  readonly tasks: TaskService;
  readonly callbacks: CallbackService;
  /** Applies queued callbacks whose task exists by now (the safety net for creation racing a callback). */
  readonly inboxSafetyNet: BackgroundLoop;
  readonly reconciler: Reconciler;
  readonly housekeeping: Housekeeping;
  readonly notifications: NotificationService;
  readonly notificationRepo: NotificationRepository;
  /** Undefined when NOTIFY_SECRET is unset. */
  readonly deliveryWorker: DeliveryWorker | undefined;
  /** Undefined when LONG_POLL_NOTIFY is false. */
  readonly wakeListener: TaskWakeListener | undefined;
  /** Dispatch attempts and status queries, recorded for the task story (buffered; `flush()` in tests). */
  readonly callLog: PartnerCallLog;
  readonly story: StoryService;
  /** The `waitSeconds` reads held open now, and their cap. */
  readonly longPolls: LongPollLimit;
  /**
   * Drains: /readyz answers 503 for `readinessDelayMs` (default SHUTDOWN_READINESS_DELAY_MS) while requests
   * are still served, then stop accepting, let requests in flight finish (up to the shutdown timeout),
   * finish or hand back dispatches, release claims, close the pool. Safe to call twice.
   */
  stop(opts?: { readinessDelayMs?: number }): Promise<void>;
}

/** Composition root: builds every component from one Config, listens (not ready yet), waits for the database, migrates, starts background loops. */
export async function startRuntime(opts: RuntimeOptions): Promise<Runtime> {
  const { config } = opts;
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? createLogger(config.logLevel);
  const databaseUrl = opts.databaseUrl ?? config.databaseUrl;
  if (!databaseUrl) throw new Error('no database URL: set DATABASE_URL or let main start the embedded database');
  const instanceId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;

  const database = openDatabase({
    url: databaseUrl,
    poolSize: config.dbPoolSize,
    connectTimeoutMs: config.dbConnectTimeoutMs,
    statementTimeoutMs: config.dbStatementTimeoutMs,
  });
  const metrics = new Metrics({ defaultMetrics: true });
  metrics.observePool(database.pool);
  const partners = new PartnerRegistry(config.partners, clock, { pool: database.pool, metrics, logger }, config.partnerIoThreads);
  const finalEffects = { outbox: config.notifySecret !== undefined };
  const repo = new TaskRepository(database.db, database.pool, finalEffects);
  const notifier = new TaskNotifier();
  const notificationRepo = new NotificationRepository(database.db, database.pool);
  const guard = config.notifySecret === undefined ? undefined : new AddressGuard({ allowedHosts: config.notifyAllowedHosts, ...(opts.notifyResolver ? { resolver: opts.notifyResolver } : {}) });
  const sender = config.notifySecret === undefined || !guard ? undefined : new NotificationSender(config.notifySecret, guard, config.notifyTimeoutMs, config.notifyHostConcurrency);
  // Attempt outcomes share statements (group commit). Bounded by the attempts in flight, so it never
  // refuses; an outcome waits at most the claim's margin, after which the claim would lapse anyway.
  const notificationRecords = new Batcher<AttemptRecord, boolean>({
    name: 'notification',
    run: (records) => notificationRepo.recordAttempts(records),
    isolate: isDataError,
    ...batchOptions(config),
    maxQueued: config.notifyConcurrency + 1,
    maxWaitMs: NOTIFY_LEASE_MARGIN_MS,
  });
  metrics.observeQueue('notification', () => notificationRecords.depth);
  // NOTIFY_CONCURRENCY=0: an API-only replica; its notifications are delivered by replicas that run a worker.
  const deliveryWorker = sender && opts.deliverNotifications !== false && config.notifyConcurrency > 0
    ? new DeliveryWorker(
        { repo: notificationRepo, record: (r) => notificationRecords.submit(r), sender, metrics, logger, instanceId },
        {
          concurrency: config.notifyConcurrency,
          hostConcurrency: config.notifyHostConcurrency,
          timeoutMs: config.notifyTimeoutMs,
          scheduleSeconds: config.notifyScheduleSeconds,
          pollMs: NOTIFY_POLL_MS,
        },
      )
    : undefined;
  if (deliveryWorker) notifier.onOutboxWritten(() => deliveryWorker.wake());
  const wakeListener = config.longPollNotify ? new TaskWakeListener({ url: databaseUrl, logger, connectTimeoutMs: config.dbConnectTimeoutMs, ...settledWake(repo, notifier, logger) }) : undefined;
  const transitionBatcher = new Batcher<TransitionSpec, TransitionResult>({
    name: 'transition',
    run: (specs) => repo.transitionMany(specs),
    isolate: isDataError,
    // Moves of one task go to successive statements, in order (transitionMany would split them anyway).
    keyOf: (spec) => spec.taskId,
    ...batchOptions(config),
  });
  metrics.observeQueue('transition', () => transitionBatcher.depth);
  const settledWakes = config.longPollNotify ? new SettledWakeSender(database.pool, logger) : undefined;
  const transitions = new TaskTransitions(repo, metrics, notifier, logger, (spec) => transitionBatcher.submit(spec), settledWakes && ((id) => settledWakes.settled(id)));
  const callLog = new PartnerCallLog(database.db, logger);
  // The fence before every partner call (each dispatch, each status query) shares statements: under load
  // hundreds a second, each one round trip of its own otherwise. A plain read, so items never conflict
  // (one id twice in a batch is answered twice). Refused (saturated, or stopped at shutdown), a fence is
  // unconfirmed and nothing is sent: the dispatcher hands the claim back, a check's claim lapses.
  const leaseBatcher = new Batcher<LeaseConfirmation, boolean>({
    name: 'lease',
    run: (items) => repo.confirmLeases(items),
    isolate: isDataError,
    ...batchOptions(config),
  });
  metrics.observeQueue('lease', () => leaseBatcher.depth);
  const confirmLease: ConfirmLease = (id, owner, minLeftMs) => leaseBatcher.submit({ id, owner, minLeftMs });
  const dispatcher = new Dispatcher({
    callLog,
    partners,
    transitions,
    repo,
    metrics,
    clock,
    logger,
    publicBaseUrl: config.publicBaseUrl,
    concurrency: config.dispatchConcurrency,
    onDue: (at) => reconciler.nudgeAt(at),
    confirmLease,
  });
  // The same outbox and wake as the repo's: a callback stored and applied in one statement notifies too.
  const inbox = new InboxRepository(database.db, database.pool, finalEffects);
  const callbackBatcher = new Batcher<StoreAndApply, StoreAndApplyResult>({
    name: 'callback',
    run: (items) => inbox.storeAndApply(items),
    // A duplicate webhook-id racing in (unique violation) or a bad row fails only its own request.
    isolate: isDataError,
    // Two callbacks for one task never share a statement: each is applied after the other, as if alone.
    keyOf: (item) => `${item.row.partner}\u0000${item.row.requestNo}`,
    ...batchOptions(config),
  });
  metrics.observeQueue('callback', () => callbackBatcher.depth);
  const callbacks = new CallbackService({
    partners,
    inbox,
    storeAndApply: (item) => callbackBatcher.submit(item),
    tasks: repo,
    transitions,
    notifier,
    metrics,
    clock,
    logger,
    lookupTimeoutMs: config.callbackLookupTimeoutMs,
    // A poll hint is an on-demand check: coalesced per task, and never moving a leased task's schedule.
    requestCheck: async (taskId) => {
      const r = await repo.requestCheck(taskId, clock.now());
      if (r?.dueAt) reconciler.nudgeAt(r.dueAt);
    },
  });
  const createBatcher = new Batcher<NewTask, InsertResult>({
    name: 'create',
    run: (items) => repo.insertMany(items),
    isolate: isDataError,
    ...batchOptions(config),
  });
  metrics.observeQueue('create', () => createBatcher.depth);
  const tasks: TaskService = new TaskService({
    insertTask: (t) => createBatcher.submit(t),
    repo,
    partners,
    dispatcher,
    notifier,
    metrics,
    clock,
    logger,
    instanceId,
    applyQueuedCallbacks: (task) => callbacks.applyQueuedFor(task),
    nudgeReconciler: (at) => reconciler.nudgeAt(at),
    crossReplicaWake: () => wakeListener?.isLive ?? false,
    checkNotifyUrl: (url): Promise<void> => notifications.checkNotifyUrl(url),
  });
  const notifications = new NotificationService({ repo: notificationRepo, tasks, guard, wake: () => deliveryWorker?.wake() });
  const checker = new TaskChecker({ partners, dispatcher, transitions, repo, metrics, clock, logger, callLog, confirmLease });
  const story = new StoryService({ repo: new StoryRepository(database.db), tasks, partners, clock });
  const reconciler = new Reconciler(
    { repo, checker, metrics, clock, logger, instanceId, worstCheckMs: (id) => worstCheckMs(partners.get(id)?.config) },
    {
      cron: config.reconcileCron,
      concurrency: config.reconcileConcurrency,
      batchSize: config.reconcileBatchSize,
      leaseMs: config.reconcileLeaseMs,
      partnerIds: config.partners.map((p) => p.id),
    },
  );
  const housekeeping = new Housekeeping({ db: database.db, metrics, clock, logger, instanceId, retentionDays: config.retentionDays });
  const inboxSafetyNet = new BackgroundLoop('inbox-safety-net', INBOX_SAFETY_NET_INTERVAL_MS, () => callbacks.matchUnmatched(), logger);

  const drain = new HttpDrain();
  const lifecycle = new Lifecycle();
  const longPolls = new LongPollLimit(config.maxLongPollWaiters);
  const app = buildApp({
    lifecycle,
    publicBaseUrl: config.publicBaseUrl,
    longPolls,
    db: database.db,
    logger,
    metrics,
    partners,
    tasks,
    story,
    apiKeys: config.apiKeys,
    maxBodyBytes: config.maxBodyBytes,
    drain,
    partnerFacing: [callbackRoutes(callbacks, config.maxBodyBytes)],
    clientFacing: [notificationRoutes(notifications)],
  });

  // Listen first, then wait for the database: a live but unready process (readiness 503, API 503 +
  // Retry-After) instead of an exit, since orchestrators do not order start-up.
  let server: Server;
  try {
    server = await listen(app, config.host, opts.port ?? config.port);
  } catch (err) {
    partners.close();
    await database.close();
    throw err;
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  logger.info({ url, instanceId, partners: config.partners.map((p) => p.id) }, 'callback-reconciler listening');
  opts.onListening?.(url);
  try {
    await waitForDatabase(database.db, { timeoutMs: config.dbStartupTimeoutMs, logger, ...(opts.signal ? { signal: opts.signal } : {}) });
    // Migrations may rewrite big tables: they run on a connection of their own, without the statement timeout.
    const migration = openDatabase({ url: databaseUrl, poolSize: 1, connectTimeoutMs: config.dbConnectTimeoutMs, applicationName: 'callback-reconciler-migrate' });
    try {
      const applied = await migrateToLatest(migration.db);
      if (applied.length > 0) logger.info({ applied }, 'migrations applied');
    } finally {
      await migration.close();
    }
    // LISTEN once the database is there (the start-up wait above may take a while).
    await wakeListener?.start();
  } catch (err) {
    await wakeListener?.stop();
    sender?.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    partners.close();
    await database.close();
    throw err;
  }
  lifecycle.serving();
  logger.info('ready');
  if (opts.background !== false) {
    inboxSafetyNet.start();
    reconciler.start();
    housekeeping.start();
    deliveryWorker?.start();
  }

  let stopped: Promise<void> | undefined;
  const stop = (stopOpts: { readinessDelayMs?: number } = {}) =>
    (stopped ??= (async () => {
      // One budget for the whole drain (SHUTDOWN_TIMEOUT_MS), less a reserve for handing claims back and
      // closing the pool, so the process exits 0 in time whatever partners and clients do.
      const reserveMs = Math.min(STOP_RESERVE_MS, config.shutdownTimeoutMs / 5);
      const deadline = Date.now() + config.shutdownTimeoutMs - reserveMs;
      drain.begin();
      // Stop claiming at once: the sweep in flight hands back what it has not started (due at once for
      // another replica) and its checks in flight finish, until the deadline.
      const reconcilerStopped = reconciler.stop(deadline);
      // Still serving, but /readyz says 503: load balancers take the replica out before its listener closes.
      const readinessDelayMs = stopOpts.readinessDelayMs ?? config.shutdownReadinessDelayMs;
      if (readinessDelayMs > 0) {
        logger.info({ readinessDelayMs }, 'not ready; closing the listener after the readiness delay');
        await new Promise((resolve) => setTimeout(resolve, readinessDelayMs));
      }
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Responses during the drain carry `Connection: close` (see app.ts), so a kept-alive connection closes
      // right after its request in flight is answered and no client sends a new request on a socket we are
      // about to close. Idle ones close now; whatever is left is cut at the deadline.
      server.closeIdleConnections();
      const forced = setTimeout(() => server.closeAllConnections(), Math.max(0, deadline - Date.now()));
      await closed;
      clearTimeout(forced);
      await Promise.all([inboxSafetyNet.stop(), reconcilerStopped, housekeeping.stop(), createBatcher.drain(), callbackBatcher.drain(), wakeListener?.stop()]);
      // Dispatches in flight finish (until the deadline); queued ones are handed back, and every
      // hand-back statement is awaited before the pool closes.
      await dispatcher.drain(deadline);
      // Only checks and dispatches fence, and both are done by now (the reconciler stopped above, the
      // dispatcher just drained). One still running past the deadline is refused from here on (stopped):
      // unconfirmed, so it sends nothing. Drained before the transition batcher, so a call let through
      // by a fence still queued here can yet record its outcome (if not, the reconciler asks first).
      await leaseBatcher.drain();
      await transitionBatcher.drain();
      // After the last batched move: outbox rows it wrote are picked up now or by another replica later.
      await deliveryWorker?.stop();
      await notificationRecords.drain();
      sender?.close();
      await callLog.flush();
      // Waiters on other replicas hear about the last moves before the pool closes.
      await settledWakes?.flush();
      partners.close();
      await database.close();
      logger.info('stopped');
    })());

  return { config, url, app, server, database, metrics, logger, clock, instanceId, partners, repo, notifier, transitions, dispatcher, tasks, callbacks, inboxSafetyNet, reconciler, housekeeping, notifications, notificationRepo, deliveryWorker, wakeListener, callLog, story, longPolls, stop };
}

/**
 * What the LISTEN connection does with a settled task id: if requests here wait on it, read it once (one
 * read shared by all of them) and wake them; on reconnect, do that for every waited task.
 */
function settledWake(repo: TaskRepository, notifier: TaskNotifier, logger: Logger): { onSettled: (id: string) => void; onResync: () => void } {
  const reading = new Map<string, Promise<void>>();
  const reread = (id: string) => {
    if (!notifier.hasWatchers(id) || reading.has(id)) return;
    const p = repo
      .findById(id)
      .then((row) => {
        if (row) notifier.changed(row);
      })
      .catch((err: unknown) => logger.warn({ err, taskId: id }, 'could not read a settled task for its waiters'))
      .finally(() => reading.delete(id));
    reading.set(id, p);
  };
  return { onSettled: reread, onResync: () => notifier.watchedIds().forEach(reread) };
}

function listen(app: Express, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, (err?: Error) => (err ? reject(err) : resolve(server)));
    server.keepAliveTimeout = 65_000;
  });
}
