import { z } from 'zod';
import { taskSchema } from '../tasks/task-schemas';

/** Shapes of the notification API and of the notification body; they also generate /openapi.json. */

const isoTime = z.iso.datetime();

export const NOTIFICATION_STATUSES = ['pending', 'delivered', 'failed', 'gone'] as const;
export const NOTIFICATION_TYPES = ['task.succeeded', 'task.failed', 'task.rejected', 'task.expired'] as const;

export const notificationSchema = z
  .object({
    id: z.uuid().meta({ description: 'Also the webhook-id header of every attempt.' }),
    type: z.enum(NOTIFICATION_TYPES),
    status: z.enum(NOTIFICATION_STATUSES),
    attempts: z.int(),
    lastStatusCode: z.int().nullable(),
    lastError: z.string().nullable(),
    nextAttemptAt: isoTime.nullable(),
    deliveredAt: isoTime.nullable(),
  })
  .meta({ id: 'Notification' });
export type ApiNotification = z.infer<typeof notificationSchema>;

export const notificationListSchema = z.object({ items: z.array(notificationSchema) }).meta({ id: 'NotificationList' });

/** The body POSTed to a task's notifyUrl (Standard Webhooks shape). */
export const notificationEventSchema = z
  .object({
    type: z.enum(NOTIFICATION_TYPES),
    timestamp: isoTime.meta({ description: 'When the task reached the status.' }),
    data: taskSchema,
  })
  .meta({ id: 'NotificationEvent' });
