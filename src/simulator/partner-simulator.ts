import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { CallbackSender, type CallbackAnswer } from './callback-sender';
import { CancellableTimers } from './cancellable-timers';
import {
  directiveForAttempt,
  isPlainObject,
  readSimulationScript,
  type CallbackDirective,
  type DispatchDirective,
  type FinalStatus,
  type PartnerStatus,
  type StatusDirective,
} from './directives';
import { sendJson } from './json-http';
import { buildReport, currentStatus, reportedOutcome } from './partner-answers';
import { SimulatorState, type RequestRecord } from './simulator-state';

/** Answer of a dispatch without directives: accepted, outcome to follow. */
const DEFAULT_DISPATCH_STATUS = 202;

/**
 * What the status endpoint answers for a requestNo it never received: `'404'` (the protocol's "never
 * received", the default) or a status, as if the request had been received earlier (by another instance
 * of the partner, say). Benchmarks use a status so tasks seeded straight into the database can be polled
 * without dispatching each one first.
 */
export type UnknownStatusAnswer = '404' | PartnerStatus;

/** Settings the behaviour needs; the HTTP layer owns host, port and paths. */
export interface PartnerBehaviourOptions {
  secrets: readonly string[];
  defaultCallbackDelayMs: number;
  logger: Logger;
  /** Default `'404'`. */
  unknownStatus?: UnknownStatusAnswer;
  /**
   * When set, callbacks go only to URLs under this base (the service's PUBLIC_BASE_URL): a dispatch naming
   * any other callbackUrl is refused, so the simulator never signs a callback for someone else's host.
   */
  callbackBaseUrl?: string;
}

/** A dispatch body that passed the protocol's shape check. */
interface DispatchRequest {
  requestNo: string;
  payload: unknown;
  callbackUrl: string | undefined;
}

/**
 * The fake partner's behaviour: what it answers to dispatches and status queries, when it calls back,
 * and what it counts. Routing and body parsing live in `simulator-routes.ts`; this class decides the answers.
 */
export class PartnerSimulator {
  readonly state = new SimulatorState();
  private readonly timers = new CancellableTimers();
  private readonly sender: CallbackSender;
  private down = false;
  /** While above 0, every dispatch (after its receipt is recorded) and status query waits this long first. */
  private slowMs = 0;
  private closed = false;

  constructor(private readonly options: PartnerBehaviourOptions) {
    this.sender = new CallbackSender(options.secrets, this.timers);
  }

  setDown(down: boolean): void {
    this.down = down;
  }

  /**
   * A partner that is up but slow: while `delayMs` > 0, every dispatch and status query is answered only
   * after `delayMs` (a dispatch is received on arrival, as with the `delayMs` directive), so a caller
   * whose timeout is shorter sees ambiguous dispatches and timed-out status queries. 0 ends it.
   */
  setSlow(delayMs: number): void {
    if (!Number.isInteger(delayMs) || delayMs < 0) throw new RangeError(`delayMs must be an integer >= 0, got ${delayMs}`);
    this.slowMs = delayMs;
  }

  /** Forgets everything and cancels pending callbacks, so one test's leftovers never reach the next. */
  reset(): void {
    this.state.reset();
    this.timers.cancelAll();
  }

  /** Cancels every timer and aborts outgoing callbacks; the HTTP layer closes the server. */
  close(): void {
    this.closed = true;
    this.state.reset();
    this.timers.cancelAll();
    this.sender.destroy();
  }

  /** `POST {dispatchPath}`: record the attempt, apply its directive, maybe start the callbacks. */
  async dispatch(body: unknown, idempotencyKey: string | undefined, res: ServerResponse): Promise<void> {
    const parsed = parseDispatchBody(body, this.options.callbackBaseUrl);
    if (typeof parsed === 'string') {
      sendJson(res, 400, { error: parsed });
      return;
    }
    const script = readSimulationScript(parsed.payload);
    if (!script.ok) {
      sendJson(res, 400, { requestNo: parsed.requestNo, error: script.problem });
      return;
    }
    const { record, attemptIndex } = this.state.recordDispatch(parsed.requestNo, script.script, parsed.callbackUrl, idempotencyKey);
    const directive = directiveForAttempt(script.script.dispatch, attemptIndex) ?? {};
    await this.answerDispatch(record, directive, res);
  }

