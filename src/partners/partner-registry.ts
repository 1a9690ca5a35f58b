import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import type { Metrics } from '../observability/metrics';
import { PartnerClient } from './partner-client';
import { PartnerGuard } from './partner-guard';

/** The configured partners by id, each with its HTTP client. The only way the rest of the code reaches a partner. */
export class PartnerRegistry {
  private readonly byId: ReadonlyMap<string, PartnerClient>;

  /** With `protection`, every call goes through the partner's breaker and shared rate limit. */
  constructor(configs: readonly PartnerConfig[], clock: Clock, protection?: { pool: Pool; metrics: Metrics; logger: Logger }) {
    this.byId = new Map(
      configs.map((c) => [
        c.id,
        new PartnerClient(c, clock, protection ? new PartnerGuard(c, protection.pool, protection.metrics, protection.logger) : undefined),
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

  close(): void {
    for (const client of this.byId.values()) client.close();
  }
}
