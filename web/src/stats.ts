/** What the engine worker has asked of the GPU and the heap so far, kept in its `self.websdStats`
 * (worker.ts). The benchmark reads it through the DevTools protocol while a request runs (a 512 px
 * generation's buffers are all created long before SwiftShader finishes its first step): no buffer may
 * exceed WebGPU's guaranteed 128 MiB binding size. */
export interface EngineStats {
  gpuBuffers: number;
  gpuBufferBytes: number;
  largestGpuBuffer: number;
  /** The wasm heap's size now (it only grows, so this is its peak). */
  wasmMemoryBytes(): number;
  /** Chunks of models' weights files read from IndexedDB so far (a LoRA change must read none). */
  weightChunkReads(): number;
}
