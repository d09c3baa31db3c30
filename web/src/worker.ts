// Dedicated worker: hosts the wasm engine and hands it one request at a time, so a long request
// (download, generation) never interleaves with the next one. `cancel` skips the queue: it reaches the
// running request at once, and requests queued before it are answered `cancelled` without running.
import type { Request, WorkerEvent } from "./protocol";
import { loadWasm, type Engine } from "./wasm";

const scope = self as unknown as DedicatedWorkerGlobalScope;
const post = (event: WorkerEvent): void => scope.postMessage(event);

const engine: Promise<Engine> = loadWasm().then((wasm) => {
  const engine = new wasm.Engine((event) => scope.postMessage(event));
  post({ type: "ready" });
  return engine;
});
let loadFailed = false;
engine.catch((err: unknown) => {
  loadFailed = true;
  post({ type: "error", code: "wasm-load", message: String(err) });
});

let queue: Promise<void> = Promise.resolve();
/** Bumped by every cancel; a queued request that sees another value than at its arrival is dropped. */
let cancelEpoch = 0;

scope.onmessage = (message: MessageEvent<Request>) => {
  const request = message.data;
  if (request?.type === "cancel") {
    cancelEpoch += 1;
    void engine.then((e) => e.cancel()).catch(() => undefined);
    return;
  }
  const epoch = cancelEpoch;
  queue = queue
    .then(async () => {
      if (epoch !== cancelEpoch) {
        post({ type: "cancelled", phase: request.type === "generate" ? "encode" : "download" });
        return;
      }
      await (await engine).handle(request);
    })
    .catch((err: unknown) => {
      // A Rust panic surfaces as a rejected promise (RuntimeError: unreachable); its message went to
      // the console through console_error_panic_hook. The instance is not trusted after that: the page
      // restarts the worker (engine.ts).
      post({ type: "error", code: loadFailed ? "wasm-load" : "panic", message: String(err) });
    });
};
