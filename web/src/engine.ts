// The page's handle on the worker: posts typed requests, dispatches typed events. The worker answers
// requests one at a time in order, so `call` keeps a FIFO of pending requests and settles the oldest
// with its final event (progress, previews and all but the last image go to subscribers only).
// A panic aborts the wasm instance mid-request, so the worker (which ends itself) is replaced by a
// fresh one: the request in flight ends with the panic error, the requests queued behind it go to the
// new worker (the page keeps running; stored models survive in IndexedDB).
import type { Request, WorkerEvent } from "./protocol";

export type Listener = (event: WorkerEvent) => void;

/** How long a worker's uncaught error waits for the panic message that explains it. */
const CRASH_GRACE_MS = 200;
type Pending = { request: Request; resolve: (event: WorkerEvent) => void };

/** Whether `event` ends the request at the head of the worker's queue. */
export function isFinal(event: WorkerEvent): boolean {
  switch (event.type) {
    case "ready":
    case "progress":
    case "preview":
    case "memory":
    case "lorasApplied":
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
    let ready = false;
    worker.onmessage = (message: MessageEvent<WorkerEvent>) => {
      const event = message.data;
      if (event.type === "ready") ready = true;
      this.dispatch(event);
      if (event.type === "error" && event.code === "panic") {
        this.crashed(event);
      } else if (isFinal(event)) {
        this.pending.shift()?.resolve(event);
      }
    };
    worker.onerror = (err: ErrorEvent) => {
      // After `ready`, an uncaught error (the trap that follows a panic) means the instance is gone as
      // after a panic; before it, the engine failed to load, and a restart would fail the same way.
      const message = err.message || "the worker failed to start";
      const event: WorkerEvent = { type: "error", code: ready ? "panic" : "wasm-load", message };
      if (!ready) {
        this.dispatch(event);
        this.failPending(event);
        return;
      }
      // The panic hook's message, posted before the trap, may be dispatched after the trap's error
      // event (another task source): give it a moment, so the answer names the panic.
      setTimeout(() => {
        if (this.worker !== worker) return;
        this.dispatch(event);
        this.crashed(event);
      }, CRASH_GRACE_MS);
    };
    this.worker = worker;
  }

  /** The worker panicked: the request in flight (the oldest pending) ends with `event`, a fresh worker
   * takes the requests queued behind it. */
  private crashed(event: WorkerEvent): void {
    const [inFlight, ...queued] = this.pending;
    this.pending = [];
    this.restart();
    inFlight?.resolve(event);
    for (const p of queued) {
      this.pending.push(p);
      this.worker.postMessage(p.request);
    }
  }

  private failPending(event: WorkerEvent): void {
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) p.resolve(event);
  }

  /** Ends the worker for good (before the page reloads into a new version): its GPU device, and any
   * request it still has open through the old service worker, go with it. */
  stop(): void {
    // The dying worker's last messages (the trap's error event after a panic) are not ours to handle.
    this.worker.onmessage = null;
    this.worker.onerror = null;
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