  /** `GET {statusPath}`: apply the status directive for this query, then report what the partner knows. */
  async status(requestNo: string, res: ServerResponse): Promise<void> {
    const { record, queryIndex } = this.state.recordStatusQuery(requestNo);
    const directive: StatusDirective = directiveForAttempt(record.script.status, queryIndex) ?? 'normal';
    if (this.slowMs > 0 && !(await this.waitBeforeAnswering(this.slowMs, res))) return;
    if (directive === '404') return sendJson(res, 404, { requestNo, error: 'not found (simulated)' });
    if (directive === '500') return sendJson(res, 500, { requestNo, error: 'internal error (simulated)' });
    if (typeof directive === 'object' && !(await this.waitBeforeAnswering(directive.delayMs, res))) return;
    this.reportStatus(record, res);
  }

  /**
   * While down, dispatches and status queries answer 503 and count only as `rejectedWhileDown`: they
   * do not advance a task's scripted attempt index. Called before the body is read, so it stays cheap.
   * @returns true when the request was refused.
   */
  refuseIfDown(res: ServerResponse): boolean {
    if (!this.down) return false;
    this.state.recordRejectedWhileDown();
    sendJson(res, 503, { error: 'partner is down (simulated)' });
    return true;
  }

  private reportStatus(record: RequestRecord, res: ServerResponse): void {
    const receivedAt = record.firstReceivedAt;
    if (receivedAt === undefined) {
      const unknownStatus = this.options.unknownStatus ?? '404';
      if (unknownStatus === '404') sendJson(res, 404, { requestNo: record.requestNo, error: 'not found' });
      else sendJson(res, 200, buildReport(record.requestNo, unknownStatus, record.script));
      return;
    }
    const status = currentStatus(record, receivedAt, Date.now());
    sendJson(res, 200, buildReport(record.requestNo, status, record.script));
  }

  private async answerDispatch(record: RequestRecord, directive: DispatchDirective, res: ServerResponse): Promise<void> {
    const httpStatus = directive.status ?? DEFAULT_DISPATCH_STATUS;
    const isSuccess = httpStatus >= 200 && httpStatus < 300;
    if (isSuccess || directive.reset === true) {
      const finalInAnswer = isSuccess && directive.reset !== true ? finalBodyStatus(directive) : undefined;
      if (this.state.markReceived(record, finalInAnswer)) await this.startCallbacks(record);
    }
    const delayMs = Math.max(directive.delayMs ?? 0, this.slowMs);
    if (delayMs > 0 && !(await this.waitBeforeAnswering(delayMs, res))) return;
    if (directive.reset === true) {
      res.destroy();
      return;
    }
    const headers = directive.retryAfter === undefined ? {} : { 'retry-after': String(directive.retryAfter) };
    const body = isSuccess ? this.acceptanceBody(record, directive) : { requestNo: record.requestNo, error: `simulated HTTP ${httpStatus}` };
    sendJson(res, httpStatus, body, headers);
  }

  private acceptanceBody(record: RequestRecord, directive: DispatchDirective): object {
    const bodyStatus = directive.bodyStatus ?? 'processing';
    if (bodyStatus === 'none') return { requestNo: record.requestNo };
    return buildReport(record.requestNo, bodyStatus, record.script);
  }

  /**
   * Waits a scripted delay; false when the wait was cancelled (reset, close, or the caller hung up),
   * in which case the connection is dropped instead of answered with stale state.
   */
  private async waitBeforeAnswering(delayMs: number, res: ServerResponse): Promise<boolean> {
    const callerGone = new AbortController();
    const onClose = (): void => callerGone.abort();
    res.once('close', onClose);
    const elapsed = await this.timers.sleep(delayMs, callerGone.signal);
    res.off('close', onClose);
    if (!elapsed && !res.destroyed) res.destroy();
    return elapsed && !res.destroyed;
  }

