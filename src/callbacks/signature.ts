import { Webhook } from 'standardwebhooks';

/** A callback's verification result as the task story shows it. */
export type Verification = 'verified' | 'missing_headers' | 'bad_signature' | 'stale_timestamp';

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
    return this.check(rawBody, headers) === 'verified';
  }

  /** The verification result, for the task story: why a callback was refused. */
  check(rawBody: Buffer, headers: Record<string, string | string[] | undefined>): Verification {
    const wanted = {
      'webhook-id': single(headers['webhook-id']),
      'webhook-timestamp': single(headers['webhook-timestamp']),
      'webhook-signature': single(headers['webhook-signature']),
    };
    if (!wanted['webhook-id'] || !wanted['webhook-timestamp'] || !wanted['webhook-signature']) return 'missing_headers';
    const payload = rawBody.toString('utf8');
    let result: Verification = 'bad_signature';
    for (const webhook of this.webhooks) {
      try {
        webhook.verify(payload, wanted as Record<string, string>, { jsonParse: false });
        return 'verified';
      } catch (err) {
        // The timestamp is checked before the signature, and the same for every secret.
        if (/timestamp/i.test((err as Error).message)) result = 'stale_timestamp';
        // try the next secret
      }
    }
    return result;
  }
}

function single(v: string | string[] | undefined): string {
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
}
