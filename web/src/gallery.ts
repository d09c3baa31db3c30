// The gallery: every finished image with the settings that made it, kept in IndexedDB (its own
// database, apart from the engine's weights), so it survives reloads and works offline.
import { openDB, type DBSchema, type IDBPDatabase } from "idb";
import { el } from "./dom";
import { bytes, duration } from "./format";
import type { GenerateSettings } from "./protocol";
import { SCHEDULER_LABELS } from "./settings";

export interface GalleryItem {
  id?: number;
  png: Blob;
  width: number;
  height: number;
  seed: number;
  settings: GenerateSettings;
  /** The model's manifest URL and its label at the time. */
  model: string;
  modelLabel: string;
  createdAt: number;
  elapsedMs: number;
}

interface GallerySchema extends DBSchema {
  images: { key: number; value: GalleryItem; indexes: { createdAt: number } };
}

export interface GalleryActions {
  reuse(item: GalleryItem): void;
}

/** A file name for an image: seed and a slug of the prompt. */
export function fileName(item: Pick<GalleryItem, "seed" | "settings">): string {
  const slug = item.settings.prompt.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  return `websd-${item.seed}${slug ? `-${slug}` : ""}.png`;
}

/** One line describing how an image was made. */
export function describe(item: GalleryItem): string {
  const s = item.settings;
  const parts = [
    `${item.width}x${item.height}`,
    `seed ${item.seed}`,
    `${s.steps ?? "?"} steps`,
    `guidance ${s.guidance ?? "?"}`,
    s.scheduler ? SCHEDULER_LABELS[s.scheduler] : "",
    s.strength !== undefined ? `strength ${s.strength}` : "",
    item.modelLabel,
    duration(item.elapsedMs),
  ];
  return parts.filter(Boolean).join(" · ");
}

export class Gallery {
  private db: Promise<IDBPDatabase<GallerySchema>>;
  private urls: string[] = [];

  constructor(
    private readonly list: HTMLElement,
    private readonly actions: GalleryActions,
  ) {
    this.db = openDB<GallerySchema>("websd-gallery", 1, {
      upgrade(db) {
        const store = db.createObjectStore("images", { keyPath: "id", autoIncrement: true });
        store.createIndex("createdAt", "createdAt");
      },
    });
  }

  async add(item: GalleryItem): Promise<void> {
    await (await this.db).add("images", item);
    await this.render();
  }

  async remove(id: number): Promise<void> {
    await (await this.db).delete("images", id);
    await this.render();
  }

  async items(): Promise<GalleryItem[]> {
    return (await (await this.db).getAllFromIndex("images", "createdAt")).reverse();
  }

  async render(): Promise<void> {
    const items = await this.items();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    if (items.length === 0) {
      this.list.replaceChildren(el("p", "No images yet: the ones you generate are kept here, on this device.", "gallery-empty"));
      return;
    }
    const total = items.reduce((n, i) => n + i.png.size, 0);
    const cards = items.map((item) => {
      const url = URL.createObjectURL(item.png);
      this.urls.push(url);
      const card = el("figure", undefined, "gallery-item");
      const img = el("img");
      img.src = url;
      img.alt = item.settings.prompt;
      img.width = item.width;
      img.height = item.height;
      const caption = el("figcaption");
      caption.append(
        el("p", item.settings.prompt || "(no prompt)", "gallery-prompt"),
        ...(item.settings.negativePrompt ? [el("p", `not: ${item.settings.negativePrompt}`, "gallery-negative")] : []),
        el("p", describe(item), "gallery-settings"),
      );
      const buttons = el("div");
      buttons.className = "row";
      const reuse = el("button", "Reuse settings", "gallery-reuse");
      reuse.type = "button";
      reuse.addEventListener("click", () => this.actions.reuse(item));
      const download = el("a", "Download PNG", "gallery-download");
      download.href = url;
      download.download = fileName(item);
      const remove = el("button", "Delete", "gallery-delete");
      remove.type = "button";
      remove.addEventListener("click", () => void this.remove(item.id!));
      buttons.append(reuse, download, remove);
      caption.append(buttons);
      card.append(img, caption);
      return card;
    });
    this.list.replaceChildren(el("p", `${items.length} images, ${bytes(total)}`, "gallery-count"), ...cards);
  }
}
