// The model the form generates with: the picker (built-in models, the development server's local ones, a
// manifest URL), what the engine says of the chosen one (its defaults, how much is stored), and making
// it complete in the store before a generation that needs it.
import { builtinChoices, labelOf, localChoices, manifestUrl, modelParam, type ModelChoice } from "./catalog";
import { byTestId, el } from "./dom";
import type { CallOptions, EngineClient } from "./engine";
import * as errors from "./errors";
import { bytes } from "./format";
import type { ModelInfo, WorkerEvent } from "./protocol";
import { SCHEDULER_LABELS } from "./settings";

const LAST_MODEL = "websd-model";

export class ModelController {
  choices: ModelChoice[] = [];
  current: ModelChoice | null = null;
  /** What the engine said of `current` (null until it answered). */
  info: ModelInfo | null = null;
  /** The pending inspection of `current` (the form's defaults depend on it). */
  inspected: Promise<void> = Promise.resolve();
  private readonly picker = byTestId<HTMLSelectElement>("model");

  constructor(
    private readonly engine: EngineClient,
    /** The engine described the chosen model (its defaults go into the form). */
    private readonly onInfo: (info: ModelInfo) => void,
  ) {
    this.picker.addEventListener("change", () => {
      const choice = this.choices.find((c) => c.url === this.picker.value);
      if (choice) this.select(choice);
    });
    byTestId("model-use").addEventListener("click", () => {
      if (this.useUrl(byTestId<HTMLInputElement>("model-url").value)) {
        const url = new URL(location.href);
        url.searchParams.set("model", this.current!.url);
        history.replaceState(null, "", url);
      }
    });
  }

  /** The choice whose manifest is `url`, if the picker has it. */
  byUrl(url: string): ModelChoice | undefined {
    return this.choices.find((c) => c.url === url);
  }

  set disabled(on: boolean) {
    this.picker.disabled = on;
  }

  private renderPicker(): void {
    this.picker.replaceChildren(
      ...this.choices.map((c) => {
        const option = el("option", c.label + (c.bytes ? ` · ${bytes(c.bytes)}` : ""));
        option.value = c.url;
        option.selected = c === this.current;
        return option;
      }),
    );
  }

  /** `chosen`: the user picked it (a failure to read it is then an error, not just a status line).
   * Refused (false) while a job runs: the job keeps the model it started with. */
  select(choice: ModelChoice, chosen = true): boolean {
    if (this.picker.disabled) return false;
    this.current = choice;
    this.info = null;
    if (chosen) localStorage.setItem(LAST_MODEL, choice.url);
    this.renderPicker();
    this.inspected = this.inspect(choice, chosen);
    return true;
  }

  /** Asks the engine about `choice` again (after a download or a deletion changed what is stored). */
  refresh(): void {
    if (this.current) this.inspected = this.inspect(this.current, false);
  }

  private async inspect(choice: ModelChoice, chosen: boolean): Promise<void> {
    const status = byTestId("model-status");
    status.textContent = "reading the model's configuration…";
    const answer = await this.engine.call({ type: "inspectModel", manifestUrl: choice.url });
    if (this.current !== choice) return;
    if (answer.type === "modelInfo") {
      const info = answer.info;
      this.info = info;
      this.onInfo(info);
      const stored = info.ready
        ? "stored: works offline"
        : `${bytes(info.totalBytes - info.storedBytes)} to download` + (info.storedBytes > 0 ? ` (${bytes(info.storedBytes)} already stored)` : "");
      status.textContent =
        `${info.width}x${info.height} · ${SCHEDULER_LABELS[info.scheduler] ?? info.scheduler} · ${info.variant} weights` +
        (info.inpainting ? " · inpainting model" : "") +
        (info.memory ? ` · GPU memory about ${bytes(info.memory.weightBytes + info.memory.activationBytes)}` : "") +
        (info.memory?.warning ? ` (${info.memory.warning})` : "") +
        ` · ${stored}` +
        (info.offline ? " · offline" : "");
    } else if (answer.type === "error") {
      status.textContent =
        answer.code === "network" ? "cannot reach the model's server (offline?): it will be fetched when you generate" : `unavailable (${answer.code}: ${answer.message})`;
      if (chosen) errors.showEngineError(answer);
    }
  }

  private useUrl(value: string): boolean {
    const parsed = manifestUrl(value, location.href);
    if (parsed.kind === "error") {
      errors.show(parsed.message);
      return false;
    }
    let choice = this.byUrl(parsed.url);
    if (!choice) {
      choice = { url: parsed.url, label: labelOf(parsed.url), source: "url" };
      this.choices.push(choice);
    }
    errors.clear();
    this.select(choice);
    return true;
  }

  /** The picker's models, and the one to start with: the page's `?model=`, else the last one used,
   * else a local one. */
  async init(): Promise<void> {
    this.choices = builtinChoices(location.href);
    // The development server (scripts/serve.sh) lists its local model folders; a deployed site has none.
    if (["localhost", "127.0.0.1", "[::1]"].includes(location.hostname)) {
      const indexUrl = new URL("models/index.json", location.href).href;
      try {
        const response = await fetch(indexUrl, { cache: "no-store" });
        if (response.ok) this.choices.push(...localChoices(await response.json(), indexUrl));
      } catch {
        // Offline, or another server: the built-in models only.
      }
    }
    const param = modelParam(location.href);
    if (param.kind === "url") {
      this.useUrl(param.url);
      return;
    }
    if (param.kind === "error") {
      errors.show(param.message);
      this.renderPicker();
      byTestId("model-status").textContent = "no model selected";
      return;
    }
    const last = localStorage.getItem(LAST_MODEL);
    const lastChoice = this.choices.find((c) => c.url === last);
    if (lastChoice) this.select(lastChoice);
    else if (last) this.useUrl(last);
    else {
      const choice = this.choices.find((c) => c.source === "local") ?? this.choices[0];
      if (choice) this.select(choice, false);
      else {
        this.renderPicker();
        byTestId("model-status").textContent = "no model: give the URL of a manifest.json below";
      }
    }
  }

  /** Makes `choice` (by default the current model) complete in the store; the final event when that
   * failed. */
  async ensure(options: CallOptions, choice: ModelChoice | null = this.current): Promise<WorkerEvent | null> {
    const answer = await this.engine.call({ type: "ensureModel", manifestUrl: choice!.url }, options);
    return answer.type === "modelReady" ? null : answer;
  }

  /** Runs `job` (a request on the stored model `choice`) after making the model complete in the store,
   * unless the engine said it is stored (its chunks are checked as they are read, and repaired then): no
   * manifest fetch before a generation from a stored model. When the job then answers `not-stored` and
   * the engine no longer finds the model complete (deleted meanwhile, in another tab too), the model is
   * downloaded and the job runs again; a `not-stored` about something else (a LoRA) is the answer. */
  async withStoredModel(choice: ModelChoice, options: CallOptions, job: () => Promise<WorkerEvent>): Promise<WorkerEvent> {
    if (this.current === choice && this.info?.ready) {
      const answer = await job();
      if (!(answer.type === "error" && answer.code === "not-stored")) return answer;
      const now = await this.engine.call({ type: "inspectModel", manifestUrl: choice.url }, options);
      if (now.type === "modelInfo" && now.info.ready) return answer;
      // Stored no longer: the status line must not go on saying so (refreshed when the job ends).
      if (this.current === choice) this.info = null;
    }
    const failed = await this.ensure(options, choice);
    return failed ?? (await job());
  }
}
