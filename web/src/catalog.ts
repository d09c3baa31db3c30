// Which models the picker offers: the built-in ones (manifests shipped with the app under models/,
// pinned to a Hub revision with every file's sha256), the folders a local model server lists
// (models/index.json, present when the app is served by scripts/serve.sh), and any manifest URL given
// as ?model=<url>. Pure functions: unit-tested in catalog.test.ts.

export interface ModelChoice {
  /** Absolute URL of the `sd manifest` JSON: the engine's id for the model. */
  url: string;
  label: string;
  source: "builtin" | "local" | "url";
  /** Approximate download, for the picker (bytes). */
  bytes?: number;
}

/** Built-in models: `path` is relative to the app (manifests shipped under www/hub/, every file's size
 * and sha256 pinned). Recommended steps and guidance (SD-Turbo: 1 step, no CFG) live in the manifest
 * itself, which the CLI reads too; the engine reports them in `ModelInfo`. */
export const BUILTIN: readonly (Omit<ModelChoice, "url" | "source"> & { path: string })[] = [
  { path: "hub/sd15.json", label: "Stable Diffusion 1.5", bytes: 2_134_194_125 },
  { path: "hub/sd-turbo.json", label: "SD-Turbo", bytes: 2_581_650_173 },
  { path: "hub/sd21-base.json", label: "Stable Diffusion 2.1-base (512 px)", bytes: 2_581_649_445 },
  { path: "hub/sd21.json", label: "Stable Diffusion 2.1 (768 px, v)", bytes: 2_581_649_567 },
  { path: "hub/sdxl-turbo.json", label: "SDXL-Turbo (512 px; needs a GPU with shader-f16)", bytes: 6_941_187_864 },
  { path: "hub/sdxl-base.json", label: "Stable Diffusion XL 1.0 base (1024 px; needs a GPU with shader-f16)", bytes: 6_941_187_536 },
];

export type ModelParam = { kind: "none" } | { kind: "url"; url: string } | { kind: "error"; message: string };

/** Reads `?model=` from a page URL: absolute, or relative to the page. */
export function modelParam(pageUrl: string): ModelParam {
  const params = new URL(pageUrl).searchParams;
  if (!params.has("model")) return { kind: "none" };
  const value = (params.get("model") ?? "").trim();
  if (value === "") return { kind: "error", message: "The model URL (?model=) is empty: give the URL of a manifest.json." };
  return manifestUrl(value, pageUrl);
}

/** Resolves a manifest URL typed by the user or given in the page URL. */
export function manifestUrl(value: string, pageUrl: string): ParamResult {
  const text = value.trim();
  if (text === "") return { kind: "error", message: "The model URL is empty: give the URL of a manifest.json." };
  let url: URL;
  try {
    url = new URL(text, pageUrl);
  } catch {
    return { kind: "error", message: `"${text}" is not a URL.` };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return { kind: "error", message: `The model URL must be http(s), got ${url.protocol}` };
  }
  return { kind: "url", url: url.href };
}
type ParamResult = Extract<ModelParam, { kind: "url" | "error" }>;

/** The local model server's listing (`models/index.json`) as choices. */
export function localChoices(index: unknown, indexUrl: string): ModelChoice[] {
  const models = (index as { models?: unknown } | null)?.models;
  if (!Array.isArray(models)) return [];
  return models.flatMap((m: unknown) => {
    const { name, manifest } = (m ?? {}) as { name?: unknown; manifest?: unknown };
    if (typeof name !== "string" || typeof manifest !== "string") return [];
    return [{ url: new URL(manifest, indexUrl).href, label: `${name} (local server)`, source: "local" as const }];
  });
}

export function builtinChoices(pageUrl: string): ModelChoice[] {
  return BUILTIN.map(({ path, ...rest }) => ({ ...rest, url: new URL(path, pageUrl).href, source: "builtin" as const }));
}

/** A short label for a manifest URL not in the catalog: its folder name and host. */
export function labelOf(url: string): string {
  const u = new URL(url);
  const parts = u.pathname.split("/").filter(Boolean);
  const folder = parts.length >= 2 ? parts[parts.length - 2] : parts[0];
  return `${folder ?? u.host} (${u.host})`;
}
