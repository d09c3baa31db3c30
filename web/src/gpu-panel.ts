// Renders what the worker's GPU adapter is: name, shader-f16, and the limits the device got.
import { byTestId, el } from "./dom";
import type { GpuInfo, SelfTestReport } from "./protocol";

const MiB = 1024 * 1024;

function formatLimit(name: string, value: number): string {
  return /Size$/.test(name) && value >= MiB ? `${(value / MiB).toFixed(0)} MiB` : String(value);
}

export function renderGpu(info: GpuInfo): void {
  byTestId("gpu-adapter").textContent = `${info.adapter || "(unnamed adapter)"} · ${info.backend} · ${info.deviceType}`;
  byTestId("gpu-f16").textContent = info.shaderF16 ? "yes (f16 weights and compute)" : "no (f32 fallback)";
  const table = byTestId<HTMLTableSectionElement>("gpu-limits");
  table.replaceChildren(
    ...Object.entries(info.limits).map(([name, value]) => {
      const row = el("tr");
      row.append(el("th", name), el("td", formatLimit(name, value)));
      return row;
    }),
  );
}

export function renderSelfTest(report: SelfTestReport): void {
  const verdict = report.passed ? "passed" : "FAILED";
  byTestId("self-test-result").textContent =
    `${verdict}: max |GPU - CPU| = ${report.maxAbsDiff.toExponential(2)} (tolerance ${report.tolerance.toExponential(0)}), ` +
    `GPU ${report.gpuMs.toFixed(0)} ms, CPU ${report.cpuMs.toFixed(0)} ms on [${report.shape.join(", ")}]` +
    (report.gpuErrors > 0 ? `; ${report.gpuErrors} GPU errors logged (kernels the adapter rejected)` : "");
}
