// Dedicated worker: hosts the wasm engine and hands it one request at a time, so a long request
// (generation) never interleaves with the next one.
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

scope.onmessage = (message: MessageEvent<Request>) => {
  queue = queue
    .then(async () => (await engine).handle(message.data))
    .catch((err: unknown) => {
      // A Rust panic surfaces as a rejected promise (RuntimeError: unreachable); its message went to
      // the console through console_error_panic_hook.
      post({ type: "error", code: loadFailed ? "wasm-load" : "panic", message: String(err) });
    });
};
