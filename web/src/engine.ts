// The page's handle on the worker: posts typed requests, dispatches typed events. A panic leaves the
// wasm instance in an unknown state, so the worker is replaced by a fresh one (the page keeps running;
// stored models survive in IndexedDB).
import type { Request, WorkerEvent } from "./protocol";

export type Listener = (event: WorkerEvent) => void;

export class EngineClient {
  private worker!: Worker;
  private readonly listeners = new Set<Listener>();
  /** Workers started so far (1 + restarts). */
  starts = 0;

  constructor() {
    this.start();
  }

  private start(): void {
    this.starts += 1;
    // worker.js is bundled next to main.js; a module worker so it can import the wasm-bindgen glue.
    const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (message: MessageEvent<WorkerEvent>) => {
      const event = message.data;
      this.dispatch(event);
      if (event.type === "error" && event.code === "panic") this.restart();
    };
    worker.onerror = (err: ErrorEvent) => {
      this.dispatch({ type: "error", code: "wasm-load", message: err.message || "the worker failed to start" });
    };
    this.worker = worker;
  }

  /** Replaces the worker (after a panic); requests sent meanwhile go to the new one. */
  restart(): void {
    this.worker.terminate();
    this.start();
  }

  private dispatch(event: WorkerEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  send(request: Request): void {
    this.worker.postMessage(request);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
