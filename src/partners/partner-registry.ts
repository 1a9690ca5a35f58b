import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import type { Metrics } from '../observability/metrics';
import { PartnerClient } from './partner-client';
import { AxiosExchange, type PartnerExchange } from './partner-exchange';
import { PartnerGuard } from './partner-guard';
import { ThreadExchange } from './thread-exchange';

/** The configured partners by id, each with its HTTP client. The only way the rest of the code reaches a partner. */
export class PartnerRegistry {
  private readonly byId: ReadonlyMap<string, PartnerClient>;
  private readonly exchange: PartnerExchange;

  /**
   * With `protection`, every call goes through the partner's breaker and shared rate limit. With
   * `ioThreads` above 0 (PARTNER_IO_THREADS) the HTTP runs on that many worker threads; 0 keeps it on this one.
   */
  constructor(
    configs: readonly PartnerConfig[],
    clock: Clock,
    protection: { pool: Pool; metrics: Metrics; logger: Logger } | undefined,
    ioThreads: number,
  ) {
    this.exchange =
      ioThreads > 0
        ? new ThreadExchange(configs, ioThreads, { logger: protection?.logger, onUnexpectedExit: () => protection?.metrics.partnerIoThreadExits.inc() })
        : new AxiosExchange(configs);
    this.byId = new Map(
      configs.map((c) => [
        c.id,
        new PartnerClient(c, clock, this.exchange, protection ? new PartnerGuard(c, protection.pool, protection.metrics, protection.logger) : undefined),
      ]),
    );
  }

  get(id: string): PartnerClient | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  list(): PartnerClient[] {
    return [...this.byId.values()];
  }

  /** Closes the partner connections (and threads); safe to call twice. */
  close(): void {
    this.exchange.close();
  }
}
