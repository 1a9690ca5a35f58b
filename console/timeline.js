// One task's story as one list, oldest first, merged from the API's separate records:
// status events, partner calls (dispatch attempts and status checks), callbacks received for its
// request number, and notifications. Pure: data in, entries out (the view renders them).

/**
 * @typedef {{ at: string, kind: 'status'|'dispatch'|'check'|'callback'|'duplicate'|'conflict'|'manual'|'notification',
 *   title: string, meta: string[], tone: 'ok'|'bad'|'warn'|'info'|'plain', rank: number, body?: string, notification?: any }} Entry
 */

/** @type {Record<string, string>} */
const VERIFICATION_TEXT = {
  verified: 'signature verified',
  missing_headers: 'refused: signature headers missing',
  bad_signature: 'refused: signature does not match',
  stale_timestamp: 'refused: timestamp outside the 5-minute tolerance',
  poll_hint: 'not verified (partner verified by polling): triggered a status check',
};

/** @type {Record<string, string>} */
const CALLBACK_OUTCOME_TEXT = {
  queued: 'kept: waiting for its task',
  applied: 'applied',
  ignored: 'changed nothing',
  conflict: 'contradicted the final status: recorded as a conflict',
  unreadable: 'unreadable: stored, not applied',
  refused: 'answered 401, body not stored',
  poll: 'answered 202',
};

/** @param {string | null | undefined} s @returns {Entry['tone']} */
const tone = (s) => (s === 'succeeded' ? 'ok' : s === 'failed' || s === 'rejected' ? 'bad' : s === 'expired' ? 'warn' : 'info');

/** @param {any} e a task event @returns {Entry} */
function fromEvent(e) {
  const d = e.detail || {};
  const meta = [`source: ${e.source}`];
  if (d.type === 'conflict') {
    return { at: e.at, kind: 'conflict', rank: 3, tone: 'bad', title: `Conflict: partner reported ${d.reported}, task stays ${e.to}`, meta: [...meta, 'recorded, not applied'] };
  }
  if (e.source === 'manual') {
    const what = d.action === 'reconcile' ? 'Reconcile requested' : d.action === 'redeliver' ? 'Redelivery requested' : `${d.action || 'Action'} requested`;
    return { at: e.at, kind: 'manual', rank: 3, tone: 'plain', title: `${what} by ${d.by || 'an operator'}`, meta: [...meta, ...(d.notification ? [`notification ${d.notification}`] : [])] };
  }
  if (d.outcome) meta.push(`${d.type || 'outcome'}: ${d.outcome}`);
  if (d.httpStatus) meta.push(`HTTP ${d.httpStatus}`);
  if (d.reason) meta.push(d.reason);
  if (d.note) meta.push(d.note);
  if (e.from === null) return { at: e.at, kind: 'status', rank: 0, tone: 'plain', title: `Created as ${e.to}`, meta };
  const title = e.from === e.to ? `Stays ${e.to}` : `${e.from} → ${e.to}`;
  return { at: e.at, kind: 'status', rank: 3, tone: e.from === e.to ? 'plain' : tone(e.to), title, meta };
}

/** @param {any} c a partner call @param {number} n its number among calls of the same operation @returns {Entry} */
function fromCall(c, n) {
  const meta = [];
  if (c.httpStatus) meta.push(`HTTP ${c.httpStatus}`);
  if (c.errorClass) meta.push(`error class: ${c.errorClass}`);
  meta.push(`${c.durationMs} ms`);
  if (c.error) meta.push(c.error);
  if (c.operation === 'dispatch') {
    const said = c.reportedStatus && c.reportedStatus !== 'processing' ? `, partner says ${c.reportedStatus}` : '';
    const t = c.outcome === 'received' ? 'ok' : c.outcome === 'refused' ? 'bad' : 'warn';
    return { at: c.at, kind: 'dispatch', rank: 1, tone: t, title: `Dispatch attempt ${n}: ${c.outcome}${said}`, meta };
  }
  const title =
    c.outcome === 'found' ? `Status check: partner says ${c.reportedStatus}` : c.outcome === 'not_found' ? 'Status check: partner does not know the request' : 'Status check failed';
  return { at: c.at, kind: 'check', rank: 1, tone: c.outcome === 'error' ? 'warn' : c.outcome === 'found' ? tone(c.reportedStatus) : 'plain', title, meta };
}

