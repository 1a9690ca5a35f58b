import type { Migration } from 'kysely';
import * as m0001 from './0001_tasks';
import * as m0002 from './0002_callback_inbox';
import * as m0003 from './0003_reconciler';
import * as m0004 from './0004_leases';
import * as m0006 from './0006_notifications';
import * as m0008 from './0008_task_story';

/**
 * Every migration, in order. A static list (not a folder scan) so the same code runs from TypeScript
 * sources under jest and from compiled JavaScript in the image. Landed migrations are never edited.
 */
export const migrations: Readonly<Record<string, Migration>> = Object.freeze({
  '0001_tasks': m0001,
  '0002_callback_inbox': m0002,
  '0003_reconciler': m0003,
  '0004_leases': m0004,
  '0006_notifications': m0006,
  '0008_task_story': m0008,
});
