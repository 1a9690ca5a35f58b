import fc from 'fast-check';
import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, type TestService } from '../support/service';
import { countRows, createTask, errorFields, expectProblem, NO_CALLBACK, uniqueRequestNo } from './helpers';
import { notificationsWhen, startReceiver, type TestReceiver } from './notification-helpers';

/**
 * Address safety of notifyUrl. Only loopback addresses ever receive traffic here (a receiver on
 * 127.0.0.1); private and public addresses are only ever classified, never dialled.
 */

let db: TestDatabase;
/** NOTIFY_ALLOWED_HOSTS unset. */
let strict: TestService;
/** 127.0.0.1 (any port) and localhost on the receiver's port allowed. */
let allowing: TestService;
let receiver: TestReceiver;

beforeAll(async () => {
  db = await createTestDatabase();
  receiver = await startReceiver();
  strict = await startTestService({ notifications: true, db, background: false, env: { NOTIFY_SCHEDULE_SECONDS: '0.2,0.2,0.2' } });
  allowing = await startTestService({ notifications: true, db, simulator: strict.simulator, background: false, env: { NOTIFY_ALLOWED_HOSTS: `127.0.0.1,localhost:${receiver.port}` } });
});
afterAll(async () => {
  await allowing?.stop();
  await strict?.stop();
  await receiver?.close();
  await db?.drop();
});

const body = (notifyUrl: string) => ({ partner: 'sim', requestNo: uniqueRequestNo('ssrf'), payload: { simulate: NO_CALLBACK }, notifyUrl });

test.each([
  ['loopback', 'http://127.0.0.1:9/x'],
  ['loopback, another one', 'http://127.8.9.10/x'],
  ['loopback as a decimal integer', 'http://2130706433/x'],
  ['RFC 1918 10/8', 'http://10.0.0.1/x'],
  ['RFC 1918 172.16/12', 'https://172.31.255.254/x'],
  ['RFC 1918 192.168/16', 'http://192.168.1.1:8080/x'],
  ['cloud metadata (link-local)', 'http://169.254.169.254/latest/meta-data/'],
  ['CGNAT', 'http://100.64.0.1/x'],
  ['unspecified', 'http://0.0.0.0/x'],
  ['IPv6 loopback', 'http://[::1]/x'],
  ['IPv6 unique-local', 'http://[fd00::1]/x'],
  ['IPv6 link-local', 'http://[fe80::1]/x'],
  ['IPv4-mapped loopback', 'http://[::ffff:127.0.0.1]/x'],
  ['localhost (resolves to loopback)', 'http://localhost:9/x'],
  ['a name under .localhost', 'http://app.localhost/x'],
])('%s is refused with 422 naming notifyUrl, and nothing is stored', async (_what, url) => {
  const before = await countRows(db);
  const res = await strict.api.post('/v1/tasks', body(url));
  expect(errorFields(expectProblem(res, 422))).toEqual(['notifyUrl']);
  expect(await countRows(db)).toEqual(before);
});

test('NOTIFY_ALLOWED_HOSTS lets listed hosts through (host, or host:port only on that port)', async () => {
  expect((await allowing.api.post('/v1/tasks', body('http://127.0.0.1:9/x'))).status).toBe(201);
  expect((await allowing.api.post('/v1/tasks', body(`http://localhost:${receiver.port}/x`))).status).toBe(201);
  expectProblem(await allowing.api.post('/v1/tasks', body(`http://localhost:${receiver.port + 1}/x`)), 422);
  expectProblem(await allowing.api.post('/v1/tasks', body('http://10.0.0.1/x')), 422);
});

