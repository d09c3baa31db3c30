// A small static file server for dist/ (and, beside it, local model folders under /models/, served by
// the fault-injecting model server of model-server.ts), used by `scripts/serve.sh` and by the
// end-to-end tests. Serves `.wasm` as application/wasm and honours single byte ranges. Every response
// carries the app's Content-Security-Policy as a header: the page's `<meta>` binds only the page,
// while a worker (worker.js, sw.js) obeys the policy of its own response.
import { createReadStream, promises as fs } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import path from "node:path";
import { listen, ModelServer, resolveInside, type FaultRule } from "./model-server";

const MIME: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".webmanifest": "application/manifest+json",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".map": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

export interface ServerOptions {
  /** Folder served at `/` (the built app). */
  root: string;
  /** Folder served at `/models/` (diffusers model folders and their manifests). */
  models?: string;
  /** One-shot faults for the model server (see model-server.ts). */
  faults?: FaultRule[];
  host?: string;
  port?: number;
  /** Origins added to the policy's `connect-src`: the loopback model servers a development or test
   * setup runs on other ports (exact origins, e.g. `http://127.0.0.1:9000`). The built policy has no
   * loopback: a deployed app never fetches from this machine. Models under /models/ are same-origin. */
  connectOrigins?: readonly string[];
  /** Development only (`scripts/serve.sh`): any port of this machine in `connect-src`, as the engine
   * allows any loopback model server when the app itself is served from loopback. */
  connectAnyLoopback?: boolean;
}

/** CSP sources for every port of this machine (development servers, never the built policy). */
export const ANY_LOOPBACK = ["http://127.0.0.1:*", "http://localhost:*"] as const;

/** The app's Content-Security-Policy, from its index.html `<meta>`: sent as a header too, since a
 * worker is bound by the policy of its own response, not by its page's `<meta>`. */
export async function appCsp(root: string): Promise<string | null> {
  const html = await fs.readFile(path.join(root, "index.html"), "utf8").catch(() => "");
  const meta = /<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"/i.exec(html);
  return meta ? meta[1]!.replace(/\s+/g, " ").trim() : null;
}

/** `csp` with `origins` appended to its `connect-src`. Each must be exactly an origin (scheme, host,
 * port: no path, no wildcard), so a development server widens the policy by what it runs and no more. */
export function withConnectOrigins(csp: string, origins: readonly string[]): string {
  for (const origin of origins) {
    const parsed = URL.canParse(origin) ? new URL(origin) : null;
    if (!parsed || parsed.origin !== origin) throw new Error(`connect origin ${JSON.stringify(origin)}: expected an origin such as http://127.0.0.1:9000`);
  }
  if (origins.length === 0) return csp;
  const directives = csp.split(";").map((d) => d.trim()).filter(Boolean);
  const at = directives.findIndex((d) => d.split(/\s+/)[0] === "connect-src");
  // Adding a connect-src where there is none would narrow default-src's fetches instead of widening them.
  if (at < 0) throw new Error(`the app's policy has no connect-src: ${csp}`);
  directives[at] = [directives[at], ...origins].join(" ");
  return directives.join("; ");
}

/** The origins of a server started on this machine (`http://127.0.0.1:PORT/`), under both names the
 * browser can reach it by (127.0.0.1 and localhost, same port), for `connectOrigins`. */
export function loopbackOrigins(serverUrl: string): string[] {
  const url = new URL(serverUrl);
  if (url.hostname !== "127.0.0.1" && url.hostname !== "localhost") throw new Error(`${serverUrl} is not on loopback`);
  return ["127.0.0.1", "localhost"].map((host) => `${url.protocol}//${host}:${url.port}`);
}

async function serveFile(req: IncomingMessage, res: ServerResponse, file: string, csp: string | null): Promise<void> {
  let stat = await fs.stat(file).catch(() => null);
  if (stat?.isDirectory()) {
    file = path.join(file, "index.html");
    stat = await fs.stat(file).catch(() => null);
  }
  if (!stat?.isFile()) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    return;
  }
  const headers: Record<string, string | number> = {
    "content-type": MIME[path.extname(file)] ?? "application/octet-stream",
    "accept-ranges": "bytes",
    "cache-control": "no-cache",
    ...(csp ? { "content-security-policy": csp } : {}),
  };
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  if (range) {
    const start = Number(range[1]);
    const end = range[2] ? Math.min(Number(range[2]), stat.size - 1) : stat.size - 1;
    if (start > end || start >= stat.size) {
      res.writeHead(416, { "content-range": `bytes */${stat.size}` }).end();
      return;
    }
    res.writeHead(206, { ...headers, "content-range": `bytes ${start}-${end}/${stat.size}`, "content-length": end - start + 1 });
    if (req.method === "HEAD") return void res.end();
    createReadStream(file, { start, end }).pipe(res);
    return;
  }
  res.writeHead(200, { ...headers, "content-length": stat.size });
  if (req.method === "HEAD") return void res.end();
  createReadStream(file).pipe(res);
}

export async function startServer(
  options: ServerOptions,
): Promise<{ server: Server; url: string; models: ModelServer | null }> {
  const root = path.resolve(options.root);
  const models = options.models ? new ModelServer(path.resolve(options.models)) : null;
  if (models && options.faults) models.addFaults(options.faults);
  const built = await appCsp(root);
  let csp = built && withConnectOrigins(built, options.connectOrigins ?? []);
  if (csp && options.connectAnyLoopback) csp = csp.replace(/(^|;\s*)connect-src([^;]*)/, (_m, a: string, b: string) => `${a}connect-src${b} ${ANY_LOOPBACK.join(" ")}`);
  const server = createServer((req, res) => {
    const urlPath = new URL(req.url ?? "/", "http://localhost").pathname;
    if (models && urlPath.startsWith("/models/")) {
      models.handle(req, res, urlPath.slice("/models".length)).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end(String(err));
      });
      return;
    }
    if (!models && urlPath === "/models/index.json") {
      // The app asks its development server for local models: none here.
      return void res.writeHead(200, { "content-type": "application/json" }).end('{"models":[]}');
    }
    const file = resolveInside(root, urlPath);
    if (!file || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(file ? 405 : 403, { "content-type": "text/plain" }).end();
      return;
    }
    serveFile(req, res, file, csp).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(err));
    });
  });
  return { server, url: await listen(server, options), models };
}
