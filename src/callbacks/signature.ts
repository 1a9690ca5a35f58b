import { Webhook } from 'standardwebhooks';

/**
 * Standard Webhooks verification with the reference `standardwebhooks` package: HMAC-SHA256 over
 * `id.timestamp.body`, 5-minute tolerance both ways, several `v1,` signatures per header, constant-time
 * compare. Several configured secrets (a rotation) are each tried in turn.
 */
export class SignatureVerifier {
  private readonly webhooks: readonly Webhook[];

  constructor(secrets: readonly string[]) {
    this.webhooks = secrets.map((s) => new Webhook(s));
  }

  /** True when any configured secret verifies the raw body against the headers. */
  verify(rawBody: Buffer, headers: Record<string, string | string[] | undefined>): boolean {
    const wanted = {
      'webhook-id': single(headers['webhook-id']),
      'webhook-timestamp': single(headers['webhook-timestamp']),
      'webhook-signature': single(headers['webhook-signature']),
    };
    if (!wanted['webhook-id'] || !wanted['webhook-timestamp'] || !wanted['webhook-signature']) return false;
    const payload = rawBody.toString('utf8');
    for (const webhook of this.webhooks) {
      try {
        webhook.verify(payload, wanted as Record<string, string>, { jsonParse: false });
        return true;
      } catch {
        // try the next secret
      }
    }
    return false;
  }
}

function single(v: string | string[] | undefined): string {
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
}
