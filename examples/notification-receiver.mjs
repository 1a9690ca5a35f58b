// A client's receiver for callback-reconciler outcome notifications, in one file.
//
//   NOTIFY_SECRET=whsec_… PORT=4020 node examples/notification-receiver.mjs
//
// It verifies every notification with the reference Standard Webhooks library (`npm i standardwebhooks`):
// the HMAC signature over "webhook-id.webhook-timestamp.body" with the service's NOTIFY_SECRET, and a
// timestamp no more than 5 minutes off. It de-duplicates on webhook-id (delivery is at least once: the
// same notification can come again, with the same id) and answers 2xx quickly; slow work belongs in a
// queue of your own, since an answer slower than NOTIFY_TIMEOUT_MS counts as a failed attempt.
// Answer 410 to stop a notification's retries for good.
import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const secret = process.env.NOTIFY_SECRET;
if (!secret) {
  console.error('set NOTIFY_SECRET to the service\'s NOTIFY_SECRET (whsec_…)');
  process.exit(2);
}
const webhook = new Webhook(secret);
const port = Number(process.env.PORT ?? 4020);
const host = process.env.HOST ?? '127.0.0.1';
/** webhook-ids already handled. Keep these in your database in real life (a unique key on the id). */
const seen = new Set();

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') return res.writeHead(405).end();
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    let event;
    try {
      // Verify the raw body, before any JSON parsing or re-serialising.
      event = webhook.verify(body, {
        'webhook-id': req.headers['webhook-id'] ?? '',
        'webhook-timestamp': req.headers['webhook-timestamp'] ?? '',
        'webhook-signature': req.headers['webhook-signature'] ?? '',
      });
    } catch (err) {
      console.log(JSON.stringify({ refused: true, reason: err.message }));
      return res.writeHead(401).end();
    }
    const id = req.headers['webhook-id'];
    if (seen.has(id)) {
      console.log(JSON.stringify({ duplicate: true, webhookId: id }));
      return res.writeHead(200).end();
    }
    seen.add(id);
    const task = event.data;
    console.log(JSON.stringify({ webhookId: id, type: event.type, at: event.timestamp, taskId: task.id, requestNo: task.requestNo, status: task.status, result: task.result, error: task.error }));
    res.writeHead(204).end();
  });
});

server.listen(port, host, () => console.log(JSON.stringify({ listening: `http://${host}:${port}` })));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
