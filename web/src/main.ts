// Page entry: the form, wired to the engine client, the model controller (which model, stored or not),
// the job controller (one download or generation at a time, its progress and Cancel), results, the
// gallery, the storage panel and the service worker's update flow. Everything user- or model-provided
// is rendered as text.
import { labelOf } from "./catalog";
import { byTestId, el } from "./dom";
import { EngineClient } from "websd";
import * as errors from "./errors";
import { bytes, duration } from "./format";
import { Gallery, fileName, type GalleryItem } from "./gallery";
import { renderGpu, renderSelfTest } from "./gpu-panel";
import { decodeImage, drawRgba, fittedSize, rgbaAt, UnusableImage } from "./images";
import { JobController } from "./job-controller";
import { findStored, LoraPanel } from "./loras";
import { MaskEditor } from "./mask-editor";
import { ModelController } from "./model-controller";
import { parseParameters, pngTextChunks } from "./png-settings";
import { ProgressView } from "./progress";
import { parseSdxl, SDXL_FIELDS, type SdxlField } from "./sdxl-fields";
import type { GenerateSettings, ModelInfo, WorkerEvent } from "./protocol";
import { DEFAULTS, formValuesOf, parseSettings, randomSeed, SCHEDULER_LABELS, SCHEDULERS, type FormValues, type Mode } from "./settings";
import { StoragePanel } from "./storage-panel";
import { Updater } from "./sw-client";

const FIELDS = ["prompt", "negative", "steps", "guidance", "seed", "width", "height", "scheduler", "batch", "strength"] as const;
type Field = (typeof FIELDS)[number];
type Input = HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
const input = (f: Field): Input => byTestId<Input>(f);

const engine = new EngineClient();
// The page's engine client, for the console and the e2e tests (a panic, then the restarted worker).
(window as unknown as { websdEngine: EngineClient }).websdEngine = engine;
const progress = new ProgressView();
const models = new ModelController(engine, (info) => {
  applyDefaults(info);
  byTestId("sdxl-options").hidden = !info.sdxl;
});
const jobs = new JobController(
  progress,
  (event) => onJobEvent(event),
  () => {
    updater.applyWhenIdle();
    void storage.refresh();
    // A download may have changed what is stored; once everything is, the model's info cannot change.
    if (!models.info?.ready) models.refresh();
  },
  (on) => (models.disabled = on),
);
const updater = new Updater(
  () => jobs.busy,
  () => engine.stop(),
);
const mask = new MaskEditor(byTestId<HTMLCanvasElement>("mask"));
const resultImg = byTestId<HTMLImageElement>("result");

let initBitmap: ImageBitmap | null = null;
let resultUrl: string | null = null;
/** Fields the user changed: a model's defaults never overwrite them. */
const dirty = new Set<Field>();

// Ask the browser not to evict the stored weights under storage pressure (only a page can ask; the
// worker cannot). Granted or not, downloads work; the storage panel shows the answer.
void navigator.storage?.persist?.().catch(() => false);

const gallery = new Gallery(byTestId("gallery"), byTestId("gallery-error"), { reuse: (item) => reuse(item) });
const loraPanel = new LoraPanel(engine, () => void storage.refresh());
const storage = new StoragePanel(
  engine,
  (id) => models.byUrl(id)?.label ?? labelOf(id),
  (id) => {
    if (models.current?.url === id) models.refresh();
  },
  (loras) => loraPanel.setStored(loras),
);

// ---- form ----------------------------------------------------------------------------------------

for (const name of SCHEDULERS) {
  const option = el("option", SCHEDULER_LABELS[name]);
  option.value = name;
  input("scheduler").append(option);
}
for (const f of FIELDS) input(f).addEventListener("input", () => dirty.add(f));
input("seed").value = String(randomSeed());

function mode(): Mode {
  return (document.querySelector<HTMLInputElement>('input[name="mode"]:checked')?.value ?? "txt2img") as Mode;
}

function setMode(m: Mode): void {
  const radio = document.querySelector<HTMLInputElement>(`input[name="mode"][value="${m}"]`);
  if (radio) radio.checked = true;
  renderMode();
}

