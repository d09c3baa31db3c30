// The storage panel: models, LoRAs and embeddings stored by the engine (size, complete or not, delete), whether
// the browser granted persistent storage, and how much of the origin's quota is used.
import { byTestId, el } from "./dom";
import type { EngineClient } from "./engine";
import { bytes } from "./format";
import type { EmbeddingSummary, LoraSummary, ModelSummary } from "./protocol";

export class StoragePanel {
  /** The stored embeddings, as last listed. */
  embeddings: EmbeddingSummary[] = [];

  constructor(
    private readonly engine: EngineClient,
    private readonly labelOf: (id: string) => string,
    /** Called after a model was deleted. */
    private readonly onDeleted: (id: string) => void,
    /** Called with the stored LoRAs whenever they are listed. */
    private readonly onLoras: (loras: LoraSummary[]) => void,
  ) {}

  async refresh(): Promise<void> {
    const persisted = (await navigator.storage?.persisted?.().catch(() => false)) ?? false;
    byTestId("persisted").textContent = persisted
      ? "persistent: the browser will not evict the stored models"
      : "best effort: the browser may evict the stored models when disk space runs low";
    const estimate = await navigator.storage?.estimate?.().catch(() => null);
    byTestId("usage").textContent =
      estimate?.usage !== undefined && estimate.quota !== undefined
        ? `${bytes(estimate.usage)} used of ${bytes(estimate.quota)} available to this site`
        : "unknown";
    const answer = await this.engine.call({ type: "listModels" });
    if (answer.type === "models") this.render(answer.models);
    const loras = await this.engine.call({ type: "listLoras" });
    if (loras.type === "loras") {
      this.renderLoras(loras.loras);
      this.onLoras(loras.loras);
    }
    const embeddings = await this.engine.call({ type: "listEmbeddings" });
    if (embeddings.type === "embeddings") {
      this.embeddings = embeddings.embeddings;
      this.renderEmbeddings(embeddings.embeddings);
    }
  }

  private renderEmbeddings(embeddings: EmbeddingSummary[]): void {
    const list = byTestId("stored-embeddings");
    if (embeddings.length === 0) {
      list.replaceChildren(el("li", "No embeddings stored."));
      return;
    }
    list.replaceChildren(
      ...embeddings.map((e) => {
        const item = el("li", undefined, "stored-embedding");
        item.append(el("span", `${e.token}: ${e.vectors} vectors, ${bytes(e.size)}, from ${e.source}`));
        const remove = el("button", "Delete", "delete-embedding");
        remove.type = "button";
        remove.addEventListener("click", () => {
          remove.disabled = true;
          void this.engine.call({ type: "deleteEmbedding", token: e.token }).then(() => this.refresh());
        });
        item.append(" ", remove);
        return item;
      }),
    );
  }

  private renderLoras(loras: LoraSummary[]): void {
    const list = byTestId("stored-loras");
    if (loras.length === 0) {
      list.replaceChildren(el("li", "No LoRAs stored."));
      return;
    }
    list.replaceChildren(
      ...loras.map((l) => {
        const item = el("li", undefined, "stored-lora");
        item.append(el("span", `${l.name}: ${bytes(l.size)}, sha256 ${l.sha256.slice(0, 12)}…, from ${l.source}`));
        const remove = el("button", "Delete", "delete-lora");
        remove.type = "button";
        remove.addEventListener("click", () => {
          remove.disabled = true;
          void this.engine.call({ type: "deleteLora", name: l.name }).then(() => this.refresh());
        });
        item.append(" ", remove);
        return item;
      }),
    );
  }

  private render(models: ModelSummary[]): void {
    const list = byTestId("models");
    if (models.length === 0) {
      list.replaceChildren(el("li", "No models stored."));
      return;
    }
    list.replaceChildren(
      ...models.map((m) => {
        const item = el("li", undefined, "stored-model");
        const state = m.ready ? "ready offline" : `incomplete (${bytes(m.storedBytes)} of ${bytes(m.manifestBytes)})`;
        item.append(el("span", `${this.labelOf(m.id)}: ${bytes(m.storedBytes)}, ${state}`));
        const remove = el("button", "Delete", "delete-model");
        remove.type = "button";
        remove.addEventListener("click", () => {
          remove.disabled = true;
          void this.engine.call({ type: "deleteModel", id: m.id }).then(async (answer) => {
            if (answer.type === "deleted") this.onDeleted(m.id);
            await this.refresh();
          });
        });
        item.append(" ", remove);
        return item;
      }),
    );
  }
}
