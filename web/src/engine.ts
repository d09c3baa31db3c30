// The page's handle on the worker: posts typed requests, dispatches typed events.
import type { Request, WorkerEvent } from "./protocol";

export type Listener = (event: WorkerEvent) => void;

export class EngineClient {
  private readonly worker: Worker;
  private readonly listeners = new Set<Listener>();

  constructor() {
    // worker.js is bundled next to main.js; a module worker so it can import the wasm-bindgen glue.
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (message: MessageEvent<WorkerEvent>) => {
      for (const listener of this.listeners) listener(message.data);
    };
    this.worker.onerror = (err: ErrorEvent) => {
      const event: WorkerEvent = { type: "error", code: "wasm-load", message: err.message || "the worker failed to start" };
      for (const listener of this.listeners) listener(event);
    };
  }

  send(request: Request): void {
    this.worker.postMessage(request);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
