// The handle on the engine worker, for this page and for any site that embeds the engine. Every request
// carries an id; the worker tags each event with the id of the request it belongs to and ends each
// request with `{type: "end", requestId}`, so answers are matched by id (never by order or by event
// type), and each call gets its own events and its own AbortSignal.
// A panic aborts the wasm instance mid-request, so the worker (which ends itself) is replaced by a fresh
// one: the request in flight ends with the panic error, the requests queued behind it go to the new
// worker (the page keeps running; stored models survive in IndexedDB).
import type {
  DownloadReport,
  ErrorCode,
  GenerateSettings,
  Phase,
  Request,
  RequestMessage,
  WeightsVariant,
  WorkerEvent,
  WorkerMessage,
} from "./protocol";

export type Listener = (event: WorkerEvent) => void;
/** A request that has an answer (`cancel` is the signal's job). */
export type EngineRequest = Exclude<Request, { type: "cancel" }>;

/** How long a worker's uncaught error waits for the panic message that explains it. */
const CRASH_GRACE_MS = 200;

export interface CallOptions {
  /** Aborting cancels this request alone: queued, it never runs; running, it stops at its next step or
   * chunk. It then answers `cancelled`. */
  signal?: AbortSignal;
  /** Every event of this request as it comes: progress, previews, each image, the answer. */
  onEvent?: (event: WorkerEvent) => void;
}

type Result = Extract<WorkerEvent, { type: "result" }>;
type Failure = Extract<WorkerEvent, { type: "error" | "cancelled" }>;

/** A request that ended with an error or was cancelled: `code` is the engine's stable code
 * (`cancelled` for a cancellation, with the phase it stopped in). */
export class EngineError extends Error {
  readonly code: ErrorCode;
  constructor(readonly event: Failure | WorkerEvent) {
    super(event.type === "error" ? `${event.code}: ${event.message}` : event.type === "cancelled" ? `cancelled in ${event.phase}` : `unexpected answer: ${event.type}`);
    this.code = event.type === "error" ? event.code : event.type === "cancelled" ? "cancelled" : "bad-request";
  }
  /** Where a cancelled request stopped. */
  get phase(): Phase | undefined {
    return this.event.type === "cancelled" ? this.event.phase : undefined;
  }
}

interface Pending {
  request: EngineRequest;
  options: CallOptions;
  /** The request's latest event: its answer once it ends. */
  last: WorkerEvent | null;
  resolve: (event: WorkerEvent) => void;
  /** Stops listening to the signal. */
  detach: () => void;
}

export class EngineClient {
  private worker!: Worker;
  private readonly listeners = new Set<Listener>();
  /** Sent and not ended, in the order sent (the worker runs them in that order). */
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Workers started so far (1 + restarts). */
  starts = 0;

  /** `workerUrl`: the engine's worker script (by default `worker.js` beside this module). */
  constructor(private readonly workerUrl: URL = new URL("./worker.js", import.meta.url)) {
    this.start();
  }

  private start(): void {
    this.starts += 1;
    // A module worker, so it can import the wasm-bindgen glue.
    const worker = new Worker(this.workerUrl, { type: "module" });
    let ready = false;
    worker.onmessage = (message: MessageEvent<WorkerMessage>) => {
      const data = message.data;
      if (data.type === "end") {
        this.settle(data.requestId);
        return;
      }
      const event: WorkerEvent = data;
      if (event.type === "ready") ready = true;
      const pending = data.requestId === undefined ? undefined : this.pending.get(data.requestId);
      if (pending) {
        pending.last = event;
        pending.options.onEvent?.(event);
      }
      this.dispatch(event);
      if (event.type === "error" && event.code === "panic") this.crashed(event, data.requestId);
    };
    worker.onerror = (err: ErrorEvent) => {
      // After `ready`, an uncaught error (the trap that follows a panic) means the instance is gone as
      // after a panic; before it, the engine failed to load, and a restart would fail the same way.
      const message = err.message || "the worker failed to start";
      const event: WorkerEvent = { type: "error", code: ready ? "panic" : "wasm-load", message };
      if (!ready) {
        this.dispatch(event);
        for (const id of [...this.pending.keys()]) this.settle(id, event);
        return;
      }
      // The panic hook's message, posted before the trap, may be dispatched after the trap's error
      // event (another task source): give it a moment, so the answer names the panic.
      setTimeout(() => {
        if (this.worker !== worker) return;
        this.dispatch(event);
        this.crashed(event, undefined);
      }, CRASH_GRACE_MS);
    };
    this.worker = worker;
  }

