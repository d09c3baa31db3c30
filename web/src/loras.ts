// The form's LoRAs: the list merged into the next generation (each with its weight, removable), the
// stored ones to pick from, and adding one from a file or a URL (the engine reads it as a LoRA and
// stores it in IndexedDB); and adding a textual-inversion embedding (used wherever a prompt has its word). The weights are checked here with the engine's limits (limits.gen.ts); the
// pure parts are unit-tested in loras.test.ts.
import { byTestId, el } from "./dom";
import type { EngineClient } from "./engine";
import * as errors from "./errors";
import { bytes } from "./format";
import { LIMITS } from "./limits.gen";
import type { LoraSummary, LoraWeight } from "./protocol";

/** A row of the list as typed: the weight is text until it is checked. */
export interface LoraRow {
  name: string;
  weight: string;
}

export type ParsedLoras = { ok: true; loras: LoraWeight[] } | { ok: false; message: string; index: number };

/** The rows as the engine takes them, or why not (the first bad row). */
export function parseLoraRows(rows: readonly LoraRow[]): ParsedLoras {
  const loras: LoraWeight[] = [];
  for (const [index, row] of rows.entries()) {
    const text = row.weight.trim();
    const weight = Number(text);
    if (text === "" || !Number.isFinite(weight) || Math.abs(weight) > LIMITS.maxLoraWeight) {
      return { ok: false, index, message: `The weight of the LoRA ${row.name} must be a number from -${LIMITS.maxLoraWeight} to ${LIMITS.maxLoraWeight}.` };
    }
    loras.push({ name: row.name, weight });
  }
  return { ok: true, loras };
}

/** The name a LoRA file is stored under: its file name without `.safetensors` (what A1111's tags use),
 * without the characters a `<lora:name:weight>` tag cannot hold. */