function renderMode(): void {
  const m = mode();
  byTestId("image-panel").hidden = m === "txt2img";
  byTestId("mask-tools").hidden = m !== "inpaint";
  byTestId("mask").hidden = m !== "inpaint";
  if (!dirty.has("strength")) input("strength").value = String(m === "inpaint" ? DEFAULTS.inpaintStrength : DEFAULTS.img2imgStrength);
}
for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="mode"]')) {
  radio.addEventListener("change", renderMode);
}

function values(): FormValues {
  return Object.fromEntries(FIELDS.map((f) => [f, input(f).value])) as unknown as FormValues;
}

function setField(f: Field, value: string | undefined): void {
  if (value !== undefined) input(f).value = value;
}

/** The model's defaults, into the fields the user has not changed. */
function applyDefaults(i: ModelInfo): void {
  const set = (f: Field, v: string): void => {
    if (!dirty.has(f)) input(f).value = v;
  };
  set("steps", String(i.steps));
  set("guidance", String(i.guidance));
  if (!initBitmap) {
    set("width", String(i.width));
    set("height", String(i.height));
  }
  set("scheduler", i.scheduler);
  if (i.inpainting && mode() !== "inpaint") setMode("inpaint");
}

function reuse(item: GalleryItem): void {
  const v = formValuesOf(item.settings);
  for (const f of FIELDS) {
    const value = v[f];
    if (value !== undefined) {
      setField(f, value);
      dirty.add(f);
    }
  }
  loraPanel.set(item.settings.loras ?? []);
  const choice = models.byUrl(item.model);
  if (choice && choice !== models.current) models.select(choice);
  if (item.settings.strength === undefined) setMode("txt2img");
  byTestId("prompt").scrollIntoView({ behavior: "smooth", block: "center" });
}

// ---- settings from a PNG (ours or AUTOMATIC1111's), picked or dropped on the form ------------------

async function loadPngSettings(file: File): Promise<void> {
  const status = byTestId("png-settings-info");
  const chunks = await pngTextChunks(new Uint8Array(await file.arrayBuffer()));
  const text = chunks?.["parameters"];
  if (chunks === null || text === undefined) {
    status.textContent = "";
    errors.show(chunks === null ? `"${file.name}" is not a PNG.` : `"${file.name}" carries no generation settings (no "parameters" text).`);
    return;
  }
  const loaded = parseParameters(text);
  for (const f of FIELDS) {
    const value = loaded.values[f];
    if (value !== undefined) {
      setField(f, value);
      dirty.add(f);
    }
  }
  const notApplied = [...loaded.notApplied];
  // The PNG's LoRAs, where they are stored here (by name, else by A1111's short hash).
  const loras = [];
  for (const { name, weight } of loaded.loras) {
    const hash = loaded.loraHashes[name];
    const found = findStored(loraPanel.storedLoras(), name, hash);
    if (found === null) notApplied.push(`LoRA ${name} at ${weight} (not stored here: add it from a file or a URL)`);
    else {
      loras.push({ name: found.lora.name, weight });
      if (found.otherHash) notApplied.push(`LoRA ${name}: the stored file's hash ${found.lora.shortHash} is not the PNG's ${hash}`);
    }
  }
  loraPanel.set(loras);
  for (const [token, hash] of Object.entries(loaded.embeddingHashes)) {
    const stored = storage.embeddings.find((e) => e.token === token);
    if (!stored) notApplied.push(`embedding ${token} (not stored here: add it, and its word in the prompt uses it)`);
    else if (stored.shortHash !== hash) notApplied.push(`embedding ${token}: the stored file's hash ${stored.shortHash} is not the PNG's ${hash}`);
  }
  if (loaded.model !== undefined) {
    const choice = models.choices.find((c) => labelOf(c.url).split(" (")[0] === loaded.model);
    if (choice === undefined) notApplied.push(`Model: ${loaded.model} (not among this app's models)`);
    else if (choice !== models.current && !models.select(choice)) notApplied.push(`Model: ${loaded.model} (a job is running: pick it when it ends)`);
  }
  if (loaded.imageMode && mode() === "txt2img") setMode("img2img");
  if (!loaded.imageMode) setMode("txt2img");
  errors.clear();
  status.textContent = `Settings of "${file.name}" loaded.${notApplied.length > 0 ? ` Not applied: ${notApplied.join("; ")}.` : ""}`;
}

