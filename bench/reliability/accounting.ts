/**
 * The chaos suite's verdict, as a pure function of what the client was told, what the database holds and
 * what the partner (the simulator) counted, so it can be tested on made-up inputs (test/unit) and a check
 * that cannot fail is caught there rather than trusted.
 */

export type PartnerOutcome = 'succeeded' | 'failed';

/** A create the client was answered 201/200 for. */
export interface ToldTask {
  requestNo: string;
  id: string;
  /** What the scripted partner reports once it has the request. */
  outcome: PartnerOutcome;
  script: string;
}

export interface TaskRowView {
  id: string;
  request_no: string;
  status: string;
  lease_owner: string | null;
  settled_by: string | null;
  dispatch_attempts: number;
}

/** The simulator's per-request counters (`/_sim/stats` byRequestNo). */
export interface PartnerCounts {
  dispatches: number;
  received: number;
  statusQueries: number;
  callbacksSent: number;
  callbacksFailed: number;
}

export interface InboxRowView {
  webhook_id: string;
  request_no: string | null;
  outcome: string;
}

/** One task event written by applying a stored callback (its `detail.webhookId`). */
export interface CallbackEventView {
  webhook_id: string;
}

export interface ClientView {
  /** Every requestNo the client tried to create. */
  attempted: readonly string[];
  told: readonly ToldTask[];
  /** Answers by HTTP status ('network' for no answer), over every attempt. */
  answers: Readonly<Record<string, number>>;
}

export interface AccountingInput {
  client: ClientView;
  tasks: readonly TaskRowView[];
  partner: Readonly<Record<string, PartnerCounts>>;
  inbox: readonly InboxRowView[];
  callbackEvents: readonly CallbackEventView[];
  conflictEvents: number;
}

export interface Check {
  name: string;
  /** What must hold, in words. */
  rule: string;
  actual: number;
  ok: boolean;
  /** A few offending requestNos / webhook ids, for the report. */
  examples: string[];
}

export interface Accounting {
  checks: Check[];
  /** Figures for the table (not judged). */
  figures: Array<[string, string | number]>;
  ok: boolean;
}

const FINAL = new Set(['succeeded', 'failed', 'rejected']);
const MAX_EXAMPLES = 5;

function check(name: string, rule: string, offenders: readonly string[]): Check {
  return { name, rule, actual: offenders.length, ok: offenders.length === 0, examples: offenders.slice(0, MAX_EXAMPLES) };
}

/** The outcome a told task must end in: the partner's, or `rejected` when the partner never had it. */
export function expectedStatus(told: ToldTask, counts: PartnerCounts | undefined): string {
  return (counts?.received ?? 0) > 0 ? told.outcome : 'rejected';
}

