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
    this.renderList("embedding", embeddings, "No embeddings stored.", (e) => ({
      text: `${e.token}: ${e.vectors} vectors, ${bytes(e.size)}, from ${e.source}`,
      remove: () => this.engine.call({ type: "deleteEmbedding", token: e.token }),
    }));
  }

  private renderLoras(loras: LoraSummary[]): void {
    this.renderList("lora", loras, "No LoRAs stored.", (l) => ({
      text: `${l.name}: ${bytes(l.size)}, sha256 ${l.sha256.slice(0, 12)}…, from ${l.source}`,
      remove: () => this.engine.call({ type: "deleteLora", name: l.name }),
    }));
  }

  /** The list `stored-${kind}s`: an item per entry (`stored-${kind}`) with a `delete-${kind}` button,
   * after which the panel is listed again. */
  private renderList<T>(kind: string, items: T[], empty: string, row: (item: T) => { text: string; remove: () => Promise<unknown> }): void {
    const list = byTestId(`stored-${kind}s`);
    if (items.length === 0) {
      list.replaceChildren(el("li", empty));
      return;
    }
    list.replaceChildren(
      ...items.map((entry) => {
        const { text, remove } = row(entry);
        const item = el("li", undefined, `stored-${kind}`);
        item.append(el("span", text));
        const button = el("button", "Delete", `delete-${kind}`);
        button.type = "button";
        button.addEventListener("click", () => {
          button.disabled = true;
          void remove().then(() => this.refresh());
        });
        item.append(" ", button);
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
