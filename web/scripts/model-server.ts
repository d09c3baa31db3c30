// The local "CDN" for development and tests: serves diffusers model folders with Range support,
// Content-Length, strong ETags and CORS, and can inject faults, one-shot per run or on every request:
//
//   reset:N     send N body bytes, then reset the connection
//   truncate:N  send N body bytes of the announced length, then close the connection cleanly
//   status:C    answer HTTP C (500, 503, ...) with no body
//   flip:N      send everything, with the byte at file offset N flipped (x ^ 0xff)
//   stall:N     send N body bytes, then nothing (the connection stays open)
//   extra:N     send N bytes (spaces) more than the file has, Content-Length counting them
//   ignorerange answer a Range request with 200 and the whole file
//   norange     answer a Range request with 206 but no Content-Range
//   norangelength  the same without Content-Length either (chunked): nothing tells where it starts
//   hiderange   send Content-Range without exposing it to CORS (the page cannot read it)
//   badrange    send a Content-Range that starts one byte later than the bytes sent
//   redirect    answer 302 to the same URL on the other loopback origin (127.0.0.1 <-> localhost)
//
// Per run: `POST /_faults` with `[{"path": "unet/diffusion_pytorch_model.safetensors", "fault": "reset:1000"}]`
// (each fires once, on the next request whose path ends with `path`), or `startModelServer({faults})`, or
// `npm run serve -- --fault unet/x.safetensors=reset:1000`. Per request: prefix the URL path with
// `/_fault/<fault>/` (`/_fault/status:503/models/tiny-sd/unet/config.json`); put it in a manifest's
// `base_url` to make every file request fail that way. `GET /_stats` reports requests and body bytes
// sent per path; `DELETE /_stats` clears them.
//
// `<model>/manifest.json` is generated (the `sd manifest` format: every file's path, size, sha256) when
// the folder has none, and cached.
import { createHash } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";

/** How long after the last byte a reset or truncation happens. */
const FAULT_DELAY_MS = 1000;

export type Fault =
  | { kind: "reset"; after: number }
  | { kind: "truncate"; after: number }
  | { kind: "status"; code: number }
  | { kind: "flip"; offset: number }
  | { kind: "stall"; after: number }
  | { kind: "extra"; bytes: number }
  | { kind: "ignorerange" | "norange" | "norangelength" | "hiderange" | "badrange" | "redirect" };

/** Faults that take no argument. */
const PLAIN_FAULTS = ["ignorerange", "norange", "norangelength", "hiderange", "badrange", "redirect"] as const;

export interface FaultRule {
  /** Matches request paths ending with this. */
  path: string;
  fault: string;
}

export function parseFault(spec: string): Fault {
  const [kind, arg] = spec.split(":");
  const plain = PLAIN_FAULTS.find((k) => k === kind);
  if (plain) {
    if (arg !== undefined) throw new Error(`bad fault ${JSON.stringify(spec)}: ${plain} takes no argument`);
    return { kind: plain };
  }
  const n = Number(arg);
  if (!Number.isInteger(n) || n < 0) throw new Error(`bad fault ${JSON.stringify(spec)}: need kind:N`);
  switch (kind) {
    case "reset":
    case "truncate":
    case "stall":
      return { kind, after: n };
    case "status":
      return { kind, code: n };
    case "flip":
      return { kind, offset: n };
    case "extra":
      return { kind, bytes: n };
    default:
      throw new Error(
        `unknown fault kind ${JSON.stringify(kind)} (reset, truncate, status, flip, stall, extra, ${PLAIN_FAULTS.join(", ")})`,
      );
  }
}

export interface Stats {
  requests: Record<string, number>;
  bytes: Record<string, number>;
}

export class ModelServer {
  readonly stats: Stats = { requests: {}, bytes: {} };
  private rules: { path: string; fault: Fault }[] = [];
  private manifests = new Map<string, string>();

  constructor(readonly root: string) {}

  /** Queues one-shot faults (validated now). */
  addFaults(rules: FaultRule[]): void {
    for (const r of rules) this.rules.push({ path: r.path, fault: parseFault(r.fault) });
  }

  clearFaults(): void {
    this.rules = [];
  }

  pendingFaults(): number {
    return this.rules.length;
  }

  resetStats(): void {
    this.stats.requests = {};
    this.stats.bytes = {};
  }

