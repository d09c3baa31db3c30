// The gallery: every finished image with the settings that made it, kept in IndexedDB (its own
// database, apart from the engine's weights), so it survives reloads and works offline. The connection
// is reopened after the browser or another context closed it, and a write that fails (a full quota)
// is said in the gallery's status line.
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

export const GALLERY_DB = "websd-gallery";

/** Why a gallery write failed, for people: a full quota says what to do about it. */
export function writeFailure(err: unknown): string {
  const name = err instanceof DOMException || err instanceof Error ? err.name : "";
  if (name === "QuotaExceededError") {
    return "This image was not saved in the gallery: this site's storage is full. Download it now if you want to keep it, and free space by deleting gallery images or stored models under Storage.";
  }
  return `This image was not saved in the gallery (${errorText(err)}). Download it now if you want to keep it.`;
}

function errorText(err: unknown): string {
  return err instanceof DOMException || err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

export class Gallery {
  /** The open connection, or null: opened on first use, and again after it was closed. */
  private db: Promise<IDBPDatabase<GallerySchema>> | null = null;
  private urls: string[] = [];

  constructor(
    private readonly list: HTMLElement,
    /** Where failures to read or write the gallery are said (an image not saved must not go unnoticed). */
    private readonly status: HTMLElement,
    private readonly actions: GalleryActions,
  ) {}

  /** The connection, (re)opened lazily. Another context deleting the database (clearing site data)
   * or upgrading it (a newer version of the app) sends `versionchange`: closing at once lets that
   * go ahead instead of blocking it; the browser may also close a connection itself (storage
   * evicted, disk error). Either way the next use opens a new one. */
  private connection(): Promise<IDBPDatabase<GallerySchema>> {
    if (this.db) return this.db;
    const forget = (): void => {
      if (this.db === opening) this.db = null;
    };
    const opening = openDB<GallerySchema>(GALLERY_DB, 1, {
      upgrade(db) {
        const store = db.createObjectStore("images", { keyPath: "id", autoIncrement: true });
        store.createIndex("createdAt", "createdAt");
      },
      blocking(_current, _next, event) {
        (event.target as IDBDatabase).close();
        forget();
      },
      terminated: forget,
    });
    // A failed open (a newer version's database: VersionError) is tried again on the next use.
    opening.catch(forget);
    this.db = opening;
    return opening;
  }

  /** Runs `work` on the connection; once more on a new one if it was closed meanwhile (a
   * transaction on a closing connection throws InvalidStateError). */
  private async use<T>(work: (db: IDBPDatabase<GallerySchema>) => Promise<T>): Promise<T> {
    const opening = this.connection();
    try {
      return await work(await opening);
    } catch (err) {
      if (!(err instanceof DOMException && err.name === "InvalidStateError")) throw err;
      if (this.db === opening) this.db = null;
      return work(await this.connection());
    }
  }

  private say(message: string | null): void {
    this.status.textContent = message ?? "";
    this.status.hidden = message === null;
  }

  /** Stores `item` and shows it; a failure (a full quota above all) is said, not dropped. */
  async add(item: GalleryItem): Promise<void> {
    try {
      await this.use(async (db) => {
        const tx = db.transaction("images", "readwrite");
        try {
          await Promise.all([tx.store.add(item), tx.done]);
        } catch (err) {
          // A request of an aborted transaction fails with AbortError; the transaction's own error
          // names the cause (QuotaExceededError when the commit did not fit).
          throw tx.error ?? err;
        }
      });
    } catch (err) {
      this.say(writeFailure(err));
      return;
    }
    this.say(null);
    await this.render();
  }

  async remove(id: number): Promise<void> {
    try {
      await this.use((db) => db.delete("images", id));
    } catch (err) {
      this.say(`The image could not be deleted from the gallery (${errorText(err)}).`);
      return;
    }
    await this.render();
  }

  async items(): Promise<GalleryItem[]> {
    return (await this.use((db) => db.getAllFromIndex("images", "createdAt"))).reverse();
  }

  async render(): Promise<void> {
    let items: GalleryItem[];
    try {
      items = await this.items();
    } catch (err) {
      const newer = err instanceof DOMException && err.name === "VersionError";
      this.say(newer ? "A newer version of this app changed the gallery: reload the page to see it." : `The gallery could not be read (${errorText(err)}).`);
      return;
    }
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
