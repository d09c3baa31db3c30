// Dedicated worker: hosts the wasm engine and hands it one request at a time, so a long request
// (download, generation) never interleaves with the next one. Each event goes out with the id of the
// request it belongs to, and a request that came with an id ends with `{type: "end", requestId}`
// (engine.ts).
// `cancel` skips the queue: with an id it reaches that request (running: at once; queued: it is answered
// `cancelled` without running); without one, the running request and every queued one.
import type { RequestMessage, WorkerEvent, WorkerMessage } from "./protocol";
import type { EngineStats } from "./stats";
import { loadWasm, type Engine } from "./wasm";

const scope = self as unknown as DedicatedWorkerGlobalScope;
const post = (message: WorkerMessage): void => scope.postMessage(message);

// Counters for the benchmark (stats.ts): how many GPU buffers, how big, and the heap.
let memory: WebAssembly.Memory | null = null;
let instance: Engine | null = null;
const stats: EngineStats = {
  gpuBuffers: 0,
  gpuBufferBytes: 0,
  largestGpuBuffer: 0,
  wasmMemoryBytes: () => memory?.buffer.byteLength ?? 0,
  weightChunkReads: () => instance?.weightChunkReads() ?? 0,
};
(scope as unknown as { websdStats: EngineStats }).websdStats = stats;
// Only `createBuffer`'s size is read: a structural type instead of all of @webgpu/types.
type CreateBuffer = (this: unknown, descriptor: { size: number }) => unknown;
const gpuDevice = (scope as unknown as { GPUDevice?: { prototype: { createBuffer: CreateBuffer } } }).GPUDevice;
if (gpuDevice) {
  // wgpu's bindings call `device.createBuffer` by name, so counting here sees every buffer.
  const createBuffer = gpuDevice.prototype.createBuffer;
  gpuDevice.prototype.createBuffer = function (descriptor) {
    stats.gpuBuffers += 1;
    stats.gpuBufferBytes += descriptor.size;
    stats.largestGpuBuffer = Math.max(stats.largestGpuBuffer, descriptor.size);
    // Past WebGPU's guaranteed binding size: the stack names the wasm function that asked.
    if (descriptor.size > 128 * 2 ** 20) console.warn(`websd: a ${descriptor.size}-byte GPU buffer`, new Error().stack);
    return createBuffer.call(this, descriptor);
  };
}

/** Posts `event`; after a panic the worker ends itself. A wasm32 panic aborts: the request's promise
 * never settles and a Web Lock it held stays held, so the instance is not trusted again. Ending the
 * worker releases its locks (for every tab) and drops its queue; the page starts a fresh worker and
 * sends it the requests that had not run (engine.ts). */
function emit(event: WorkerEvent): void {
  post(running === undefined ? event : { ...event, requestId: running });
  if (event.type === "error" && event.code === "panic") scope.close();
}

const engine: Promise<Engine> = loadWasm().then((wasm) => {
  memory = wasm.memory;
  // The engine's panic hook posts `error {code: "panic"}` through this callback before the trap.
  const engine = new wasm.Engine((event: unknown) => emit(event as WorkerEvent));
  instance = engine;
  post({ type: "ready" });
  return engine;
});
let loadFailed = false;
engine.catch((err: unknown) => {
  loadFailed = true;
  post({ type: "error", code: "wasm-load", message: String(err) });
});

let queue: Promise<void> = Promise.resolve();
/** Bumped by every cancel without an id; a queued request that sees another value than at its arrival
 * is dropped. */
let cancelEpoch = 0;
/** The id of the running request (its events carry it). */
let running: number | undefined;
/** Ids of the requests waiting in the queue, and those of them cancelled. */
const queued = new Set<number>();
const cancelled = new Set<number>();

scope.onmessage = (message: MessageEvent<RequestMessage>) => {
  const { requestId: id, ...request } = message.data;
  if (request.type === "cancel") {
    if (id === undefined) cancelEpoch += 1;
    else if (queued.has(id)) cancelled.add(id);
    // A cancel for a request that already ended must not stop the next one.
    if (id === undefined || id === running) void engine.then((e) => e.cancel()).catch(() => undefined);
    return;
  }
  const epoch = cancelEpoch;
  if (id !== undefined) queued.add(id);
  queue = queue.then(async () => {
    const dropped = epoch !== cancelEpoch || (id !== undefined && cancelled.has(id));
    if (id !== undefined) {
      queued.delete(id);
      cancelled.delete(id);
    }
    running = id;
    try {
      if (dropped) emit({ type: "cancelled", phase: request.type === "generate" ? "encode" : "download" });
      else await (await engine).handle(request);
    } catch (err: unknown) {
      // `handle` never rejects; a rejection is the engine failing to load, or a JS exception out of
      // the wasm that the panic hook did not see: the instance is not trusted either way.
      emit({ type: "error", code: loadFailed ? "wasm-load" : "panic", message: String(err) });
    } finally {
      running = undefined;
      if (id !== undefined) post({ type: "end", requestId: id });
    }
  });
};
