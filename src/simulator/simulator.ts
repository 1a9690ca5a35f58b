import http from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import pino, { type Logger } from 'pino';
import { Webhook } from 'standardwebhooks';
import { PartnerSimulator, type UnknownStatusAnswer } from './partner-simulator';
import { createSimulatorListener, REQUEST_NO_PLACEHOLDER, type SimulatorPaths } from './simulator-routes';
import type { SimulatorStats } from './simulator-state';

export type { CallbackAnswer } from './callback-sender';
export type { UnknownStatusAnswer } from './partner-simulator';
export type { CallbackDirective, DispatchDirective, SimulationScript, StatusDirective } from './directives';
export type { RequestLogEntry, RequestStats, SimulatorStats, SimulatorTotals } from './simulator-state';

/** Named defaults of the simulator; the paths match the bundled partners file. */
export const SIMULATOR_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 0,
  defaultCallbackDelayMs: 100,
  dispatchPath: '/requests',
  statusPath: `/requests/${REQUEST_NO_PLACEHOLDER}`,
  /** Longer than any caller's idle keep-alive, so the simulator is never the side that closes a reused socket. */
  keepAliveTimeoutMs: 30_000,
});

/** How to start the simulator; only `secrets` is required. */
export interface SimulatorOptions {
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** Listen port; default 0, an ephemeral port (read it back from `url`). */
  port?: number;
  /**
   * Standard Webhooks secrets (`whsec_...`). Each callback carries one `v1,` signature per secret in one
   * `webhook-signature` header, as during a secret rotation. An empty list sends unsigned callbacks.
   */
  secrets: string[];
  /** Delay between first receipt and the callback when a task scripts none; default 100 ms. */
  defaultCallbackDelayMs?: number;
  /** Where the protocol is served; defaults `/requests` and `/requests/{requestNo}`. */
  paths?: { dispatch?: string; status?: string };
  /** Receives debug and error logs only; nothing is logged per request at info. */
  logger?: Logger;
  /**
   * What the status endpoint answers for a requestNo that was never dispatched: `'404'` (default, the
   * protocol's "never received"), or `'processing'` / `'succeeded'` / `'failed'` as if it had been.
   */
  unknownStatus?: UnknownStatusAnswer;
  /** Callbacks only to URLs under this base (see PartnerBehaviourOptions.callbackBaseUrl); unset: anywhere. */
  callbackBaseUrl?: string;
}

/** A running simulator. */
export interface Simulator {
  /** Base URL to put in a partner's `baseUrl`, e.g. `http://127.0.0.1:43123`. */
  url: string;
  /** A copy of everything counted since start or the last reset. */
  stats(): SimulatorStats;
  /** Forgets every request and counter and cancels pending callbacks, so tests sharing a simulator stay independent. */
  reset(): void;
  /** While down, every dispatch and status query answers 503 (counted as `rejectedWhileDown`, nothing else). */
  setDown(down: boolean): void;
  /** While `delayMs` > 0, every dispatch (received on arrival) and status query is answered that late; 0 ends it. */
  setSlow(delayMs: number): void;
  /** Stops the server, cancels pending timers and destroys the callback agents. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts the bundled fake partner: it speaks the partner protocol, follows the `payload.simulate`
 * directives of each task, sends signed callbacks and counts what it saw, so tests, the demo and the
 * benchmarks exercise the service against real HTTP.
 *
 * @example
 * const sim = await startSimulator({ secrets: [DEMO_PARTNER_SECRET] });
 * // ... point a partner's baseUrl at sim.url, create tasks ...
 * expect(sim.stats().byRequestNo['r-1']?.dispatches).toBe(1);
 * await sim.close();
 */
export async function startSimulator(opts: SimulatorOptions): Promise<Simulator> {
  const settings = resolveOptions(opts);
  const partner = new PartnerSimulator({
    secrets: settings.secrets,
    defaultCallbackDelayMs: settings.defaultCallbackDelayMs,
    logger: settings.logger,
    unknownStatus: settings.unknownStatus,
    ...(opts.callbackBaseUrl !== undefined ? { callbackBaseUrl: opts.callbackBaseUrl } : {}),
  });
  const server = http.createServer(createSimulatorListener(partner, settings.paths, settings.logger));
  server.keepAliveTimeout = SIMULATOR_DEFAULTS.keepAliveTimeoutMs;
  try {
    await listen(server, settings.port, settings.host);
  } catch (error) {
    partner.close();
    throw error;
  }
  const url = baseUrlOf(settings.host, (server.address() as AddressInfo).port);
  settings.logger.debug({ url }, 'partner simulator listening');
  let closing: Promise<void> | undefined;
  return {
    url,
    stats: () => partner.state.snapshot(),
    reset: () => partner.reset(),
    setDown: (down) => partner.setDown(down),
    setSlow: (delayMs) => partner.setSlow(delayMs),
    close: () => (closing ??= closeServer(server, partner)),
  };
}

interface ResolvedOptions {
  host: string;
  port: number;
  secrets: string[];
  defaultCallbackDelayMs: number;
  paths: SimulatorPaths;
  logger: Logger;
  unknownStatus: UnknownStatusAnswer;
}

/** Fails at start, not at the first callback, on a bad secret or path. */
function resolveOptions(opts: SimulatorOptions): ResolvedOptions {
  for (const secret of opts.secrets) new Webhook(secret); // throws on a secret that is not valid base64
  const paths: SimulatorPaths = {
    dispatch: opts.paths?.dispatch ?? SIMULATOR_DEFAULTS.dispatchPath,
    status: opts.paths?.status ?? SIMULATOR_DEFAULTS.statusPath,
  };
  if (!paths.dispatch.startsWith('/')) throw new Error(`dispatch path "${paths.dispatch}" must start with /`);
  if (!paths.status.startsWith('/') || !paths.status.includes(REQUEST_NO_PLACEHOLDER)) {
    throw new Error(`status path "${paths.status}" must start with / and contain ${REQUEST_NO_PLACEHOLDER}`);
  }
  const defaultCallbackDelayMs = opts.defaultCallbackDelayMs ?? SIMULATOR_DEFAULTS.defaultCallbackDelayMs;
  if (!Number.isFinite(defaultCallbackDelayMs) || defaultCallbackDelayMs < 0) throw new Error(`defaultCallbackDelayMs must be >= 0, got ${defaultCallbackDelayMs}`);
  return {
    host: opts.host ?? SIMULATOR_DEFAULTS.host,
    port: opts.port ?? SIMULATOR_DEFAULTS.port,
    secrets: [...opts.secrets],
    defaultCallbackDelayMs,
    paths,
    logger: opts.logger ?? pino({ level: 'silent' }),
    unknownStatus: opts.unknownStatus ?? '404',
  };
}

function listen(server: http.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** A URL a client can use: wildcard listen addresses become loopback, IPv6 gets brackets. */
function baseUrlOf(host: string, port: number): string {
  if (host === '0.0.0.0') return `http://127.0.0.1:${port}`;
  if (host === '::') return `http://[::1]:${port}`;
  return isIP(host) === 6 ? `http://[${host}]:${port}` : `http://${host}:${port}`;
}

/** Cancels the partner's timers first so no callback starts while the server drains, then drops every connection. */
function closeServer(server: http.Server, partner: PartnerSimulator): Promise<void> {
  partner.close();
  return new Promise<void>((resolve, reject) => {
    server.close((error) => (error === undefined ? resolve() : reject(error)));
    server.closeAllConnections();
  });
}
