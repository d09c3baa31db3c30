// Compile-time proof that protocol.ts and crate/src/protocol.rs agree: every sample the Rust side
// serialised (protocol-samples.gen.ts) must type-check as a Request / WorkerEvent (`satisfies` there),
// and every TS variant and error code must occur among the samples (below). Nothing here runs.
import type { ErrorCode, Request, WorkerEvent } from "./protocol";
import type { events, requests } from "./protocol-samples.gen";

type Missing<T extends string, S extends string> = Exclude<T, S>;
type Sampled<S extends readonly { type: string }[]> = S[number]["type"];
type ErrorSamples = Extract<(typeof events)[number], { type: "error" }>["code"];
// The page-only code comes from worker.ts / engine.ts, never from Rust ("panic" comes from both: the
// engine's panic hook, and the page for a worker that died without it).
type PageOnly = "wasm-load";

export const everyRequestSampled: [Missing<Request["type"], Sampled<typeof requests>>] extends [never] ? true : false = true;
// `ready` is the worker script's own (worker.ts posts it once the wasm is instantiated); Rust never sends it.
type WorkerOnlyEvent = "ready";
export const everyEventSampled: [Missing<Exclude<WorkerEvent["type"], WorkerOnlyEvent>, Sampled<typeof events>>] extends [never] ? true : false = true;
export const everyErrorCodeSampled: [Missing<Exclude<ErrorCode, PageOnly>, ErrorSamples>] extends [never] ? true : false =
  true;
