// Feedback for every long wait: the phase, a bar, bytes/speed/time left and the file for downloads,
// the step for denoising, the elapsed time, and the live preview.
import { byTestId } from "./dom";
import { bytes, duration } from "./format";
import { drawRgba } from "./images";
import type { Phase, WorkerEvent } from "./protocol";

const PHASE_LABEL: Record<Phase, string> = {
  download: "Downloading the model",
  repair: "Repairing the stored model",
  load: "Loading the model onto the GPU",
  encode: "Encoding the prompt",
  denoise: "Denoising",
  decode: "Decoding the image",
  tune: "Measuring the GPU's kernels (once per GPU)",
};

const CANCELLED_WHILE: Record<Phase, string> = {
  download: "downloading",
  repair: "repairing the stored model",
  load: "loading",
  encode: "encoding the prompt",
  denoise: "denoising",
  decode: "decoding",
  tune: "measuring the GPU's kernels",
};

export class ProgressView {
  private readonly bar = byTestId<HTMLProgressElement>("progress");
  private readonly label = byTestId("progress-text");
  private readonly detail = byTestId("progress-detail");
  private readonly elapsed = byTestId("elapsed");
  private readonly memory = byTestId("memory");
  private readonly preview = byTestId<HTMLCanvasElement>("preview");
  private started = 0;
  private timer = 0;
  private download = { t0: 0, files: [] as string[] };

  /** A new job: clears the view and starts the clock. */
  start(what: string): void {
    this.started = performance.now();
    this.download = { t0: 0, files: [] };
    this.set(0, what);
    this.detail.textContent = "";
    this.memory.textContent = "";
    this.memory.classList.remove("warning");
    this.preview.hidden = true;
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => this.tick(), 500);
    this.tick();
  }

  /** The job ended: `done` sets the bar to 100%. */
  stop(label: string, done: boolean): void {
    window.clearInterval(this.timer);
    this.tick();
    if (done) this.set(1, label);
    else this.label.textContent = label;
  }

  /** The job was cancelled during `phase`. */
  cancelled(phase: Phase): void {
    this.stop(`Cancelled while ${CANCELLED_WHILE[phase]}`, false);
  }

  private tick(): void {
    this.elapsed.textContent = `elapsed ${duration(performance.now() - this.started)}`;
  }

  private set(fraction: number, label: string): void {
    const pct = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
    this.bar.value = pct;
    // The bar's fallback content doubles as its value in text (for checks and old browsers).
    this.bar.textContent = `${pct}%`;
    this.bar.setAttribute("aria-valuetext", `${label}: ${pct}%`);
    this.label.textContent = `${label} · ${pct}%`;
  }

  update(event: WorkerEvent): void {
    if (event.type === "preview") {
      drawRgba(this.preview, event);
      this.preview.hidden = false;
      return;
    }
    if (event.type === "memory") {
      const r = event.report;
      const estimate = `GPU memory: about ${bytes(r.weightBytes + r.activationBytes)} (weights ${bytes(r.weightBytes)}, activations ${bytes(r.activationBytes)} at the peak)`;
      this.memory.textContent = r.warning ? `${estimate}. Warning: ${r.warning}.` : estimate;
      this.memory.classList.toggle("warning", r.warning !== undefined);
      return;
    }
    if (event.type !== "progress") return;
    const { phase, done, total } = event;
    const fraction = total > 0 ? done / total : 0;
    if (phase === "download") {
      const now = performance.now();
      if (this.download.t0 === 0) this.download.t0 = now;
      if (event.file && this.download.files.at(-1) !== event.file) this.download.files.push(event.file);
      const secs = (now - this.download.t0) / 1000;
      const rate = event.bytes !== undefined && secs > 0.5 ? event.bytes / secs : 0;
      const left = rate > 0 ? ((total - done) / rate) * 1000 : NaN;
      this.set(fraction, PHASE_LABEL.download);
      const finished = this.download.files.slice(0, -1);
      this.detail.textContent =
        `${bytes(done)} of ${bytes(total)}` +
        (rate > 0 ? ` · ${bytes(rate)}/s · ${duration(left)} left` : "") +
        (event.file ? ` · file ${event.file}` : "") +
        (finished.length > 0 ? ` · done: ${finished.join(", ")}` : "");
    } else if (phase === "repair") {
      // Only the damaged chunks are fetched again: say how much, so a stall here is not a mystery.
      this.set(fraction, PHASE_LABEL.repair);
      this.detail.textContent = `repairing ${bytes(total - done)} of damaged chunks` + (event.file ? ` · file ${event.file}` : "");
    } else if (phase === "load") {
      this.set(fraction, PHASE_LABEL.load);
      this.detail.textContent = event.file ? `file ${event.file}` : "";
    } else if (phase === "denoise") {
      this.set(fraction, PHASE_LABEL.denoise);
      this.detail.textContent = `step ${done} of ${total}`;
    } else if (phase === "tune") {
      // After the first step on a GPU nobody measured: the fastest kernel per shape, kept for next time.
      this.set(fraction, PHASE_LABEL.tune);
      this.detail.textContent = `shape ${done} of ${total}`;
    } else {
      this.set(fraction, PHASE_LABEL[phase]);
      this.detail.textContent = "";
    }
  }


}
