/**
 * A local web server for the dashboard and the explorer: listen, give the address, stop.
 *
 * Two guards sit in front of every request. Bound to loopback (the default), only requests
 * whose Host header names this machine (localhost, 127.0.0.1, [::1]) are served: a web page
 * elsewhere cannot reach the server by pointing its own name at 127.0.0.1 (DNS rebinding).
 * Bound beyond loopback (`--host 0.0.0.0`), any name may reach it, so a random token is put
 * in the address: a request must carry it (in the query, or the cookie set on the first
 * request that did).
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
} from "node:http";
import { type AddressInfo, isIP } from "node:net";

export interface LocalServer {
  url: string;
  server: Server;
  /** Stop: `beforeClose` runs first (to end streams), then every connection is dropped. */
  close(): Promise<void>;
}

const LOCAL_NAMES = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);
const COOKIE = "tessera_token";

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  if (host === "localhost" || host === "::1") return true;
  return isIP(host) === 4 && host.startsWith("127.");
}

/** The host name of a Host header, without its port. */
function hostName(header: string | undefined): string {
  const h = (header ?? "").trim().toLowerCase();
  if (h.startsWith("[")) return h.slice(0, h.indexOf("]") + 1);
  const colon = h.lastIndexOf(":");
  return colon >= 0 ? h.slice(0, colon) : h;
}

function sameToken(given: string | undefined | null, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

function cookieToken(req: IncomingMessage): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [k, v] = part.trim().split("=");
    if (k === COOKIE) return v;
  }
  return undefined;
}

function refuse(res: ServerResponse, message: string): void {
  res.writeHead(403, { "content-type": "text/plain; charset=utf-8" }).end(`${message}\n`);
}

export async function listen(
  handler: RequestListener,
  o: { host?: string; port?: number; beforeClose?: () => void },
): Promise<LocalServer> {
  const host = o.host ?? "127.0.0.1";
  const local = isLoopback(host);
  const token = local ? undefined : randomBytes(18).toString("base64url");
  const guarded: RequestListener = (req, res) => {
    if (local && !LOCAL_NAMES.has(hostName(req.headers.host)))
      return refuse(
        res,
        `host ${JSON.stringify(req.headers.host ?? "")} not allowed: this server answers to localhost only (start it with --host to serve other names)`,
      );
    if (token !== undefined) {
      const url = new URL(req.url ?? "/", "http://localhost");
      const inQuery = url.searchParams.get("token");
      if (sameToken(inQuery, token))
        res.setHeader("set-cookie", `${COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/`);
      else if (!sameToken(cookieToken(req), token))
        return refuse(res, "this address needs the token printed when the server started");
    }
    handler(req, res);
  };
  const server = createServer(guarded);
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(o.port ?? 0, host, res);
  });
  const addr = server.address() as AddressInfo;
  const shown = isIP(host) === 6 ? `[${host}]` : host;
  return {
    url: `http://${shown}:${addr.port}/${token ? `?token=${token}` : ""}`,
    server,
    close: () =>
      new Promise<void>((res) => {
        o.beforeClose?.();
        server.closeAllConnections();
        server.close(() => res());
      }),
  };
}