export function account(input: AccountingInput): Accounting {
  const byRequestNo = new Map(input.tasks.map((t) => [t.request_no, t]));
  const attempted = new Set(input.client.attempted);
  const toldNos = new Set(input.client.told.map((t) => t.requestNo));

  const missing: string[] = [];
  const notFinal: string[] = [];
  const wrongOutcome: string[] = [];
  for (const told of input.client.told) {
    const row = byRequestNo.get(told.requestNo);
    if (!row || row.id !== told.id) {
      missing.push(told.requestNo);
      continue;
    }
    if (!FINAL.has(row.status)) {
      notFinal.push(`${told.requestNo} (${row.status})`);
      continue;
    }
    const expected = expectedStatus(told, input.partner[told.requestNo]);
    if (row.status !== expected) wrongOutcome.push(`${told.requestNo} (${told.script}: ${row.status}, partner says ${expected})`);
  }
  const gaveUp = input.client.attempted.filter((n) => !toldNos.has(n));
  const phantom = input.tasks.filter((t) => !attempted.has(t.request_no)).map((t) => t.request_no);
  const openAny = input.tasks.filter((t) => !FINAL.has(t.status)).map((t) => `${t.request_no} (${t.status})`);

  // The ambiguity rule: a request is sent again only after the partner's status endpoint said 404, which
  // the simulator says only before its first receipt. So the partner may receive each request once.
  const resent = Object.entries(input.partner)
    .filter(([, c]) => c.received > 1)
    .map(([n, c]) => `${n} (received ${c.received}×)`);
  const claimed = input.tasks.filter((t) => t.lease_owner !== null).map((t) => `${t.request_no} (${t.lease_owner})`);

  const queued = input.inbox.filter((r) => r.outcome === 'queued').map((r) => `${r.webhook_id} (${r.request_no})`);
  const badInbox = input.inbox.filter((r) => r.outcome === 'unreadable' || r.outcome === 'conflict').map((r) => `${r.webhook_id} (${r.outcome})`);
  const eventsPerWebhook = new Map<string, number>();
  for (const e of input.callbackEvents) eventsPerWebhook.set(e.webhook_id, (eventsPerWebhook.get(e.webhook_id) ?? 0) + 1);
  const appliedTwice = [...eventsPerWebhook.entries()].filter(([, n]) => n > 1).map(([id, n]) => `${id} (${n} events)`);
  const appliedWithoutEvent = input.inbox.filter((r) => r.outcome === 'applied' && !eventsPerWebhook.has(r.webhook_id)).map((r) => r.webhook_id);
  const inboxIds = new Set(input.inbox.map((r) => r.webhook_id));
  const eventWithoutInbox = [...eventsPerWebhook.keys()].filter((id) => !inboxIds.has(id));

  const refusedRetries = ['400', '409', '413', '415', '422'].flatMap((code) => (input.client.answers[code] ? [`HTTP ${code} ×${input.client.answers[code]}`] : []));
  const conflicts = input.conflictEvents > 0 ? [`${input.conflictEvents} conflict events`] : [];

  const checks: Check[] = [
    check('told tasks exist', 'every task the client was answered 201/200 for exists, with that id', missing),
    check('told tasks final', 'every told task is succeeded, failed or rejected', notFinal),
    check("partner's outcome", 'each told task ends as the partner reported (rejected only if the partner never received it)', wrongOutcome),
    check('client answered', 'every create the client attempted was eventually answered 201/200', gaveUp),
    check('retries accepted', 'a retried create is never refused (no 400/409/413/415/422)', refusedRetries),
    check('no stray tasks', 'the database holds no task the client did not ask for', phantom),
    check('nothing open', 'no task in the database is pending, dispatched or expired', openAny),
    check('ambiguity rule', 'the partner received each request at most once (re-sent only after a 404)', resent),
    check('nothing claimed', 'no task still has a lease owner', claimed),
    check('callbacks matched', 'no stored callback is still queued, unreadable or in conflict', [...queued, ...badInbox]),
    check('callbacks applied once', 'no webhook id moved a task twice; every applied inbox row has its event and every event its row', [
      ...appliedTwice,
      ...appliedWithoutEvent.map((id) => `${id} (applied, no event)`),
      ...eventWithoutInbox.map((id) => `${id} (event, no inbox row)`),
    ]),
    check('no conflicts', 'no report contradicted a final status', conflicts),
  ];

  const partnerTotals = Object.values(input.partner).reduce(
    (acc, c) => ({
      dispatches: acc.dispatches + c.dispatches,
      received: acc.received + c.received,
      statusQueries: acc.statusQueries + c.statusQueries,
      callbacksSent: acc.callbacksSent + c.callbacksSent,
      callbacksFailed: acc.callbacksFailed + c.callbacksFailed,
    }),
    { dispatches: 0, received: 0, statusQueries: 0, callbacksSent: 0, callbacksFailed: 0 },
  );
  const countBy = <T>(items: readonly T[], key: (t: T) => string) => {
    const m = new Map<string, number>();
    for (const i of items) m.set(key(i), (m.get(key(i)) ?? 0) + 1);
    return [...m.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k} ${n}`).join(', ') || '—';
  };
  const attemptsTotal = Object.values(input.client.answers).reduce((a, b) => a + b, 0);
  const figures: Array<[string, string | number]> = [
    ['creates attempted (distinct requestNos)', input.client.attempted.length],
    ['create requests sent (retries included)', attemptsTotal],
    ['client answers by status', Object.entries(input.client.answers).sort().map(([k, n]) => `${k} ${n}`).join(', ') || '—'],
    ['told (201/200)', input.client.told.length],
    ['told, by script', countBy(input.client.told, (t) => t.script)],
    ['tasks in the database', input.tasks.length],
    ['final status', countBy(input.tasks, (t) => t.status)],
    ['settled by', countBy(input.tasks, (t) => t.settled_by ?? 'none')],
    ['dispatch attempts recorded by the service', input.tasks.reduce((a, t) => a + t.dispatch_attempts, 0)],
    ['partner: dispatches processed / received', `${partnerTotals.dispatches} / ${partnerTotals.received}`],
    ['partner: requests received more than once', resent.length],
    ['partner: status queries', partnerTotals.statusQueries],
    ['partner: callback attempts / not accepted', `${partnerTotals.callbacksSent} / ${partnerTotals.callbacksFailed}`],
    ['stored callbacks (inbox rows), by outcome', countBy(input.inbox, (r) => r.outcome)],
    ['task events written by callbacks', input.callbackEvents.length],
  ];
  return { checks, figures, ok: checks.every((c) => c.ok) };
}

/** A markdown table; cells have `|` escaped. */
export function markdownTable(header: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>): string {
  const cell = (v: string | number) => String(v).replaceAll('|', '\\|').replaceAll('\n', ' ');
  return [
    `| ${header.map(cell).join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ].join('\n');
}

export function renderAccounting(a: Accounting): string {
  const checks = markdownTable(
    ['check', 'rule', 'offenders', 'ok', 'examples'],
    a.checks.map((c) => [c.name, c.rule, c.actual, c.ok ? '✅' : '❌', c.examples.join(', ')]),
  );
  const figures = markdownTable(['figure', 'value'], a.figures);
  return `${figures}\n\n${checks}`;
}
