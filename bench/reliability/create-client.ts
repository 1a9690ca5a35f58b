import type { PartnerOutcome, ToldTask } from './accounting';

/** A small seeded PRNG (mulberry32), so a failing run's task mix and chaos timings can be replayed with --seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A partner behaviour (simulator directives) and the outcome the partner reports under it. */
export interface TaskScript {
  name: string;
  weight: number;
  simulate: Record<string, unknown>;
  outcome: PartnerOutcome;
}

/**
 * The mix of partner behaviours the chaos load uses: each path by which a task can settle (callback,
 * callback before the dispatch answer, duplicate callbacks, status poll, dispatch answer) is exercised
 * while replicas, the database and the partner fail underneath.
 */
export const CHAOS_SCRIPTS: readonly TaskScript[] = [
  { name: 'callback', weight: 45, simulate: {}, outcome: 'succeeded' },
  { name: 'callback-failed', weight: 10, simulate: { outcome: 'failed', error: { code: 'E42', message: 'declined' } }, outcome: 'failed' },
  { name: 'callback-early', weight: 10, simulate: { callback: { mode: 'before' } }, outcome: 'succeeded' },
  { name: 'callback-twice', weight: 5, simulate: { callback: { times: 2 } }, outcome: 'succeeded' },
  { name: 'poll-only', weight: 15, simulate: { callback: { mode: 'never' } }, outcome: 'succeeded' },
  { name: 'poll-after-work', weight: 5, simulate: { callback: { mode: 'never' }, processingForMs: 2000 }, outcome: 'succeeded' },
  { name: 'dispatch-answer', weight: 10, simulate: { callback: { mode: 'never' }, dispatch: { bodyStatus: 'succeeded' } }, outcome: 'succeeded' },
];

export function pickScript(scripts: readonly TaskScript[], random: () => number): TaskScript {
  const total = scripts.reduce((a, s) => a + s.weight, 0);
  let r = random() * total;
  for (const s of scripts) {
    r -= s.weight;
    if (r < 0) return s;
  }
  return scripts[scripts.length - 1]!;
}

export interface CreateLoadOptions {
  baseUrl: string;
  apiKey: string;
  partner: string;
  /** New tasks per second. */
  ratePerSecond: number;
  scripts: readonly TaskScript[];
  random: () => number;
  /** Prefix of every requestNo (one per run). */
  prefix: string;
  /** A create not answered 201/200 within this long after its first attempt is given up. */
  giveUpAfterMs: number;
  /** One attempt's limit. */
  attemptTimeoutMs?: number;
}

/**
 * A client that creates tasks at a steady rate and retries each create (same requestNo, same body) until
 * it is answered 201 or 200, backing off on 5xx, 429 and network errors, as the service's clients are
 * told to. What it was told (requestNo → task id) is what the accounting holds the service to.
 */
export class CreateLoad {
  readonly attempted: string[] = [];
  readonly told: ToldTask[] = [];
  readonly answers: Record<string, number> = {};
  private readonly inFlight = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private counter = 0;

  constructor(private readonly opts: CreateLoadOptions) {}

  start(): void {
    const intervalMs = 1000 / this.opts.ratePerSecond;
    const started = Date.now();
    const tick = () => {
      // Catch up after a stalled event loop rather than drift below the rate.
      const due = Math.floor((Date.now() - started) / intervalMs) + 1;
      while (this.counter < due) this.launch();
      this.timer = setTimeout(tick, intervalMs);
    };
    tick();
  }

  /** Stops starting creates and waits for the ones in flight (answered or given up). */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  get pending(): number {
    return this.inFlight.size;
  }

  private launch(): void {
    this.counter += 1;
    const requestNo = `${this.opts.prefix}-${this.counter}`;
    const script = pickScript(this.opts.scripts, this.opts.random);
    this.attempted.push(requestNo);
    const run = this.createUntilAnswered(requestNo, script).finally(() => this.inFlight.delete(run));
    this.inFlight.add(run);
  }

  private count(key: string): void {
    this.answers[key] = (this.answers[key] ?? 0) + 1;
  }

  private async createUntilAnswered(requestNo: string, script: TaskScript): Promise<void> {
    const body = JSON.stringify({ partner: this.opts.partner, requestNo, kind: script.name, payload: { n: this.counter, simulate: script.simulate } });
    const deadline = Date.now() + this.opts.giveUpAfterMs;
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      let status: number | undefined;
      try {
        const res = await fetch(`${this.opts.baseUrl}/v1/tasks`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${this.opts.apiKey}` },
          body,
          signal: AbortSignal.timeout(this.opts.attemptTimeoutMs ?? 10_000),
        });
        status = res.status;
        this.count(String(status));
        const answer = (await res.json().catch(() => undefined)) as { id?: string } | undefined;
        if ((status === 201 || status === 200) && typeof answer?.id === 'string') {
          this.told.push({ requestNo, id: answer.id, outcome: script.outcome, script: script.name });
          return;
        }
        // A refusal of a create that was valid the first time is a finding; retrying it would not help.
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) return;
      } catch {
        this.count('network');
      }
      const backoff = Math.min(2000, 100 * 2 ** attempt) * (0.5 + this.opts.random());
      await new Promise((r) => setTimeout(r, backoff));
    }
  }
}