const pngInput = byTestId<HTMLInputElement>("png-settings");
pngInput.addEventListener("change", () => {
  const file = pngInput.files?.[0];
  if (file) void loadPngSettings(file);
  pngInput.value = "";
});
const pngDrop = byTestId("png-drop");
pngDrop.addEventListener("dragover", (e) => e.preventDefault());
pngDrop.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = e.dataTransfer?.files[0];
  if (file) void loadPngSettings(file);
});

byTestId("seed-random").addEventListener("click", () => {
  input("seed").value = String(randomSeed());
  dirty.add("seed");
});

// ---- init image and mask ------------------------------------------------------------------------

async function useInitImage(file: File): Promise<void> {
  try {
    const bitmap = await decodeImage(file, file.name);
    initBitmap?.close();
    initBitmap = bitmap;
    const maxSide = Math.max(models.info?.width ?? 512, models.info?.height ?? 512);
    const size = fittedSize(bitmap.width, bitmap.height, maxSide);
    input("width").value = String(size.width);
    input("height").value = String(size.height);
    drawRgba(byTestId<HTMLCanvasElement>("init-preview"), rgbaAt(bitmap, size.width, size.height));
    mask.reset(size.width, size.height);
    byTestId("init-info").textContent = `${file.name}: ${bitmap.width}x${bitmap.height}, used at ${size.width}x${size.height}`;
    errors.clear();
  } catch (err) {
    errors.show(err instanceof UnusableImage ? err.message : `Cannot use that image: ${String(err)}`);
  }
}

const initInput = byTestId<HTMLInputElement>("init-image");
initInput.addEventListener("change", () => {
  const file = initInput.files?.[0];
  if (file) void useInitImage(file);
});
const drop = byTestId("image-panel");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("dragging");
  const file = e.dataTransfer?.files[0];
  if (file) void useInitImage(file);
});

const maskInput = byTestId<HTMLInputElement>("mask-image");
maskInput.addEventListener("change", () => {
  const file = maskInput.files?.[0];
  if (!file) return;
  if (!initBitmap) {
    errors.show("Choose the image to inpaint first, then its mask.");
    return;
  }
  void decodeImage(file, file.name).then(
    (bitmap) => {
      mask.load(bitmap);
      bitmap.close();
      errors.clear();
    },
    (err: unknown) => errors.show(err instanceof UnusableImage ? err.message : `Cannot use that mask: ${String(err)}`),
  );
});
const brush = byTestId<HTMLInputElement>("brush");
brush.addEventListener("input", () => (mask.brush = Number(brush.value)));
byTestId("mask-clear").addEventListener("click", () => mask.clear());
byTestId("mask-invert").addEventListener("click", () => mask.invert());
const eraser = byTestId<HTMLInputElement>("mask-erase");
eraser.addEventListener("change", () => (mask.erase = eraser.checked));
mask.onChange = () => {
  byTestId("mask-coverage").textContent = `${Math.round(mask.coverage() * 100)}% marked for repainting`;
};

// ---- jobs ---------------------------------------------------------------------------------------

byTestId("model-download").addEventListener("click", () => {
  if (jobs.busy || !models.current) return;
  const options = jobs.begin("Downloading the model");
  void models.ensure(options).then((failed) => jobs.finish(failed));
});

byTestId("generate").addEventListener("click", () => void generate());

