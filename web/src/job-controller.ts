// One job at a time (a download or a generation): the buttons while it runs, its progress, Cancel
// through the job's own AbortSignal (so it cancels that request alone), and what the user sees when it
// ends.
import { byTestId } from "./dom";
import type { CallOptions } from "./engine";
import * as errors from "./errors";
import type { ProgressView } from "./progress";
import type { WorkerEvent } from "./protocol";

export class JobController {
  busy = false;
  private controller: AbortController | null = null;
  private readonly generateButton = byTestId<HTMLButtonElement>("generate");
  private readonly downloadButton = byTestId<HTMLButtonElement>("model-download");
  private readonly cancelButton = byTestId<HTMLButtonElement>("cancel");

  constructor(
    private readonly progress: ProgressView,
    /** Each event of the running job (progress, previews, images). */
    private readonly onEvent: (event: WorkerEvent) => void,
    /** The job ended, however it ended. */
    private readonly onEnd: () => void,
    /** The model picker, disabled while a job runs. */
    private readonly setPickerDisabled: (on: boolean) => void,
  ) {
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.setBusy(false);
  }

  private setBusy(on: boolean): void {
    this.busy = on;
    this.generateButton.disabled = on;
    this.downloadButton.disabled = on;
    this.cancelButton.disabled = !on;
    this.setPickerDisabled(on);
  }

  /** Starts a job (none may be running): the buttons go busy and the progress view starts. */
  begin(label: string): CallOptions {
    this.controller = new AbortController();
    errors.clear();
    this.setBusy(true);
    this.progress.start(label);
    return { signal: this.controller.signal, onEvent: this.onEvent };
  }

  /** The job stops before it sent anything: the form's `message` says why. */
  refuse(message: string, focus?: HTMLElement): void {
    this.controller = null;
    this.setBusy(false);
    this.progress.stop("Check the settings", false);
    errors.show(message);
    focus?.focus();
  }

  /** Ends the job: its final event (`null`: done) decides what the user sees. */
  finish(last: WorkerEvent | null): void {
    this.controller = null;
    this.setBusy(false);
    if (last === null) this.progress.stop("Done", true);
    else if (last.type === "cancelled") this.progress.cancelled(last.phase);
    else if (last.type === "error") {
      this.progress.stop("Failed", false);
      errors.showEngineError(last);
    }
    this.onEnd();
  }

  /** Cancels the running job (its request alone: the page's own requests, such as the storage panel's
   * listing, go on). */
  cancel(): void {
    if (!this.busy || !this.controller) return;
    this.cancelButton.disabled = true;
    this.progress.stop("Cancelling…", false);
    this.controller.abort();
  }
}
