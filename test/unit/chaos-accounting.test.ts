import { account, type CallbackEventView, type InboxRowView, type PartnerCounts, type TaskRowView, type ToldTask } from '../../bench/reliability/accounting';

/** AccountingInput with mutable parts, so each case can damage a clean run. */
interface Input {
  client: { attempted: string[]; told: ToldTask[]; answers: Record<string, number> };
  tasks: TaskRowView[];
  partner: Record<string, PartnerCounts>;
  inbox: InboxRowView[];
  callbackEvents: CallbackEventView[];
  conflictEvents: number;
}

/**
 * The chaos suite's verdict must be able to fail: each kind of damage the suite exists to catch, made up
 * here on top of a clean run, is caught by exactly the check named for it.
 */

const counts = (received: number, extra: Partial<PartnerCounts> = {}): PartnerCounts => ({
  dispatches: received,
  received,
  statusQueries: 0,
  callbacksSent: 1,
  callbacksFailed: 0,
  ...extra,
});

function cleanRun(): Input {
  return {
    client: {
      attempted: ['a', 'b', 'c'],
      told: [
        { requestNo: 'a', id: 'id-a', outcome: 'succeeded', script: 'plain' },
        { requestNo: 'b', id: 'id-b', outcome: 'failed', script: 'failed' },
        { requestNo: 'c', id: 'id-c', outcome: 'succeeded', script: 'plain' },
      ],
      answers: { '201': 3, '502': 2 },
    },
    tasks: [
      { id: 'id-a', request_no: 'a', status: 'succeeded', lease_owner: null, settled_by: 'callback', dispatch_attempts: 1 },
      { id: 'id-b', request_no: 'b', status: 'failed', lease_owner: null, settled_by: 'callback', dispatch_attempts: 1 },
      // Never reached the partner (it was down until attempts ran out): rejected is its right outcome.
      { id: 'id-c', request_no: 'c', status: 'rejected', lease_owner: null, settled_by: null, dispatch_attempts: 8 },
    ],
    partner: { a: counts(1), b: counts(1) },
    inbox: [
      { webhook_id: 'w-a', request_no: 'a', outcome: 'applied' },
      { webhook_id: 'w-b', request_no: 'b', outcome: 'applied' },
    ],
    callbackEvents: [{ webhook_id: 'w-a' }, { webhook_id: 'w-b' }],
    conflictEvents: 0,
  };
}

const failing = (input: Input) =>
  account(input)
    .checks.filter((c) => !c.ok)
    .map((c) => c.name);

test('a clean run passes every check', () => {
  const a = account(cleanRun());
  expect(a.checks.filter((c) => !c.ok)).toEqual([]);
  expect(a.ok).toBe(true);
  expect(a.checks.length).toBeGreaterThanOrEqual(12);
});

test.each<[string, (i: Input) => void]>([
  ['told tasks exist', (i) => void (i.tasks[0]!.id = 'another-id')],
  ['told tasks final', (i) => void (i.tasks[0]!.status = 'dispatched')],
  ["partner's outcome", (i) => void (i.tasks[1]!.status = 'succeeded')],
  ["partner's outcome", (i) => void (i.partner['c'] = counts(1))],
  ['client answered', (i) => void i.client.attempted.push('d')],
  ['retries accepted', (i) => void (i.client.answers['409'] = 1)],
  ['no stray tasks', (i) => void i.tasks.push({ id: 'id-x', request_no: 'x', status: 'succeeded', lease_owner: null, settled_by: 'poll', dispatch_attempts: 1 })],
  ['ambiguity rule', (i) => void (i.partner['a'] = counts(2))],
  ['nothing claimed', (i) => void (i.tasks[0]!.lease_owner = 'replica-1:sweep:x')],
  ['callbacks matched', (i) => void i.inbox.push({ webhook_id: 'w-late', request_no: 'a', outcome: 'queued' })],
  ['callbacks applied once', (i) => void i.callbackEvents.push({ webhook_id: 'w-a' })],
  ['callbacks applied once', (i) => void i.callbackEvents.pop()],
  ['no conflicts', (i) => void (i.conflictEvents = 1)],
])('%s catches its damage', (name, damage) => {
  const input = cleanRun();
  damage(input);
  expect(failing(input)).toContain(name);
});

test('a task left open fails both "told tasks final" and "nothing open"', () => {
  const input = cleanRun();
  input.tasks[2]!.status = 'expired';
  expect(failing(input)).toEqual(expect.arrayContaining(['told tasks final', 'nothing open']));
});
