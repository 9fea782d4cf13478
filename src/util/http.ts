/** A local web server for the dashboard and the explorer: listen, give the address, stop. */
import { createServer, type RequestListener, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface LocalServer {
  url: string;
  server: Server;
  /** Stop: `beforeClose` runs first (to end streams), then every connection is dropped. */
  close(): Promise<void>;
}

export async function listen(
  handler: RequestListener,
  o: { host?: string; port?: number; beforeClose?: () => void },
): Promise<LocalServer> {
  const host = o.host ?? "127.0.0.1";
  const server = createServer(handler);
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(o.port ?? 0, host, res);
  });
  const addr = server.address() as AddressInfo;
  return {
    url: `http://${host}:${addr.port}/`,
    server,
    close: () =>
      new Promise<void>((res) => {
        o.beforeClose?.();
        server.closeAllConnections();
        server.close(() => res());
      }),
  };
}
