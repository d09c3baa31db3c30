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
  panic: "The engine crashed and was restarted. Try again.",
  "device-lost": "The GPU was reset. Try again: the engine sets it up anew.",
  invalid: "Check the settings.",
  unsupported: "This model needs a feature this app does not support yet.",
  model: "The model's files are inconsistent. Delete it from storage and download it again.",
  "not-stored": "Download the model first.",
  network: "The download failed. Check your connection and try again: it resumes where it stopped.",
  integrity: "A downloaded file was corrupted repeatedly. Try again later.",
  quota: "Not enough storage. Delete stored models or free disk space.",
  storage: "The browser's storage failed. Reload the page.",
  cancelled: "Cancelled.",
};

const engine = new EngineClient();
// Ask the browser not to evict the stored weights under storage pressure (only a page can ask; the
// worker cannot). Granted or not, downloads work; the storage panel shows the answer.
void navigator.storage?.persist?.().catch(() => false);
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
    default:
      break;
  }
});

selfTestButton.addEventListener("click", () => {
  selfTestButton.disabled = true;
  byTestId("self-test-result").textContent = "running…";
  engine.send({ type: "selfTest" });
});
