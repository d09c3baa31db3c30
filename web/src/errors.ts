// Errors as people read them: what happened, and what to do next. Worker errors carry a stable code;
// the form's own checks come with a message of their own.
import { byTestId } from "./dom";
import { bytes } from "./format";
import type { ErrorCode } from "./protocol";

const HINTS: Record<ErrorCode, string> = {
  "no-webgpu": "This browser exposes no WebGPU adapter. Use a recent Chrome or Edge (or enable WebGPU) and reload.",
  "gpu-init": "The GPU could not be initialised. Close other GPU-heavy tabs and reload.",
  readback: "Reading results from the GPU failed (the device may have been lost). Try again.",
  "bad-request": "The app sent a request the engine did not understand. Reload the page.",
  "wasm-load": "The engine failed to load. Check your connection and reload.",
  panic: "The engine crashed and was restarted. Try again.",
  "device-lost": "The GPU was reset. Try again: the engine sets it up anew.",
  invalid: "Check the settings.",
  unsupported: "This model needs a feature this app does not support yet.",
  model: "The model's files are inconsistent. Delete it under Storage and download it again.",
  "not-stored": "Download the model first.",
  network: "The download failed. Check your connection and try again: it resumes where it stopped.",
  integrity: "A downloaded file was corrupted repeatedly. Try again later.",
  damaged: "Part of the stored model is damaged and could not be fetched again. Connect to the network and try again: only the damaged parts are downloaded.",
  quota: "Not enough storage. Delete stored models under Storage, or free disk space.",
  storage: "The browser's storage failed. Reload the page.",
  "too-large": "This size and batch need more GPU memory in one piece than WebGPU allows. Lower them as the detail says.",
  "gpu-oom": "The GPU ran out of memory. Lower the size or the batch, or close other GPU-heavy tabs, and try again.",
  "gpu-validation": "The GPU rejected part of the work, so no image was made. Try again; if it persists, lower the size.",
  cancelled: "Cancelled.",
};

export interface EngineError {
  code: ErrorCode;
  message: string;
  needed?: number;
  available?: number;
}

const box = (): HTMLElement => byTestId("error");

/** Shows an engine error with its hint. */
export function showEngineError(e: EngineError): void {
  const sizes = e.code === "quota" && e.needed !== undefined ? ` It needs ${bytes(e.needed)} more.` : "";
  show(`${HINTS[e.code] ?? "Something went wrong."}${sizes}`, `${e.code}: ${e.message}`);
}

/** Shows a message (and, smaller, the technical detail). */
export function show(message: string, detail?: string): void {
  const el = box();
  const main = document.createElement("strong");
  main.textContent = message;
  el.replaceChildren(main);
  if (detail) {
    const small = document.createElement("small");
    small.textContent = ` (${detail})`;
    el.append(small);
  }
  el.hidden = false;
}

export function clear(): void {
  const el = box();
  el.replaceChildren();
  el.hidden = true;
}