  /** Runs on the first receipt of a requestNo only: one set of callbacks per request, not per attempt. */
  private async startCallbacks(record: RequestRecord): Promise<void> {
    const directive = record.script.callback ?? {};
    const mode = directive.mode ?? 'after';
    if (mode === 'never' || record.callbackUrl === undefined) return;
    if (mode === 'before') {
      // A partner that calls back before answering the dispatch: the race the service must survive.
      if (directive.delayMs !== undefined && !(await this.timers.sleep(directive.delayMs))) return;
      await this.sendCallbacks(record, directive, this.state.generation);
      return;
    }
    this.sendCallbacksLater(record, directive, directive.delayMs ?? this.options.defaultCallbackDelayMs).catch((error: unknown) =>
      this.options.logger.error({ err: error, requestNo: record.requestNo }, 'simulator callback failed unexpectedly'),
    );
  }

  private async sendCallbacksLater(record: RequestRecord, directive: CallbackDirective, delayMs: number): Promise<void> {
    const generation = this.state.generation;
    if (!(await this.timers.sleep(delayMs))) return;
    await this.sendCallbacks(record, directive, generation);
  }

  /** Sends `times` copies one after another, sharing one webhook-id unless `distinctIds` (duplicate delivery). */
  private async sendCallbacks(record: RequestRecord, directive: CallbackDirective, generation: number): Promise<void> {
    const url = record.callbackUrl;
    if (url === undefined) return;
    const sharedId = this.sender.newMessageId();
    const hooks = {
      isCurrent: (): boolean => !this.closed && this.state.generation === generation,
      onAttempt: (answer: CallbackAnswer, accepted: boolean): void => this.onCallbackAttempt(record, answer, accepted),
    };
    const copies = directive.times ?? 1;
    for (let copy = 0; copy < copies && hooks.isCurrent(); copy += 1) {
      const webhookId = directive.distinctIds === true && copy > 0 ? this.sender.newMessageId() : sharedId;
      const body = JSON.stringify(buildReport(record.requestNo, reportedOutcome(record), record.script));
      await this.sender.deliver({ url, webhookId, body }, hooks);
    }
  }

  private onCallbackAttempt(record: RequestRecord, answer: CallbackAnswer, accepted: boolean): void {
    this.state.recordCallbackAttempt(record, answer, accepted);
    if (!accepted) this.options.logger.debug({ requestNo: record.requestNo, answer }, 'simulator callback not accepted');
  }
}

/** Checks the protocol's dispatch shape; returns a problem text for a 400 when it does not fit. */
function parseDispatchBody(body: unknown, callbackBaseUrl: string | undefined): DispatchRequest | string {
  if (!isPlainObject(body)) return 'body must be a JSON object';
  const { requestNo, payload, callbackUrl } = body;
  if (typeof requestNo !== 'string' || requestNo === '') return 'requestNo must be a non-empty string';
  if (callbackUrl !== undefined && (typeof callbackUrl !== 'string' || !/^https?:\/\//.test(callbackUrl) || !URL.canParse(callbackUrl))) {
    return 'callbackUrl must be an http(s) URL';
  }
  if (callbackUrl !== undefined && callbackBaseUrl !== undefined && !isUnder(callbackUrl, callbackBaseUrl)) {
    return `callbackUrl must be under ${callbackBaseUrl}`;
  }
  return { requestNo, payload, callbackUrl };
}

function finalBodyStatus(directive: DispatchDirective): FinalStatus | undefined {
  const bodyStatus = directive.bodyStatus;
  return bodyStatus === 'succeeded' || bodyStatus === 'failed' ? bodyStatus : undefined;
}

/** True when `url` has the origin of `base` and a path below base's path (compared after URL parsing). */
function isUnder(url: string, base: string): boolean {
  const u = new URL(url);
  const b = new URL(base);
  const basePath = b.pathname.endsWith('/') ? b.pathname : `${b.pathname}/`;
  return u.origin === b.origin && u.username === '' && u.password === '' && u.pathname.startsWith(basePath);
}