test('checked again at connect time: an outbox row whose host resolves to loopback is never sent, only retried', async () => {
  // Written straight into the outbox, as if the address had been public at create time (DNS changed since).
  const task = await createTask(allowing.api, body('http://127.0.0.1:9/placeholder'));
  await sql`insert into notifications (id, task_id, type, url, host, task_snapshot, occurred_at, status, next_attempt_at)
            select gen_random_uuid(), id, 'task.succeeded', ${`http://localhost:${receiver.port}/rebound`}, ${`localhost:${receiver.port}`},
                   to_jsonb(tasks), now(), 'pending', now() from tasks where id = ${task.id}::uuid`.execute(db.handle.db);
  // The strict replica (localhost not allowed) delivers it.
  await strict.runtime.deliveryWorker!.runOnce();
  const [n] = await notificationsWhen(strict.api, task.id, (items) => (items[0]?.attempts ?? 0) >= 1, 'the attempt to be recorded');
  expect(n).toMatchObject({ status: 'pending', lastStatusCode: null });
  expect(n!.lastError).toMatch(/address refused/);
  expect(receiver.byPath('/rebound')).toHaveLength(0);
});

test('property: any notifyUrl answers 201 or 422 (never 500); 422 stores nothing; private literals are always refused', async () => {
  const octet = fc.integer({ min: 0, max: 255 });
  const privateLiteral = fc.oneof(
    fc.tuple(octet, octet, octet).map(([a, b, c]) => `10.${a}.${b}.${c}`),
    fc.tuple(fc.integer({ min: 16, max: 31 }), octet, octet).map(([a, b, c]) => `172.${a}.${b}.${c}`),
    fc.tuple(octet, octet).map(([a, b]) => `192.168.${a}.${b}`),
    fc.tuple(octet, octet).map(([a, b]) => `169.254.${a}.${b}`),
    fc.tuple(octet, octet, octet).map(([a, b, c]) => `127.${a}.${b}.${c}`),
  );
  const pathPart = fc.stringMatching(/^[A-Za-z0-9._~%/-]{0,30}$/);
  const url = fc.oneof(
    fc.tuple(fc.constantFrom('http', 'https'), privateLiteral, pathPart).map(([s, h, p]) => ({ url: `${s}://${h}/${p}`, refused: true })),
    fc.tuple(fc.integer({ min: 1, max: 65_535 }), pathPart, fc.string()).map(([port, p, q]) => ({ url: `http://127.0.0.1:${port}/${p}?q=${encodeURIComponent(q)}`, refused: false })),
    fc.string().map((s) => ({ url: s, refused: undefined })),
    fc.constantFrom('ftp://127.0.0.1/x', 'file:///etc/passwd', 'javascript:alert(1)', 'http://', 'http://[::1', 'http://user:pw@10.0.0.1/').map((u) => ({ url: u, refused: true })),
  );
  await fc.assert(
    fc.asyncProperty(url, async ({ url: notifyUrl, refused }) => {
      const before = (await countRows(db)).tasks;
      // The strict service refuses the private ones; the allowing one takes loopback.
      const svc = refused === false ? allowing : strict;
      const res = await svc.api.post('/v1/tasks', body(notifyUrl));
      expect([201, 422]).toContain(res.status);
      if (res.status === 422) {
        expect(errorFields(res.data as Record<string, unknown>)).toContain('notifyUrl');
        expect((await countRows(db)).tasks).toBe(before);
      }
      if (refused === true) expect(res.status).toBe(422);
      if (refused === false) expect(res.status).toBe(201);
    }),
    { numRuns: 60 },
  );
});

test('property: the notification routes answer 200/202 or a problem, never 500, whatever the ids', async () => {
  const task = await createTask(strict.api, { partner: 'sim', requestNo: uniqueRequestNo('routes'), payload: { simulate: NO_CALLBACK } });
  // Raw segments go into the path as written (deliberate dot segments and percent-escapes); every other
  // string is percent-encoded, so it stays one path segment (a bare `?` would start a query and reach another route).
  const raw = ['..', '%2e%2e', '%00', '%2F', '%ZZ'];
  const segment = fc.oneof(fc.string({ minLength: 1 }), fc.uuid(), fc.constant(task.id), fc.constantFrom(...raw, 'constructor', '__proto__'));
  await fc.assert(
    fc.asyncProperty(segment, segment, async (id, nid) => {
      const enc = (s: string) => (raw.includes(s) ? s : encodeURIComponent(s));
      const list = await strict.api.get(`/v1/tasks/${enc(id)}/notifications`);
      // 400 only for a malformed percent-encoding, which express refuses before routing.
      expect([200, 400, 404]).toContain(list.status);
      if (list.status === 200) expect(list.data).toEqual({ items: [] });
      else expectProblem(list, list.status);
      const redeliver = await strict.api.post(`/v1/tasks/${enc(id)}/notifications/${enc(nid)}/redeliver`);
      expect([400, 404]).toContain(redeliver.status);
      expectProblem(redeliver, redeliver.status);
    }),
    { numRuns: 60 },
  );
});
