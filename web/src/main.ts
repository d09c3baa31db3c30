// Page entry: starts the worker engine and shows what GPU it got.
import { byTestId } from "./dom";
import { EngineClient } from "./engine";
import { renderGpu, renderSelfTest } from "./gpu-panel";
import type { ErrorCode, WorkerEvent } from "./protocol";

const HINTS: Record<ErrorCode, string> = {
  "no-webgpu": "This browser exposes no WebGPU adapter. Use a recent Chrome or Edge (or enable WebGPU) and reload.",
  "gpu-init": "The GPU could not be initialised. Close other GPU-heavy tabs and reload.",
  readback: "Reading results from the GPU failed (the device may have been lost). Try again.",
  "bad-request": "The app sent a request the engine did not understand. Reload the page.",
  "wasm-load": "The engine failed to load. Check your connection and reload.",
  panic: "The engine crashed. Reload the page to restart it.",
};

const engine = new EngineClient();
const errorBox = byTestId("error");
const selfTestButton = byTestId<HTMLButtonElement>("self-test");

function showError(code: ErrorCode, message: string): void {
  errorBox.textContent = `${HINTS[code] ?? ""} (${code}: ${message})`;
  errorBox.hidden = false;
}

engine.subscribe((event: WorkerEvent) => {
  switch (event.type) {
    case "ready":
      engine.send({ type: "status" });
      break;
    case "status":
      renderGpu(event.gpu);
      selfTestButton.disabled = false;
      break;
    case "selfTest":
      renderSelfTest(event.report);
      selfTestButton.disabled = false;
      break;
    case "error":
      showError(event.code, event.message);
      selfTestButton.disabled = false;
      break;
  }
});

selfTestButton.addEventListener("click", () => {
  selfTestButton.disabled = true;
  byTestId("self-test-result").textContent = "running…";
  engine.send({ type: "selfTest" });
});