export function loraName(fileOrUrl: string): string {
  const last = fileOrUrl.split(/[?#]/)[0]!.split("/").pop() ?? "";
  let name = last;
  try {
    name = decodeURIComponent(last);
  } catch {
    // Not percent-encoded: as it is.
  }
  return name.replace(/\.safetensors$/i, "").replace(/[:<>]/g, "_").trim();
}

/** Where a LoRA named in a PNG stands here: the stored one of that name (or, failing that, of that
 * short hash), and whether its hash differs from the PNG's. */
export function findStored(stored: readonly LoraSummary[], name: string, shortHash?: string): { lora: LoraSummary; otherHash: boolean } | null {
  const byName = stored.find((l) => l.name === name);
  if (byName) return { lora: byName, otherHash: shortHash !== undefined && shortHash !== byName.shortHash };
  const byHash = shortHash === undefined ? undefined : stored.find((l) => l.shortHash === shortHash);
  return byHash ? { lora: byHash, otherHash: false } : null;
}

export class LoraPanel {
  private rows: LoraRow[] = [];
  private stored: LoraSummary[] = [];
  private readonly list = byTestId<HTMLUListElement>("lora-list");
  private readonly picker = byTestId<HTMLSelectElement>("lora-stored");
  private readonly info = byTestId("lora-info");

  constructor(
    private readonly engine: EngineClient,
    /** Called after a LoRA was stored (the storage panel lists it). */
    private readonly onStored: () => void,
  ) {
    const file = byTestId<HTMLInputElement>("lora-file");
    file.addEventListener("change", () => {
      const picked = file.files?.[0];
      if (picked) void this.addFile(picked);
      file.value = "";
    });
    byTestId("lora-url-add").addEventListener("click", () => {
      const url = byTestId<HTMLInputElement>("lora-url").value.trim();
      if (url === "") errors.show("The LoRA URL is empty.");
      else void this.addUrl(url);
    });
    byTestId("lora-use").addEventListener("click", () => {
      if (this.picker.value) this.use(this.picker.value, "1");
    });
    const embedding = byTestId<HTMLInputElement>("embedding-file");
    embedding.addEventListener("change", () => {
      const picked = embedding.files?.[0];
      if (picked) void this.addEmbedding(picked);
      embedding.value = "";
    });
  }

  /** Stores an embedding under its file's stem (A1111's trigger word). */
  private async addEmbedding(file: File): Promise<void> {
    const info = byTestId("embedding-info");
    if (file.size > LIMITS.maxExtraBytes) {
      errors.show(`"${file.name}" has ${bytes(file.size)}: an embedding may have at most ${bytes(LIMITS.maxExtraBytes)}.`);
      return;
    }
    errors.clear();
    info.textContent = `Reading ${file.name}…`;
    const token = loraName(file.name);
    const answer = await this.engine.call({ type: "addEmbedding", token, bytes: new Uint8Array(await file.arrayBuffer()) });
    if (answer.type === "embeddingAdded") {
      const e = answer.embedding;
      info.textContent = `${e.token} stored (${e.vectors} vectors): write "${e.token}" in a prompt to use it.`;
      this.onStored();
    } else {
      info.textContent = "";
      if (answer.type === "error") errors.showEngineError(answer);
    }
  }

  /** The stored LoRAs (as the storage panel last listed them). */
  storedLoras(): readonly LoraSummary[] {
    return this.stored;
  }

  setStored(stored: LoraSummary[]): void {
    this.stored = stored;
    this.picker.replaceChildren(
      ...stored.map((l) => {
        const option = el("option", `${l.name} · ${bytes(l.size)}`);
        option.value = l.name;
        return option;
      }),
    );
    byTestId<HTMLButtonElement>("lora-use").disabled = stored.length === 0;
  }

  /** The list's rows, checked. */
  parse(): ParsedLoras {
    this.readWeights();
    return parseLoraRows(this.rows);
  }

  /** Replaces the list (settings from a PNG, a gallery item). */
  set(loras: readonly LoraWeight[]): void {
    this.rows = loras.map((l) => ({ name: l.name, weight: String(l.weight) }));
    this.render();
  }

  focus(index: number): void {
    this.list.querySelectorAll<HTMLInputElement>('[data-testid="lora-weight"]')[index]?.focus();
  }

  /** Adds `name` to the list at `weight`, or sets its weight when it is there. */
  use(name: string, weight: string): void {
    this.readWeights();
    const row = this.rows.find((r) => r.name === name);
    if (row) row.weight = weight;
    else this.rows.push({ name, weight });
    this.render();
  }

  private async addFile(file: File): Promise<void> {
    if (file.size > LIMITS.maxExtraBytes) {
      errors.show(`"${file.name}" has ${bytes(file.size)}: a LoRA may have at most ${bytes(LIMITS.maxExtraBytes)}.`);
      return;
    }
    await this.add({ type: "addLora", name: loraName(file.name), bytes: new Uint8Array(await file.arrayBuffer()) }, file.name);
  }

  private async addUrl(url: string): Promise<void> {
    let absolute: string;
    try {
      absolute = new URL(url, location.href).href;
    } catch {
      errors.show(`"${url}" is not a URL.`);
      return;
    }
    await this.add({ type: "addLora", name: loraName(absolute), url: absolute }, absolute);
  }

  private async add(request: { type: "addLora"; name: string; bytes?: Uint8Array; url?: string }, from: string): Promise<void> {
    errors.clear();
    this.info.textContent = `Reading ${from}…`;
    const answer = await this.engine.call(request);
    if (answer.type === "loraAdded") {
      const l = answer.lora;
      this.info.textContent = `${l.name} stored (${bytes(l.size)}; ${l.unetLayers} U-Net and ${l.textEncoderLayers} text encoder layers).`;
      this.use(l.name, "1");
      this.onStored();
    } else {
      this.info.textContent = "";
      if (answer.type === "error") errors.showEngineError(answer);
    }
  }

  /** The weights as typed, into `rows`. */
  private readWeights(): void {
    const inputs = this.list.querySelectorAll<HTMLInputElement>('[data-testid="lora-weight"]');
    inputs.forEach((input, i) => {
      if (this.rows[i]) this.rows[i].weight = input.value;
    });
  }

  private render(): void {
    if (this.rows.length === 0) {
      const none = el("li", "None: add one from a file or a URL, or pick a stored one.");
      none.className = "muted";
      this.list.replaceChildren(none);
      return;
    }
    this.list.replaceChildren(
      ...this.rows.map((row, i) => {
        const item = el("li", undefined, "lora-item");
        item.append(el("span", row.name, "lora-name"), " ");
        const weight = el("input", undefined, "lora-weight");
        weight.type = "text";
        weight.inputMode = "decimal";
        weight.size = 5;
        weight.value = row.weight;
        weight.setAttribute("aria-label", `weight of ${row.name}`);
        const remove = el("button", "Remove", "lora-remove");
        remove.type = "button";
        remove.addEventListener("click", () => {
          this.readWeights();
          this.rows.splice(i, 1);
          this.render();
        });
        item.append(weight, " ", remove);
        return item;
      }),
    );
  }
}