  /** Ends request `id` with `event`, or with its last event (its answer). */
  private settle(id: number, event?: WorkerEvent): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    pending.detach();
    pending.resolve(event ?? pending.last ?? { type: "error", code: "panic", message: "the engine ended the request without an answer" });
  }

  /** The worker panicked: the request in flight (`id`, else the oldest pending) ends with `event`; a
   * fresh worker takes the requests queued behind it, with their ids. */
  private crashed(event: WorkerEvent, id: number | undefined): void {
    const inFlight = id ?? this.pending.keys().next().value;
    this.restart();
    if (inFlight !== undefined) this.settle(inFlight, event);
    for (const [queuedId, p] of this.pending) this.post(queuedId, p);
  }

  private post(id: number, pending: Pending): void {
    const message: RequestMessage = { ...pending.request, requestId: id };
    this.worker.postMessage(message);
    if (pending.options.signal?.aborted) this.worker.postMessage({ type: "cancel", requestId: id } satisfies RequestMessage);
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

  /** Cancels every request: the running one stops at its next step or chunk, the queued ones never run. */
  cancelAll(): void {
    this.worker.postMessage({ type: "cancel" } satisfies RequestMessage);
  }

  /** Sends `request`; resolves with its answer (its last event: the answer, `error` or `cancelled`).
   * Cancelling is not a request of its own here: abort the call's signal, or `cancelAll()`. */
  call(request: EngineRequest, options: CallOptions = {}): Promise<WorkerEvent> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const { signal } = options;
      const abort = (): void => this.worker.postMessage({ type: "cancel", requestId: id } satisfies RequestMessage);
      signal?.addEventListener("abort", abort, { once: true });
      const pending: Pending = { request, options, last: null, resolve, detach: () => signal?.removeEventListener("abort", abort) };
      this.pending.set(id, pending);
      this.post(id, pending);
    });
  }

  /** `request`'s answer when it is of type `type`; otherwise throws an [`EngineError`]. */
  async expect<T extends WorkerEvent["type"]>(type: T, request: EngineRequest, options?: CallOptions): Promise<Extract<WorkerEvent, { type: T }>> {
    const answer = await this.call(request, options);
    if (answer.type !== type) throw new EngineError(answer);
    return answer as Extract<WorkerEvent, { type: T }>;
  }

  /** Downloads the model of `manifestUrl` into IndexedDB (resuming what is stored, verifying every
   * file); `onEvent` sees its progress. */
  async ensureModel(manifestUrl: string, options: CallOptions & { variant?: WeightsVariant } = {}): Promise<DownloadReport> {
    const { variant, ...call } = options;
    return (await this.expect("modelReady", { type: "ensureModel", manifestUrl, ...(variant ? { variant } : {}) }, call)).report;
  }

  /** Generates `settings.batch` images (PNGs with their settings) with the stored model `model` (its
   * manifest URL); `onEvent` sees the progress, the previews and each image as it comes. */
  async generate(model: string, settings: GenerateSettings, options: CallOptions & { variant?: WeightsVariant } = {}): Promise<Result[]> {
    const { variant, onEvent, ...rest } = options;
    const images: Result[] = [];
    const collect = (event: WorkerEvent): void => {
      if (event.type === "result") images.push(event);
      onEvent?.(event);
    };
    await this.expect("result", { type: "generate", model, settings, ...(variant ? { variant } : {}) }, { ...rest, onEvent: collect });
    return images;
  }

  /** Every event of every request (and `ready`), as it comes. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
