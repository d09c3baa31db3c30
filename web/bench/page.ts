// The benchmark page: our worker engine and onnxruntime-web side by side in one page, one call at a
// time, driven by run.ts through `window.bench`.
import { EngineClient, type EngineRequest } from "../src/engine";
import type { F32Tensor, Request, WorkerEvent } from "../src/protocol";

interface OrtTensor {
  data: Float32Array;
  dims: readonly number[];
}
interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, OrtTensor>>;
}
interface Ort {
  env: { wasm: { wasmPaths: string; numThreads: number } };
  Tensor: new (type: string, data: Float32Array | BigInt64Array, dims: number[]) => unknown;
  InferenceSession: { create(url: string, options: { executionProviders: string[] }): Promise<OrtSession> };
}

export interface Inputs {
  sample: { shape: number[]; values: number[] };
  timestep: number;
  ehs: { shape: number[]; values: number[] };
}

const engine = new EngineClient(new URL("/app/worker.js", location.href));
const call = (request: EngineRequest): Promise<WorkerEvent> => engine.call(request);

function f32(shape: number[], values: number[]): F32Tensor {
  return { shape, data: new Uint8Array(new Float32Array(values).buffer) };
}

let ort: Ort | null = null;
const sessions = new Map<string, OrtSession>();

const bench = {
  async status(): Promise<WorkerEvent> {
    return call({ type: "status" });
  },
  async ensure(manifestUrl: string): Promise<WorkerEvent> {
    return call({ type: "ensureModel", manifestUrl, variant: "fp32" });
  },
  /** Our U-Net: ms per call and the last output. */
  async ours(model: string, x: Inputs, reps: number): Promise<{ ms: number[]; output: number[] } | { error: string }> {
    const e = await call({
      type: "benchUnet",
      model,
      variant: "fp32",
      sample: f32(x.sample.shape, x.sample.values),
      timestep: x.timestep,
      encoderHiddenStates: f32(x.ehs.shape, x.ehs.values),
      reps,
    });
    if (e.type !== "benchUnet") return { error: JSON.stringify(e) };
    const out = new Float32Array(e.output.data.buffer, e.output.data.byteOffset, e.output.data.byteLength / 4);
    return { ms: e.ms, output: Array.from(out) };
  },
  /** onnxruntime-web with execution provider `ep`: ms per call and the last output. */
  async ort(onnxUrl: string, ep: "webgpu" | "wasm", x: Inputs, reps: number): Promise<{ ms: number[]; output: number[] } | { error: string }> {
    try {
      if (!ort) {
        ort = (await import(/* @vite-ignore */ "/ort/ort.all.min.mjs" as string)) as Ort;
        ort.env.wasm.wasmPaths = "/ort/";
      }
      let session = sessions.get(`${ep} ${onnxUrl}`);
      if (!session) {
        session = await ort.InferenceSession.create(onnxUrl, { executionProviders: [ep] });
        sessions.set(`${ep} ${onnxUrl}`, session);
      }
      const batch = x.sample.shape[0]!;
      const feeds = {
        sample: new ort.Tensor("float32", new Float32Array(x.sample.values), x.sample.shape),
        timestep: new ort.Tensor("int64", BigInt64Array.from(Array.from({ length: batch }, () => BigInt(x.timestep))), [batch]),
        encoder_hidden_states: new ort.Tensor("float32", new Float32Array(x.ehs.values), x.ehs.shape),
      };
      const ms: number[] = [];
      let output: Float32Array = new Float32Array();
      for (let i = 0; i < reps; i++) {
        const t0 = performance.now();
        // Outputs come back to the CPU (the default), as ours do: equal work.
        const result = await session.run(feeds);
        output = result["out_sample"]!.data;
        ms.push(performance.now() - t0);
      }
      return { ms, output: Array.from(output) };
    } catch (err) {
      return { error: String(err) };
    }
  },
};

(window as unknown as { bench: typeof bench }).bench = bench;