  private takeFault(urlPath: string): Fault | undefined {
    const i = this.rules.findIndex((r) => urlPath.endsWith(r.path));
    return i < 0 ? undefined : this.rules.splice(i, 1)[0]!.fault;
  }

  /** Handles `/_faults`, `/_stats`, and files under the root (`urlPath` relative to it). */
  async handle(req: IncomingMessage, res: ServerResponse, urlPath: string): Promise<void> {
    res.setHeader("access-control-allow-origin", "*");
    res.setHeader("access-control-expose-headers", "content-length, content-range, etag, accept-ranges");
    if (req.method === "OPTIONS") {
      res.writeHead(204, {
        "access-control-allow-methods": "GET, HEAD, POST, DELETE",
        "access-control-allow-headers": "range, content-type",
        "access-control-max-age": "600",
      });
      return void res.end();
    }
    if (urlPath === "/_faults" && req.method === "POST") {
      let body = "";
      for await (const chunk of req) body += String(chunk);
      try {
        this.addFaults(JSON.parse(body) as FaultRule[]);
      } catch (err) {
        return void res.writeHead(400, { "content-type": "text/plain" }).end(String(err));
      }
      return void res.writeHead(204).end();
    }
    if (urlPath === "/_stats") {
      if (req.method === "DELETE") this.resetStats();
      return void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(this.stats));
    }
    if (urlPath === "/index.json" && (req.method === "GET" || req.method === "HEAD")) {
      const body = JSON.stringify(await this.index());
      return void res.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache" }).end(body);
    }
    let fault: Fault | undefined;
    const prefixed = /^\/_fault\/([^/]+)(\/.*)$/.exec(urlPath);
    if (prefixed) {
      try {
        fault = parseFault(decodeURIComponent(prefixed[1]!));
      } catch (err) {
        return void res.writeHead(400, { "content-type": "text/plain" }).end(String(err));
      }
      urlPath = prefixed[2]!;
    }
    if (req.method !== "GET" && req.method !== "HEAD") return void res.writeHead(405).end();
    const file = resolveInside(this.root, urlPath);
    if (!file) return void res.writeHead(403).end();
    fault ??= this.takeFault(urlPath);
    this.stats.requests[urlPath] = (this.stats.requests[urlPath] ?? 0) + 1;
    if (fault?.kind === "status") {
      return void res.writeHead(fault.code, { "content-type": "text/plain" }).end();
    }
    if (fault?.kind === "redirect") {
      const host = req.headers.host ?? "";
      const other = host.startsWith("127.0.0.1") ? host.replace("127.0.0.1", "localhost") : host.replace("localhost", "127.0.0.1");
      return void res.writeHead(302, { location: `http://${other}${req.url ?? "/"}` }).end();
    }
    let body: Buffer | null = null;
    let stat = await fs.stat(file).catch(() => null);
    if (!stat?.isFile() && path.basename(file) === "manifest.json") {
      body = Buffer.from(await this.manifest(path.dirname(file)));
    } else if (!stat?.isFile()) {
      return void res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    }
    const size = body ? body.length : stat!.size;
    const etag = body
      ? `"${createHash("sha256").update(body).digest("hex").slice(0, 16)}"`
      : `"${stat!.size.toString(16)}-${Math.floor(stat!.mtimeMs).toString(16)}"`;
    const headers: Record<string, string | number> = {
      "content-type": contentType(file),
      "accept-ranges": "bytes",
      "cache-control": "no-cache",
      etag,
    };
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = fault?.kind === "ignorerange" ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      if (start > end || start >= size) {
        return void res.writeHead(416, { "content-range": `bytes */${size}` }).end();
      }
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${size}`;
      if (fault?.kind === "norange" || fault?.kind === "norangelength") delete headers["content-range"];
      if (fault?.kind === "badrange") headers["content-range"] = `bytes ${start + 1}-${end}/${size}`;
      if (fault?.kind === "hiderange") res.setHeader("access-control-expose-headers", "content-length, etag, accept-ranges");
    }
    const extra = fault?.kind === "extra" ? fault.bytes : 0;
    headers["content-length"] = end - start + 1 + extra;
    if (fault?.kind === "norangelength" && range) delete headers["content-length"];
    res.writeHead(status, headers);
    if (req.method === "HEAD") return void res.end();
    const count = (n: number): void => {
      this.stats.bytes[urlPath] = (this.stats.bytes[urlPath] ?? 0) + n;
    };
    const stream = body ? null : createReadStream(file, { start, end });
    // Without a fault: stream the file (or the generated manifest).
    if (!fault) {
      if (body) {
        count(end - start + 1);
        return void res.end(body.subarray(start, end + 1));
      }
      stream!.on("data", (chunk) => count(chunk.length));
      stream!.pipe(res);
      return;
    }
    const content = body ? body.subarray(start, end + 1) : await fs.readFile(file).then((b) => b.subarray(start, end + 1));
    stream?.destroy();
    const f = fault;
    switch (f.kind) {
      case "extra": {
        const more = Buffer.concat([content, Buffer.alloc(f.bytes, 0x20)]);
        count(more.length);
        return void res.end(more);
      }
      case "ignorerange":
      case "norange":
      case "norangelength":
      case "hiderange":
      case "badrange":
      case "redirect":
        // Headers only (above): the body as asked.
        count(content.length);
        return void res.end(content);
      case "flip": {
        const copy = Buffer.from(content);
        const at = f.offset - start;
        if (at >= 0 && at < copy.length) copy[at] = copy[at]! ^ 0xff;
        count(copy.length);
        return void res.end(copy);
      }
      case "reset":
      case "truncate":
      case "stall": {
        const part = content.subarray(0, Math.min(f.after, content.length));
        count(part.length);
        res.write(part, () => {
          // The bytes are on the wire; break the connection a moment later, as a real network would.
          // (Chrome drops bytes it has buffered but not yet handed to the page when a connection
          // errors, so an instant reset would also take away data the client never saw.)
          setTimeout(() => {
            if (f.kind === "reset") res.socket?.resetAndDestroy();
            else if (f.kind === "truncate") res.socket?.end();
            // stall: leave the connection open; the client gives up and resumes.
          }, FAULT_DELAY_MS);
        });
        return;
      }
    }
  }

  /** The model folders served (those with a `model_index.json`), for the app's model picker. */
  async index(): Promise<{ models: { name: string; manifest: string }[] }> {
    const models: { name: string; manifest: string }[] = [];
    for (const entry of await fs.readdir(this.root, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const ok = await fs.access(path.join(this.root, entry.name, "model_index.json")).then(() => true, () => false);
      if (ok) models.push({ name: entry.name, manifest: `${entry.name}/manifest.json` });
    }
    models.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { models };
  }

  /** The `sd manifest` JSON of a model folder (generated once). */
  private async manifest(dir: string): Promise<string> {
    const cached = this.manifests.get(dir);
    if (cached) return cached;
    const files: { path: string; size: number; sha256: string }[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const entry of await fs.readdir(d, { withFileTypes: true })) {
        const full = path.join(d, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.isFile()) {
          const data = await fs.readFile(full);
          files.push({
            path: path.relative(dir, full).split(path.sep).join("/"),
            size: data.length,
            sha256: createHash("sha256").update(data).digest("hex"),
          });
        }
      }
    };
    await fs.access(path.join(dir, "model_index.json"));
    await walk(dir);
    files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    const text = JSON.stringify({ files }, null, 2);
    this.manifests.set(dir, text);
    return text;
  }
}

const TYPES: Record<string, string> = {
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
};

function contentType(file: string): string {
  return TYPES[path.extname(file)] ?? "application/octet-stream";
}

/** Resolves `urlPath` inside `base`, refusing anything that escapes it. */
export function resolveInside(base: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  const full = path.resolve(base, "." + path.posix.normalize("/" + decoded));
  return full === base || full.startsWith(base + path.sep) ? full : null;
}

/** A model server on its own port (another origin than the app, as a CDN is). */
export async function startModelServer(options: {
  root: string;
  host?: string;
  port?: number;
  faults?: FaultRule[];
}): Promise<{ server: Server; url: string; models: ModelServer }> {
  const models = new ModelServer(path.resolve(options.root));
  if (options.faults) models.addFaults(options.faults);
  const server = createServer((req, res) => {
    const urlPath = new URL(req.url ?? "/", "http://localhost").pathname;
    models.handle(req, res, urlPath).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(err));
    });
  });
  // Keep-alive sockets would hold `server.close()` open after a stall fault.
  server.keepAliveTimeout = 1000;
  return { server, url: await listen(server, options), models };
}

/** Starts `server` on `host:port` (default 127.0.0.1 and any free port); its base URL. */
export async function listen(server: Server, options: { host?: string; port?: number }): Promise<string> {
  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return `http://${host}:${port}/`;
}
