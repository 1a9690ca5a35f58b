import type { Clock } from '../clock';
import type { PartnerConfig } from '../config/partners';
import { PartnerClient } from './partner-client';

/** The configured partners by id, each with its HTTP client. The only way the rest of the code reaches a partner. */
export class PartnerRegistry {
  private readonly byId: ReadonlyMap<string, PartnerClient>;

  constructor(configs: readonly PartnerConfig[], clock: Clock) {
    this.byId = new Map(configs.map((c) => [c.id, new PartnerClient(c, clock)]));
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