async function generate(): Promise<void> {
  if (jobs.busy) return;
  if (!models.current) {
    errors.show("Choose a model first (or give the URL of a manifest.json).");
    return;
  }
  const options = jobs.begin("Preparing");
  await models.inspected;
  // After the wait: the model the form was showing (no other can be selected while the job runs).
  const model = models.current;
  const info = models.info;
  const m = mode();
  // What is missing for the mode first, then the numbers.
  const problem =
    m !== "txt2img" && !initBitmap
      ? "Choose an image to start from (upload or drop one)."
      : m === "inpaint" && info && !info.inpainting
        ? "This model is not an inpainting model (its U-Net takes no mask): pick an inpainting model, or use Image to image."
        : m === "inpaint" && mask.coverage() === 0
          ? "Paint the area to repaint on the image (or load a mask)."
          : m === "txt2img" && info?.inpainting
            ? "This is an inpainting model: use Inpaint, with an image and a mask."
            : null;
  if (problem) return jobs.refuse(problem);
  const parsed = parseSettings(values(), m);
  if (!parsed.ok) return jobs.refuse(parsed.message, parsed.field ? input(parsed.field) : undefined);
  // SDXL's fields only for an SDXL model (hidden otherwise; another model would refuse them).
  const sdxl = info?.sdxl ? parseSdxl(Object.fromEntries(SDXL_FIELDS.map((f) => [f, byTestId<HTMLInputElement>(f).value])) as Record<SdxlField, string>) : null;
  if (sdxl && !sdxl.ok) return jobs.refuse(sdxl.message, byTestId<HTMLInputElement>(sdxl.field));
  const loras = loraPanel.parse();
  if (!loras.ok) {
    jobs.refuse(loras.message);
    loraPanel.focus(loras.index);
    return;
  }
  const settings: GenerateSettings = {
    ...parsed.settings,
    ...(loras.loras.length > 0 ? { loras: loras.loras } : {}),
    ...(sdxl?.ok ? sdxl.settings : {}),
    previewEvery: byTestId<HTMLInputElement>("live-preview").checked ? 1 : 0,
    // Off: diffusers' reading (77 tokens, brackets are words); plain prompts encode the same either way.
    promptWeighting: byTestId<HTMLInputElement>("prompt-weighting").checked,
  };
  if (m !== "txt2img") {
    settings.initImage = rgbaAt(initBitmap!, settings.width!, settings.height!);
    if (m === "inpaint") settings.mask = mask.export(settings.width!, settings.height!);
  }
  const answer = await models.withStoredModel(model, options, () => engine.call({ type: "generate", model: model.url, settings }, options));
  jobs.finish(answer.type === "result" ? null : answer);
}

function showResult(event: Extract<WorkerEvent, { type: "result" }>): void {
  const blob = new Blob([event.png as Uint8Array<ArrayBuffer>], { type: "image/png" });
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  resultImg.src = resultUrl;
  resultImg.width = event.width;
  resultImg.height = event.height;
  resultImg.alt = event.settings.prompt;
  const item: GalleryItem = {
    png: blob,
    width: event.width,
    height: event.height,
    seed: event.seed,
    settings: event.settings,
    // The picker is disabled while a job runs: the current model made it.
    model: models.current?.url ?? "",
    modelLabel: models.current?.label ?? "",
    createdAt: Date.now(),
    elapsedMs: event.elapsedMs,
  };
  const link = byTestId<HTMLAnchorElement>("download");
  link.href = resultUrl;
  link.download = fileName(item);
  link.hidden = false;
  byTestId("result-info").textContent =
    `Image ${event.index + 1} of ${event.count} · seed ${event.seed} · ${event.width}x${event.height} · ${duration(event.elapsedMs)}`;
  void gallery.add(item);
}

/** An event of the running job. */
function onJobEvent(event: WorkerEvent): void {
  switch (event.type) {
    case "progress":
    case "preview":
    case "memory":
      progress.update(event);
      break;
    case "result":
      showResult(event);
      break;
    case "lorasApplied":
      byTestId("lora-info").textContent =
        event.loras.length === 0
          ? "No LoRA merged: the model's weights are as loaded."
          : `Merged ${event.loras.map((l) => `${l.name} at ${l.weight}`).join(", ")} into ${event.adaptedWeights} weights (${bytes(event.keptBytes)} kept on the GPU to undo it).`;
      break;
    default:
      break;
  }
}

// ---- GPU panel ----------------------------------------------------------------------------------

const selfTestButton = byTestId<HTMLButtonElement>("self-test");
selfTestButton.addEventListener("click", () => {
  selfTestButton.disabled = true;
  byTestId("self-test-result").textContent = "running…";
  void engine.call({ type: "selfTest" }).then((answer) => {
    if (answer.type === "selfTest") renderSelfTest(answer.report);
    else if (answer.type === "error") {
      byTestId("self-test-result").textContent = "";
      errors.showEngineError(answer);
    }
    selfTestButton.disabled = false;
  });
});

async function start(): Promise<void> {
  renderMode();
  loraPanel.set([]);
  const status = engine.call({ type: "status" }).then((answer) => {
    if (answer.type === "status") {
      renderGpu(answer.gpu);
      selfTestButton.disabled = false;
    } else if (answer.type === "error") {
      byTestId("gpu-adapter").textContent = "none";
      errors.showEngineError(answer);
    }
  });
  await Promise.all([models.init(), gallery.render(), status]);
  await storage.refresh();
  await updater.register().catch((err: unknown) => console.warn("service worker:", err));
}

void start();
