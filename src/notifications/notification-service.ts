import type { NotificationRow } from '../db/schema';
import { HttpProblem } from '../http/problem';
import { isUuid, type TaskService } from '../tasks/task-service';
import type { AddressGuard } from './address-guard';
import type { NotificationRepository } from './notification-repository';
import type { ApiNotification } from './notification-schemas';

export interface NotificationServiceDeps {
  repo: NotificationRepository;
  tasks: TaskService;
  /** Undefined when NOTIFY_SECRET is unset: notifications are off. */
  guard: AddressGuard | undefined;
  /** Tells the delivery worker something is due now. */
  wake: () => void;
}

/** Reading and redelivering a task's notifications, and the create-time check of a notifyUrl; no HTTP. */
export class NotificationService {
  constructor(private readonly deps: NotificationServiceDeps) {}

  /** Refuses a notifyUrl with 422 when notifications are off or its host is (or resolves to) a non-public address. */
  async checkNotifyUrl(url: string): Promise<void> {
    if (!this.deps.guard) {
      throw new HttpProblem(422, 'notifications are not enabled on this service (NOTIFY_SECRET is unset)', [{ field: 'notifyUrl', message: 'notifications are not enabled' }]);
    }
    const refusal = await this.deps.guard.refusalAtCreate(url);
    if (refusal) throw new HttpProblem(422, `notifyUrl is not allowed: ${refusal}`, [{ field: 'notifyUrl', message: refusal }]);
  }

  async list(taskId: string): Promise<NotificationRow[]> {
    await this.deps.tasks.get(taskId);
    return this.deps.repo.listForTask(taskId);
  }

  async redeliver(taskId: string, id: string): Promise<NotificationRow> {
    await this.deps.tasks.get(taskId);
    const row = isUuid(id) ? await this.deps.repo.redeliver(taskId, id) : undefined;
    if (!row) throw new HttpProblem(404, `task ${taskId} has no notification ${id}`);
    this.deps.wake();
    return row;
  }
}

const iso = (d: Date | string | null): string | null => (d === null ? null : new Date(d).toISOString());

export function toApiNotification(n: NotificationRow): ApiNotification {
  return {
    id: n.id,
    type: n.type as ApiNotification['type'],
    status: n.status,
    attempts: n.attempts,
    lastStatusCode: n.last_status_code,
    lastError: n.last_error,
    nextAttemptAt: n.status === 'pending' ? iso(n.next_attempt_at) : null,
    deliveredAt: iso(n.delivered_at),
  };
}
