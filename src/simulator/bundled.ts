import type { Logger } from 'pino';
import type { Config } from '../config/config';
import { isLoopbackHost } from '../config/config';
import { startSimulator, type Simulator } from './simulator';

/** Where the simulator beside the service listens: loopback only, whatever the service's own HOST. */
export const BUNDLED_SIMULATOR_HOST = '127.0.0.1';

/**
 * Starts the partner simulator beside the service for the bundled demo partners file. It listens on
 * loopback only (its `/_sim` control routes have no authentication, and it signs with the demo's public
 * secret) and calls back only the service's own PUBLIC_BASE_URL, so it can never be used to sign a
 * callback for another host.
 */
export async function startBundledSimulator(config: Config, logger: Logger): Promise<Simulator> {
  const partner = config.partners[0]!;
  const url = new URL(partner.baseUrl);
  if (!isLoopbackHost(url.hostname.replace(/^\[|\]$/g, ''))) {
    throw new Error(`the bundled partner's baseUrl ${partner.baseUrl} is not a loopback address; the simulator beside the service listens on ${BUNDLED_SIMULATOR_HOST} only`);
  }
  const simulator = await startSimulator({
    host: BUNDLED_SIMULATOR_HOST,
    port: Number(url.port),
    secrets: [...partner.callback.secrets],
    callbackBaseUrl: config.publicBaseUrl,
    logger: logger.child({ component: 'simulator' }),
  });
  logger.info({ url: simulator.url, partner: partner.id }, 'bundled partner simulator started');
  return simulator;
}
