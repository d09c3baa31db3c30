// The exports of the wasm-bindgen glue (dist/websd.js) that the worker uses. The glue is produced by
// Trunk at build time, so the worker loads it at run time by URL instead of bundling it.

export interface Engine {
  handle(request: unknown): Promise<void>;
  cancel(): void;
  /** Chunks of models' weights files read from IndexedDB since the worker started. */
  weightChunkReads(): number;
  free(): void;
}

export interface WasmModule {
  /** Fetches and instantiates websd_bg.wasm (resolved next to websd.js). */
  default(): Promise<{ memory: WebAssembly.Memory }>;
  Engine: new (post: (event: unknown) => void) => Engine;
}

export async function loadWasm(): Promise<{ Engine: WasmModule["Engine"]; memory: WebAssembly.Memory }> {
  const url = new URL("./websd.js", import.meta.url).href;
  const module: unknown = await import(/* @vite-ignore */ url);
  const wasm = module as WasmModule;
  const { memory } = await wasm.default();
  return { Engine: wasm.Engine, memory };
}