/** @param {any} cb a received callback @returns {Entry[]} */
function fromCallback(cb) {
  const verified = cb.verification === 'verified';
  const what = cb.reportedStatus ? `Callback: ${cb.reportedStatus}` : cb.outcome === 'unreadable' ? 'Callback: unreadable' : 'Callback';
  const meta = [VERIFICATION_TEXT[cb.verification] || cb.verification, CALLBACK_OUTCOME_TEXT[cb.outcome] || cb.outcome];
  if (cb.early) meta.unshift('arrived before the task existed');
  if (cb.webhookId) meta.push(`webhook-id ${cb.webhookId}`);
  if (cb.matchedAt && cb.early) meta.push(`applied at ${cb.matchedAt.slice(11, 23)}`);
  const t = !verified && cb.verification !== 'poll_hint' ? 'bad' : cb.outcome === 'conflict' || cb.outcome === 'unreadable' ? 'warn' : cb.outcome === 'applied' ? 'ok' : 'plain';
  /** @type {Entry[]} */
  const out = [{ at: cb.receivedAt, kind: 'callback', rank: 2, tone: t, title: what, meta, ...(cb.outcome === 'unreadable' && cb.body ? { body: cb.body } : {}) }];
  if (cb.duplicates > 0) {
    out.push({
      at: cb.lastDuplicateAt || cb.receivedAt,
      kind: 'duplicate',
      rank: 2,
      tone: 'plain',
      title: `${cb.duplicates} duplicate ${cb.duplicates === 1 ? 'delivery' : 'deliveries'} of the same callback`,
      meta: [`webhook-id ${cb.webhookId}`, 'recognised and ignored'],
    });
  }
  return out;
}

/**
 * @param {any} n a notification
 * @param {any[]} events to place it at the transition that wrote it when it carries no time of its own
 * @param {any} task
 * @returns {Entry[]}
 */
function fromNotification(n, events, task) {
  const status = String(n.type || '').replace(/^task\./, '');
  const transition = [...events].reverse().find((e) => e.to === status && e.from !== e.to);
  const at = n.createdAt || (transition && transition.at) || task.completedAt || task.updatedAt;
  const meta = [`${n.attempts} ${n.attempts === 1 ? 'attempt' : 'attempts'}`];
  if (n.lastStatusCode) meta.push(`last answer HTTP ${n.lastStatusCode}`);
  if (n.lastError) meta.push(String(n.lastError));
  if (n.status === 'pending' && n.nextAttemptAt) meta.push(`next attempt ${n.nextAttemptAt.slice(11, 19)} UTC`);
  const t = n.status === 'delivered' ? 'ok' : n.status === 'pending' ? 'info' : 'bad';
  /** @type {Entry[]} */
  const out = [{ at, kind: 'notification', rank: 4, tone: t, title: `Notification ${n.type}: ${n.status}`, meta, notification: n }];
  if (n.deliveredAt && n.deliveredAt !== at) {
    out.push({ at: n.deliveredAt, kind: 'notification', rank: 4, tone: 'ok', title: `Notification ${n.type} delivered`, meta: [`webhook-id ${n.id}`] });
  }
  return out;
}

/**
 * @param {{ task: any, events: any[], attempts: any[], callbacks: any[], notifications: any[] }} story
 * @returns {Entry[]} oldest first; at the same instant, creation, then calls, callbacks, changes, notifications
 */
export function buildTimeline({ task, events, attempts, callbacks, notifications }) {
  const counts = { dispatch: 0, status: 0 };
  /** @type {Entry[]} */
  const entries = [
    ...events.map(fromEvent),
    ...attempts.map((c) => fromCall(c, (counts[c.operation === 'dispatch' ? 'dispatch' : 'status'] += 1))),
    ...callbacks.flatMap(fromCallback),
    ...notifications.flatMap((n) => fromNotification(n, events, task)),
  ];
  return entries
    .map((e, i) => ({ e, i, t: new Date(e.at).getTime() }))
    .sort((a, b) => a.t - b.t || a.e.rank - b.e.rank || a.i - b.i)
    .map(({ e }) => e);
}

/** @type {Record<string, string>} */
export const KIND_LABEL = {
  status: 'Status',
  dispatch: 'Dispatch',
  check: 'Check',
  callback: 'Callback',
  duplicate: 'Duplicate',
  conflict: 'Conflict',
  manual: 'Manual',
  notification: 'Notification',
};
