// The page's handle on the worker: posts typed requests, dispatches typed events. The worker answers
// requests one at a time in order, so `call` keeps a FIFO of pending requests and settles the oldest
// with its final event (progress, previews and all but the last image go to subscribers only).
// A panic leaves the wasm instance in an unknown state, so the worker is replaced by a fresh one (the
// page keeps running; stored models survive in IndexedDB) and pending calls end with that error.
import type { Request, WorkerEvent } from "./protocol";

export type Listener = (event: WorkerEvent) => void;
type Pending = { request: Request; resolve: (event: WorkerEvent) => void };

/** Whether `event` ends the request at the head of the worker's queue. */
export function isFinal(event: WorkerEvent): boolean {
  switch (event.type) {
    case "ready":
    case "progress":
    case "preview":
    case "memory":
      return false;
    case "result":
      return event.index + 1 >= event.count;
    default:
      return true;
  }
}

export class EngineClient {
  private worker!: Worker;
  private readonly listeners = new Set<Listener>();
  private pending: Pending[] = [];
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
      if (event.type === "error" && event.code === "panic") {
        this.failPending(event);
        this.restart();
      } else if (isFinal(event)) {
        this.pending.shift()?.resolve(event);
      }
    };
    worker.onerror = (err: ErrorEvent) => {
      const event: WorkerEvent = { type: "error", code: "wasm-load", message: err.message || "the worker failed to start" };
      this.dispatch(event);
      this.failPending(event);
    };
    this.worker = worker;
  }

  private failPending(event: WorkerEvent): void {
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) p.resolve(event);
  }

  /** Ends the worker for good (before the page reloads into a new version): its GPU device, and any
   * request it still has open through the old service worker, go with it. */
  stop(): void {
    this.worker.terminate();
  }

  /** Replaces the worker (after a panic); requests sent meanwhile go to the new one. */
  restart(): void {
    this.stop();
    this.start();
  }

  private dispatch(event: WorkerEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  /** Fire and forget (`cancel` has no answer of its own: the running request ends `cancelled`). */
  send(request: Extract<Request, { type: "cancel" }>): void {
    this.worker.postMessage(request);
  }

  /** Sends `request`; resolves with its final event (its answer, `error` or `cancelled`). */
  call(request: Request): Promise<WorkerEvent> {
    return new Promise((resolve) => {
      this.pending.push({ request, resolve });
      this.worker.postMessage(request);
    });
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
