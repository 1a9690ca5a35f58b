import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { TaskRow } from '../db/schema';
import type { Metrics } from '../observability/metrics';
import { isFinal, type TaskStatus } from './task';
import type { TaskRepository, TransitionResult, TransitionSpec } from './task-repository';

export interface TaskCreatedNotice {
  id: string;
  partner: string;
  requestNo: string;
}

/** A subscription to one task's changes that keeps the latest change until it is taken (no lost wake-up). */
export interface ChangeWatch {
  /** The next change (or one that came since the last call), or undefined after `timeoutMs` or on abort. */
  next(timeoutMs: number, signal?: AbortSignal): Promise<TaskRow | undefined>;
  close(): void;
}

/**
 * In-process notices about tasks: lets a waiting callback or a `waitSeconds` read wake at once when the
 * change happened in this process. Settling changes made by other processes arrive through the
 * TaskWakeListener (Postgres LISTEN), which re-reads the task once and reports it here.
 */
export class TaskNotifier {
  private readonly emitter = new EventEmitter().setMaxListeners(0);

  /** A notification was written to the outbox in this process (the delivery worker listens). */
  outboxWritten(notificationId: string): void {
    this.emitter.emit('outbox', notificationId);
  }

  onOutboxWritten(listener: (notificationId: string) => void): void {
    this.emitter.on('outbox', listener);
  }

  /** True when some request in this process waits for the task to change. */
  hasWatchers(id: string): boolean {
    return this.emitter.listenerCount(`changed:${id}`) > 0;
  }

  /** Ids of every task some request in this process waits on. */
  watchedIds(): string[] {
    return this.emitter
      .eventNames()
      .filter((e): e is string => typeof e === 'string' && e.startsWith('changed:'))
      .map((e) => e.slice('changed:'.length));
  }

  /** Subscribes before the caller reads the task, so a change between the read and the wait is not missed. */
  watch(id: string): ChangeWatch {
    const event = `changed:${id}`;
    let latest: TaskRow | undefined;
    let wake: (() => void) | undefined;
    const listener = (t: TaskRow) => {
      latest = t;
      wake?.();
    };
    this.emitter.on(event, listener);
    return {
      next: (timeoutMs, signal) =>
        new Promise((resolve) => {
          // Declared before finish: a change that came before next() finishes at once, with no timer yet.
          let timer: NodeJS.Timeout | undefined;
          const finish = () => {
            if (timer !== undefined) clearTimeout(timer);
            wake = undefined;
            signal?.removeEventListener('abort', finish);
            const t = latest;
            latest = undefined;
            resolve(t);
          };
          if (latest !== undefined || signal?.aborted) return finish();
          timer = setTimeout(finish, Math.max(1, Math.ceil(timeoutMs)));
          wake = finish;
          signal?.addEventListener('abort', finish, { once: true });
        }),
      close: () => {
        this.emitter.off(event, listener);
      },
    };
  }

  created(notice: TaskCreatedNotice): void {
    this.emitter.emit(`created:${notice.partner}\u0000${notice.requestNo}`, notice);
  }

  changed(task: TaskRow): void {
    this.emitter.emit(`changed:${task.id}`, task);
  }

  /** Resolves with the created task's id, or undefined after `timeoutMs` or when `signal` aborts. */
  waitForCreated(partner: string, requestNo: string, timeoutMs: number, signal?: AbortSignal): Promise<string | undefined> {
    return this.once(`created:${partner}\u0000${requestNo}`, timeoutMs, signal, (n: TaskCreatedNotice) => n.id);
  }

  /** Resolves with the task once it changes, or undefined after `timeoutMs` or when `signal` aborts. */
  waitForChange(id: string, timeoutMs: number, signal?: AbortSignal): Promise<TaskRow | undefined> {
    return this.once(`changed:${id}`, timeoutMs, signal, (t: TaskRow) => t);
  }

  /**
   * A plain timer, held until the wait ends. (An AbortSignal.timeout inside AbortSignal.any is only weakly
   * held on Node 20 and never fires once collected: waits hung forever that way.)
   */
  private once<A, R>(event: string, timeoutMs: number, signal: AbortSignal | undefined, pick: (a: A) => R): Promise<R | undefined> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve(undefined);
      const finish = (value: R | undefined) => {
        clearTimeout(timer);
        this.emitter.off(event, onEvent);
        signal?.removeEventListener('abort', onAbort);
        resolve(value);
      };
      const onEvent = (a: A) => finish(pick(a));
      const onAbort = () => finish(undefined);
      const timer = setTimeout(onAbort, Math.max(1, Math.ceil(timeoutMs)));
      this.emitter.once(event, onEvent);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/**
 * The one door for status changes: runs the repository's conditional statement, then counts it and
 * tells in-process waiters. Routes, the dispatcher, callbacks and the reconciler all come through here.
 */
export class TaskTransitions {
  constructor(
    private readonly repo: TaskRepository,
    private readonly metrics: Metrics,
    private readonly notifier: TaskNotifier,
    private readonly logger: Logger,
    /** Group commit of moves (transitionMany); without it, applyBatched is apply. */
    private readonly batch?: (spec: TransitionSpec) => Promise<TransitionResult>,
    /** A task settled (final, or expired) and the move has committed: wake waiters on other replicas. */
    private readonly onSettled?: (taskId: string) => void,
  ) {}

  /**
   * Like apply, but the move may share one statement (and one commit) with concurrent moves of other tasks:
   * for high-rate producers such as the dispatcher recording outcomes. Same rules, same result.
   */
  async applyBatched(partner: string, spec: TransitionSpec): Promise<TransitionResult> {
    if (!this.batch) return this.apply(partner, spec);
    return this.record(partner, spec, await this.batch(spec));
  }

  async apply(partner: string, spec: TransitionSpec): Promise<TransitionResult> {
    return this.record(partner, spec, await this.repo.transition(spec));
  }

  /**
   * Counts a move made by some statement and tells in-process waiters. For statements that move tasks as
   * part of other work (storing and applying a callback at once); apply() calls it for its own moves.
   */
  record(partner: string, spec: TransitionSpec, result: TransitionResult): TransitionResult {
    if (result.outcome === 'applied' && result.task) {
      const from = result.previousStatus as TaskStatus;
      if (from !== spec.to) {
        this.metrics.taskTransitions.inc({ partner, from, to: spec.to, source: spec.source });
        if (isFinal(spec.to) || spec.to === 'expired') {
          this.logger.debug({ taskId: result.task.id, from, to: spec.to, source: spec.source }, 'task settled');
          this.onSettled?.(result.task.id);
        }
      }
      this.notifier.changed(result.task);
      if (result.notificationId) this.notifier.outboxWritten(result.notificationId);
    } else if (result.outcome === 'conflict') {
      this.metrics.settlementConflicts.inc({ partner });
      this.logger.warn({ taskId: result.task?.id ?? spec.taskId, current: result.previousStatus, reported: spec.reported, source: spec.source }, 'report contradicts a final status; recorded, not applied');
    }
    return result;
  }
}
