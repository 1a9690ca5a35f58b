import { readFileSync } from 'node:fs';

/** The `Vm*`/`Rss*` lines of /proc/<pid>/status in kB; undefined once the process is gone. */
export function readMemoryKb(pid: number): { rssKb: number; hwmKb: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : Number.NaN;
  };
  return { rssKb: field('VmRSS'), hwmKb: field('VmHWM') };
}

export interface RssReport {
  /** Highest VmRSS seen by sampling while the sampler ran. */
  peakSampledMb: number;
  /** VmHWM when stopped: the peak over the whole life of the process (start-up and warm-up included). */
  hwmMb: number;
  /** VmRSS at start() and at stop(). */
  firstMb: number;
  lastMb: number;
  meanMb: number;
  samples: number;
  /** VmRSS (MB) once a second, for a look at the trend in latest.json. */
  perSecondMb: number[];
}

const MB = 1024;

/** Samples VmRSS of one process every `intervalMs` (Linux /proc); `stop()` also reads VmHWM. */
export class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  private peakKb = 0;
  private sumKb = 0;
  private samples = 0;
  private lastKb = Number.NaN;
  private firstKb = Number.NaN;
  private readonly perSecondKb: number[] = [];

  constructor(
    private readonly pid: number,
    private readonly intervalMs = 100,
  ) {}

  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    return this;
  }

  private sample(): void {
    const m = readMemoryKb(this.pid);
    if (!m || !Number.isFinite(m.rssKb)) return;
    if (this.samples % Math.max(1, Math.round(1000 / this.intervalMs)) === 0) this.perSecondKb.push(m.rssKb);
    this.samples += 1;
    this.sumKb += m.rssKb;
    this.lastKb = m.rssKb;
    if (Number.isNaN(this.firstKb)) this.firstKb = m.rssKb;
    if (m.rssKb > this.peakKb) this.peakKb = m.rssKb;
  }

  stop(): RssReport {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
    const m = readMemoryKb(this.pid);
    return {
      peakSampledMb: this.peakKb / MB,
      hwmMb: (m?.hwmKb ?? Number.NaN) / MB,
      firstMb: this.firstKb / MB,
      lastMb: this.lastKb / MB,
      meanMb: this.samples ? this.sumKb / this.samples / MB : Number.NaN,
      samples: this.samples,
      perSecondMb: this.perSecondKb.map((kb) => Math.round((kb / MB) * 10) / 10),
    };
  }
}
