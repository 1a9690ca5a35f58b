import dns from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';

/**
 * SSRF protection for client-chosen notification URLs. An address is allowed only when ipaddr.js
 * classifies it as public `unicast`: loopback, private (RFC 1918), link-local (169.254.169.254 included),
 * unique-local, CGNAT, unspecified, multicast, broadcast, reserved and the IPv6 forms that embed an IPv4
 * address (6to4, Teredo, NAT64) are all refused. IPv4-mapped IPv6 is judged as the IPv4 it carries.
 *
 * The check runs twice: at create (a clear 422 for the client) and at connect time against the address
 * actually dialled, through the agent's `lookup`, because DNS can answer differently between the two
 * (rebinding). Hosts in NOTIFY_ALLOWED_HOSTS skip both.
 */

/** Why an address was refused (the ipaddr.js range name), or undefined when it is public unicast. */
export function refusedRange(address: string): string | undefined {
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    parsed = ipaddr.process(address);
  } catch {
    return 'invalid';
  }
  const range = parsed.range();
  return range === 'unicast' ? undefined : range;
}

export class AddressRefusedError extends Error {
  override name = 'AddressRefusedError';
  readonly code = 'EADDRREFUSED_SSRF';
  constructor(
    readonly host: string,
    readonly address: string,
    readonly range: string,
  ) {
    super(`${host} resolves to ${address} (${range}), which notifications may not reach`);
  }
}

/** `dns.lookup(host, {all: true})`, injectable so tests can play a rebinding resolver without any traffic. */
export type Resolver = (host: string) => Promise<LookupAddress[]>;
export const systemResolver: Resolver = (host) => dns.promises.lookup(host, { all: true, verbatim: true });

/** Hostname of a URL without IPv6 brackets, lower case. */
export function bareHostname(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

/** Longest a create waits for DNS; past it the URL is accepted and checked at connect time as always. */
export const CREATE_LOOKUP_TIMEOUT_MS = 2000;

/** "localhost" and "*.localhost" are loopback by definition (RFC 6761), whatever a resolver says. */
function isLocalhostName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost') || host === 'localhost.';
}

export interface AddressGuardOptions {
  /** NOTIFY_ALLOWED_HOSTS: `host` or `host:port`, lower case. */
  allowedHosts: readonly string[];
  resolver?: Resolver;
}

export class AddressGuard {
  private readonly allowed: ReadonlySet<string>;
  private readonly resolver: Resolver;

  constructor(opts: AddressGuardOptions) {
    this.allowed = new Set(opts.allowedHosts);
    this.resolver = opts.resolver ?? systemResolver;
  }

  /** True when the URL's host (or host:port) is listed in NOTIFY_ALLOWED_HOSTS. */
  isAllowListed(url: URL): boolean {
    const host = url.hostname.toLowerCase();
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    return this.allowed.has(host) || this.allowed.has(bareHostname(url)) || this.allowed.has(`${host}:${port}`);
  }

  /**
   * The create-time check: undefined when the URL may be used, else the reason. A name that does not
   * resolve now is accepted (it is checked again at every connect); one that resolves to any refused
   * address is refused.
   */
  async refusalAtCreate(rawUrl: string): Promise<string | undefined> {
    let url: URL;
    try {
      url = new URL(rawUrl);
    } catch {
      return 'is not a URL';
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be http or https';
    if (this.isAllowListed(url)) return undefined;
    const host = bareHostname(url);
    if (isLocalhostName(host)) return `host ${host} is loopback`;
    if (ipaddr.isValid(host)) {
      const range = refusedRange(host);
      return range ? `address ${host} is ${range}` : undefined;
    }
    let addresses: LookupAddress[];
    let timer: NodeJS.Timeout | undefined;
    try {
      const timedOut = new Promise<LookupAddress[]>((resolve) => (timer = setTimeout(() => resolve([]), CREATE_LOOKUP_TIMEOUT_MS)));
      addresses = await Promise.race([this.resolver(host), timedOut]);
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
    for (const a of addresses) {
      const range = refusedRange(a.address);
      if (range) return `host ${host} resolves to ${a.address} (${range})`;
    }
    return undefined;
  }

  /**
   * The connect-time check for a URL whose host is an IP literal (Node never calls `lookup` for those).
   * Throws AddressRefusedError.
   */
  assertLiteralAllowed(url: URL): void {
    if (this.isAllowListed(url)) return;
    const host = bareHostname(url);
    if (isLocalhostName(host)) throw new AddressRefusedError(host, host, 'loopback');
    if (ipaddr.isValid(host)) {
      const range = refusedRange(host);
      if (range) throw new AddressRefusedError(host, host, range);
    }
  }

  /**
   * A `lookup` for http(s) agents that resolves, then refuses the connection when any address is not
   * public unicast: the check happens on the very addresses the socket will dial.
   */
  readonly guardedLookup: LookupFunction = (hostname, options, callback) => {
    const opts = options as LookupOptions;
    const host = hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
    const fail = (err: NodeJS.ErrnoException) => (callback as (e: NodeJS.ErrnoException) => void)(err);
    if (isLocalhostName(host)) return fail(new AddressRefusedError(host, host, 'loopback'));
    this.resolver(host).then(
      (found) => {
        const family = opts.family === 4 || opts.family === 6 ? opts.family : 0;
        const addresses = family === 0 ? found : found.filter((a) => a.family === family);
        if (addresses.length === 0) return fail(Object.assign(new Error(`no address for ${host}`), { code: 'ENOTFOUND' }));
        for (const a of addresses) {
          const range = refusedRange(a.address);
          if (range) return fail(new AddressRefusedError(host, a.address, range));
        }
        if (opts.all) (callback as (e: null, a: LookupAddress[]) => void)(null, addresses);
        else (callback as (e: null, a: string, f: number) => void)(null, addresses[0]!.address, addresses[0]!.family);
      },
      (err: NodeJS.ErrnoException) => fail(err),
    );
  };

  /** Keep-alive agents: guarded ones for everyone, plain ones for allow-listed hosts. */
  agents(maxSockets: number): { guarded: { http: http.Agent; https: https.Agent }; allowed: { http: http.Agent; https: https.Agent } } {
    const base = { keepAlive: true, maxSockets, maxFreeSockets: 64, scheduling: 'lifo' as const };
    return {
      guarded: { http: new http.Agent({ ...base, lookup: this.guardedLookup }), https: new https.Agent({ ...base, lookup: this.guardedLookup }) },
      allowed: { http: new http.Agent(base), https: new https.Agent(base) },
    };
  }
}
