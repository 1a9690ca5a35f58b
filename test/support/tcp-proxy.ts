import net from 'node:net';

/** A TCP forwarder on a free loopback port that can be switched on later: a database that "comes up". */
export interface TcpProxy {
  port: number;
  /** Starts forwarding to `target` (until then connections are refused: nothing listens). */
  open(target: { host: string; port: number }): Promise<void>;
  close(): Promise<void>;
}

export async function reserveTcpProxy(): Promise<TcpProxy> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  let server: net.Server | undefined;
  const sockets = new Set<net.Socket>();
  return {
    port,
    open: (target) =>
      new Promise<void>((resolve, reject) => {
        server = net.createServer((client) => {
          const upstream = net.connect(target.port, target.host);
          for (const s of [client, upstream]) {
            sockets.add(s);
            s.on('close', () => sockets.delete(s));
            s.on('error', () => undefined);
          }
          client.pipe(upstream).pipe(client);
        });
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve());
      }),
    close: async () => {
      for (const s of sockets) s.destroy();
      if (server) await new Promise<void>((resolve) => server!.close(() => resolve()));
    },
  };
}
