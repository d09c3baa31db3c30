// The service worker: serves the app shell (HTML, JS, wasm, CSS, icons) from a cache named after the
// build's version, so the app starts with no network; models never pass through here (the engine
// keeps them in IndexedDB). A new version installs beside the old one and waits: the page announces it
// and asks it to take over (`skip-waiting`) only when no generation is running, then reloads.

interface Precache {
  version: string;
  /** Paths relative to the service worker's scope. */
  files: string[];
}

const sw = self as unknown as ServiceWorkerGlobalScope & { __WEBSD_PRECACHE: Precache };
const { version, files } = sw.__WEBSD_PRECACHE;
const PREFIX = "websd-shell-";
const CACHE = `${PREFIX}${version}`;
const scope = new URL(sw.registration.scope);
const shell = new Set(files.map((f) => new URL(f, scope).href));
const INDEX = new URL("index.html", scope).href;

sw.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // `reload`: straight from the server, never an older copy from the HTTP cache.
      await cache.addAll([...shell].map((url) => new Request(url, { cache: "reload" })));
    })(),
  );
});

sw.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
      }
      await sw.clients.claim();
    })(),
  );
});

sw.addEventListener("message", (event) => {
  const data = event.data as { type?: string } | null;
  if (data?.type === "skip-waiting") void sw.skipWaiting();
  if (data?.type === "version") event.source?.postMessage({ type: "version", version });
});

sw.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || request.headers.has("range")) return;
  const url = new URL(request.url);
  url.search = "";
  url.hash = "";
  // Pages (any query, e.g. ?model=...) get the shell's index.html; other shell files come from the
  // cache; everything else (models under /models/, other origins) goes to the network untouched.
  const key = request.mode === "navigate" && url.href.startsWith(scope.href) ? INDEX : url.href;
  if (key !== INDEX && !shell.has(key)) return;
  event.respondWith(
    (async () => {
      const cached = await (await caches.open(CACHE)).match(key);
      return cached ?? fetch(request);
    })(),
  );
});
