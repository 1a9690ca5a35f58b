import { createTestDatabase, type TestDatabase } from '../support/database';
import { startTestService, type TestService } from '../support/service';

let db: TestDatabase;
let svc: TestService;
beforeAll(async () => {
  db = await createTestDatabase();
  svc = await startTestService({ db });
});
afterAll(async () => {
  await svc?.stop();
  await db?.drop();
});

test('a task is created, dispatched and reaches a final status', async () => {
  const res = await svc.api.post('/v1/tasks', { partner: 'sim', payload: { a: 1 } });
  expect(res.status).toBe(201);
  const final = await svc.api.get(`/v1/tasks/${res.data.id}?waitSeconds=5`);
  expect(final.data).toMatchObject({ status: 'succeeded', settledBy: 'callback' });
  const events = await svc.api.get(`/v1/tasks/${res.data.id}/events`);
  expect(events.data.items[0]).toMatchObject({ from: null, to: 'pending', source: 'api' });
});
