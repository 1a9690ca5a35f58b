import pino from 'pino';
import { loadSimulatorConfig } from '../config/simulator-config';
import { startSimulator } from './simulator';

/**
 * `npm run simulator`: the bundled partner as its own process, for the demo and for benchmarks that
 * must not share an event loop with the service. Configured from SIM_* variables (see simulator-config).
 */
async function main(): Promise<void> {
  const config = loadSimulatorConfig(process.env);
  const logger = pino({ name: 'partner-simulator', level: config.logLevel });
  const simulator = await startSimulator({
    host: config.host,
    port: config.port,
    secrets: [...config.secrets],
    defaultCallbackDelayMs: config.callbackDelayMs,
    unknownStatus: config.unknownStatus,
    logger,
  });
  logger.info({ url: simulator.url }, 'partner simulator listening');

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'partner simulator stopping');
    simulator.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'partner simulator did not close cleanly');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((error: unknown) => {
  // The logger may not exist yet (bad config), so write one JSON line by hand, as pino would.
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`${JSON.stringify({ level: 60, time: Date.now(), name: 'partner-simulator', msg: message })}\n`);
  process.exit(1);
});
