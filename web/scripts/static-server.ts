// A small static file server for dist/ (and, beside it, a local model folder under /models/), used by
// `scripts/serve.sh` and by the end-to-end tests. Serves `.wasm` as application/wasm and honours
// single byte ranges, as a CDN does for resumable downloads.
import { createReadStream, promises as fs } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";

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
  host?: string;
  port?: number;
}

/** Resolves `urlPath` inside `base`, refusing anything that escapes it. */
function resolveInside(base: string, urlPath: string): string | null {
  const decoded = decodeURIComponent(urlPath);
  const full = path.resolve(base, "." + path.posix.normalize("/" + decoded));
  return full === base || full.startsWith(base + path.sep) ? full : null;
}

async function serveFile(req: IncomingMessage, res: ServerResponse, file: string): Promise<void> {
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

export async function startServer(options: ServerOptions): Promise<{ server: Server; url: string }> {
  const root = path.resolve(options.root);
  const models = options.models ? path.resolve(options.models) : null;
  const server = createServer((req, res) => {
    const urlPath = new URL(req.url ?? "/", "http://localhost").pathname;
    const [base, rest] =
      models && urlPath.startsWith("/models/") ? [models, urlPath.slice("/models".length)] : [root, urlPath];
    const file = resolveInside(base, rest);
    if (!file || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(file ? 405 : 403, { "content-type": "text/plain" }).end();
      return;
    }
    serveFile(req, res, file).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(err));
    });
  });
  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://${host}:${port}/` };
}
