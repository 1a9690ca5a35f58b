import http from 'node:http';
import https from 'node:https';
import { randomUUID } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import type { CancellableTimers } from './cancellable-timers';

/** Back-off before each retry of one callback message: three retries, like a typical webhook sender. */
export const CALLBACK_RETRY_DELAYS_MS: readonly number[] = Object.freeze([50, 200, 1000]);
/** A receiver that does not answer within this is treated like a connection error (and retried). */
export const CALLBACK_TIMEOUT_MS = 10_000;
/** Sockets per receiver host; enough for benchmarks, bounded so a burst cannot exhaust file descriptors. */
const MAX_SOCKETS_PER_HOST = 128;
/** Only this much of a receiver's answer is kept for the stats; answers are small JSON in practice. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** What the receiver answered to one callback attempt; status 0 means no HTTP answer (connect error, timeout). */
export interface CallbackAnswer {
  status: number;
  body: unknown;
}

/** One signed message to deliver; `body` is the exact JSON text that is signed and sent. */
export interface CallbackMessage {
  url: string;
  webhookId: string;
  body: string;
}

/** Hooks the sender calls so the simulator can count attempts and drop results that arrive after a reset. */
export interface DeliveryHooks {
  /** Called after every attempt, with `accepted` true for a 2xx. */
  onAttempt(answer: CallbackAnswer, accepted: boolean): void;
  /** False once the simulator was reset or closed: the delivery stops and records nothing more. */
  isCurrent(): boolean;
}

/**
 * Sends Standard Webhooks callbacks the way a real partner would: signed with every configured secret
 * (several `v1,` signatures for rotation), retried on connection errors and 5xx, final on 2xx and 4xx,
 * over keep-alive agents so thousands of callbacks per second do not each pay for a TCP handshake.
 */
export class CallbackSender {
  private readonly signers: Webhook[];
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS_PER_HOST, maxFreeSockets: MAX_SOCKETS_PER_HOST });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS_PER_HOST, maxFreeSockets: MAX_SOCKETS_PER_HOST });
  /** A per-instance prefix plus a counter: unique across simulator restarts, cheaper than a UUID per message. */
  private readonly idPrefix = `msg_${randomUUID().replace(/-/g, '')}`;
  private idCounter = 0;

  /** @param secrets `whsec_...` secrets; an empty list sends callbacks without a signature header (to test 401s). */
  constructor(
    secrets: readonly string[],
    private readonly timers: CancellableTimers,
  ) {
    this.signers = secrets.map((secret) => new Webhook(secret));
  }

  /** A fresh `webhook-id`. */
  newMessageId(): string {
    this.idCounter += 1;
    return `${this.idPrefix}${this.idCounter.toString(36)}`;
  }

  /** Delivers one message with retries; resolves once an answer is final, retries run out, or it is cancelled. */
  async deliver(message: CallbackMessage, hooks: DeliveryHooks): Promise<void> {
    for (let attempt = 0; attempt <= CALLBACK_RETRY_DELAYS_MS.length; attempt += 1) {
      if (attempt > 0) {
        const elapsed = await this.timers.sleep(CALLBACK_RETRY_DELAYS_MS[attempt - 1] ?? 0);
        if (!elapsed || !hooks.isCurrent()) return;
      }
      const answer = await this.attempt(message);
      if (!hooks.isCurrent()) return;
      const accepted = answer.status >= 200 && answer.status < 300;
      hooks.onAttempt(answer, accepted);
      if (!isRetryable(answer)) return;
    }
  }

  /** Closes idle keep-alive sockets and aborts in-flight callbacks. */
  destroy(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  private attempt(message: CallbackMessage): Promise<CallbackAnswer> {
    return postJson(message.url, this.headersFor(message), message.body, this.agentFor(message.url)).catch(
      (error: unknown): CallbackAnswer => ({ status: 0, body: { error: describeError(error) } }),
    );
  }

  private headersFor(message: CallbackMessage): http.OutgoingHttpHeaders {
    const sentAt = new Date();
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(message.body),
      'webhook-id': message.webhookId,
      'webhook-timestamp': String(Math.floor(sentAt.getTime() / 1000)),
    };
    if (this.signers.length > 0) {
      headers['webhook-signature'] = this.signers.map((signer) => signer.sign(message.webhookId, sentAt, message.body)).join(' ');
    }
    return headers;
  }

  private agentFor(url: string): http.Agent {
    return url.startsWith('https:') ? this.httpsAgent : this.httpAgent;
  }
}

/** Connection errors and 5xx are worth another try; every other answer is the receiver's final word. */
function isRetryable(answer: CallbackAnswer): boolean {
  return answer.status === 0 || answer.status >= 500;
}

function postJson(url: string, headers: http.OutgoingHttpHeaders, body: string, agent: http.Agent): Promise<CallbackAnswer> {
  const transport = url.startsWith('https:') ? https : http;
  return new Promise<CallbackAnswer>((resolve, reject) => {
    const request = transport.request(url, { method: 'POST', headers, agent }, (response) => {
      readAnswer(response).then(resolve, reject);
    });
    request.setTimeout(CALLBACK_TIMEOUT_MS, () => request.destroy(new Error(`no answer within ${CALLBACK_TIMEOUT_MS} ms`)));
    request.on('error', reject);
    request.end(body);
  });
}

function readAnswer(response: http.IncomingMessage): Promise<CallbackAnswer> {
  return new Promise<CallbackAnswer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on('data', (chunk: Buffer) => {
      if (size < MAX_ANSWER_BYTES) chunks.push(chunk);
      size += chunk.length;
    });
    response.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').slice(0, MAX_ANSWER_BYTES);
      resolve({ status: response.statusCode ?? 0, body: parseAnswerBody(text, response.headers['content-type']) });
    });
    response.on('error', reject);
  });
}

function parseAnswerBody(text: string, contentType: string | undefined): unknown {
  if (text === '') return null;
  if (contentType?.includes('json')) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return text;
    }
  }
  return text;
}

function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === undefined ? error.message : `${code}: ${error.message}`;
  }
  return String(error);
}
