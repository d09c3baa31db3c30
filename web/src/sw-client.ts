// Registers the service worker and runs the update flow: a new version installs in the background and
// waits; the page shows a banner, and applies it (skip-waiting, then reload) when the user asks and no
// generation is running, never in the middle of one.
import { byTestId } from "./dom";

export class Updater {
  private waiting: ServiceWorker | null = null;
  private wanted = false;

  constructor(
    private readonly busy: () => boolean,
    /** Called once just before the new version is asked to take over (the page reloads after). */
    private readonly beforeApply: () => void = () => undefined,
  ) {}

  async register(): Promise<void> {
    if (!("serviceWorker" in navigator)) return;
    const registration = await navigator.serviceWorker.register(new URL("./sw.js", location.href));
    const offer = (worker: ServiceWorker | null): void => {
      // A first install (no controller yet) is not an update.
      if (worker && navigator.serviceWorker.controller) this.offer(worker);
    };
    offer(registration.waiting);
    registration.addEventListener("updatefound", () => {
      const installing = registration.installing;
      installing?.addEventListener("statechange", () => {
        if (installing.state === "installed") offer(installing);
      });
    });
    let reloading = false;
    navigator.serviceWorker.addEventListener("controllerchange", () => {
      if (this.wanted && !reloading) {
        reloading = true;
        location.reload();
      }
    });
    byTestId("update-apply").addEventListener("click", () => {
      this.wanted = true;
      this.applyWhenIdle();
    });
  }

  private offer(worker: ServiceWorker): void {
    this.waiting = worker;
    byTestId("update").hidden = false;
  }

  /** Called by the app whenever a job ends. */
  applyWhenIdle(): void {
    if (!this.wanted || !this.waiting) return;
    if (this.busy()) {
      byTestId("update-text").textContent = "The update will be applied when the current generation ends.";
      return;
    }
    // The engine worker goes first: a worker the old service worker controls can hold it busy, and
    // Chromium activates a skip-waiting version only once the old one has nothing in flight.
    this.beforeApply();
    this.waiting.postMessage({ type: "skip-waiting" });
  }
}
