import { request } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { isLoopback, type LocalServer, listen } from "../../src/util/http.ts";

let server: LocalServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/** One GET with the headers given (fetch cannot set Host). */
function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; cookie?: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, body, cookie: res.headers["set-cookie"]?.[0] }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

const hello = () =>
  listen((_req, res) => res.end("hello"), { host: "127.0.0.1" }).then((s) => {
    server = s;
    return s;
  });

describe("local web server guards", () => {
  it("knows loopback addresses", () => {
    expect(["127.0.0.1", "127.1.2.3", "::1", "localhost"].every(isLoopback)).toBe(true);
    expect(["0.0.0.0", "192.168.1.2", "::", "example.com"].some(isLoopback)).toBe(false);
  });

  it("on loopback, answers to localhost names and refuses any other Host header", async () => {
    const s = await hello();
    const port = new URL(s.url).port;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, "localhost"])
      expect(await get(s.url, { host })).toMatchObject({ status: 200, body: "hello" });
    for (const host of [`evil.example:${port}`, "evil.example", `127.0.0.1.evil.example:${port}`]) {
      const r = await get(s.url, { host });
      expect(r.status).toBe(403);
      expect(r.body).toMatch(/not allowed/);
    }
  });

  it("bound beyond loopback, puts a random token in the address and refuses requests without it", async () => {
    server = await listen((_req, res) => res.end("hello"), { host: "0.0.0.0" });
    const url = new URL(server.url);
    const token = url.searchParams.get("token") ?? "";
    expect(token.length).toBeGreaterThanOrEqual(20);
    const base = `http://127.0.0.1:${url.port}`;
    const ok = await get(`${base}/?token=${token}`, { host: `some.name:${url.port}` });
    expect(ok).toMatchObject({ status: 200, body: "hello" });
    expect(ok.cookie).toMatch(/HttpOnly/);
    // the page's own requests carry the cookie instead
    const cookie = (ok.cookie ?? "").split(";")[0];
    expect((await get(`${base}/api/x`, { cookie })).status).toBe(200);
    for (const bad of [`${base}/`, `${base}/?token=${token.slice(1)}x`, `${base}/?token=`])
      expect((await get(bad)).status).toBe(403);
    expect((await get(`${base}/`, { cookie: "tessera_token=nope" })).status).toBe(403);
    // a second server draws another token
    const other = await listen((_req, res) => res.end(), { host: "0.0.0.0" });
    expect(new URL(other.url).searchParams.get("token")).not.toBe(token);
    await other.close();
  });
});
