// "Load settings from PNG": the `parameters` text that this app and AUTOMATIC1111 write into their PNGs,
// read back into the form's values, LoRAs (`<lora:name:weight>` tags and `Lora hashes`) into the form's
// LoRA list. What the form cannot take (A1111-only settings, a model this app does not list, a LoRA that
// is not stored: main.ts) is reported by name, never dropped silently. Pure functions (the chunk reader is
// async only for compressed chunks): unit-tested in png-settings.test.ts.
import type { FormValues } from "./settings";
import type { LoraWeight, SchedulerName } from "./protocol";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** Text chunks are small; a PNG is not read past this many bytes of them. */
const MAX_TEXT_BYTES = 1 << 20;

async function inflate(data: Uint8Array): Promise<string> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new TextDecoder().decode(await new Response(stream).arrayBuffer());
}

/** The PNG's text chunks (tEXt, zTXt, iTXt) by keyword; `null` when the bytes are not a PNG. */
export async function pngTextChunks(png: Uint8Array): Promise<Record<string, string> | null> {
  if (png.length < 8 || PNG_SIGNATURE.some((b, i) => png[i] !== b)) return null;
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const out: Record<string, string> = {};
  let textBytes = 0;
  for (let at = 8; at + 12 <= png.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, Math.min(at + 8 + length, png.length));
    at += 12 + length;
    if (type === "IEND") break;
    if (type !== "tEXt" && type !== "zTXt" && type !== "iTXt") continue;
    textBytes += length;
    if (textBytes > MAX_TEXT_BYTES) break;
    const nul = data.indexOf(0);
    if (nul < 1) continue;
    const keyword = new TextDecoder("latin1").decode(data.subarray(0, nul));
    try {
      if (type === "tEXt") {
        out[keyword] = new TextDecoder("latin1").decode(data.subarray(nul + 1));
      } else if (type === "zTXt") {
        out[keyword] = new TextDecoder("latin1").decode(new TextEncoder().encode(await inflate(data.subarray(nul + 2))));
      } else {
        // keyword, 0, compression flag, method, language tag, 0, translated keyword, 0, text
        const compressed = data[nul + 1] === 1;
        const lang = data.indexOf(0, nul + 3);
        const translated = lang < 0 ? -1 : data.indexOf(0, lang + 1);
        if (translated < 0) continue;
        const text = data.subarray(translated + 1);
        out[keyword] = compressed ? await inflate(text) : new TextDecoder().decode(text);
      }
    } catch {
      // A damaged chunk is skipped; the others may still carry the settings.
    }
  }
  return out;
}

/** A1111's sampler names (as `Sampler:` writes them) -> the engine's scheduler names. */
const SAMPLERS: Record<string, SchedulerName> = {
  DDPM: "ddpm",
  DDIM: "ddim",
  PLMS: "pndm",
  PNDM: "pndm",
  Euler: "euler",
  "Euler a": "euler-a",
  "DPM++ 2M": "dpmpp-2m",
  "DPM++ 2M Karras": "dpmpp-2m-karras",
  LCM: "lcm",
};

/** What a `parameters` text gives the form, and what it names that the form cannot take. */
export interface LoadedSettings {
  values: Partial<FormValues>;
  /** `Model:` as written (this app's PNGs: the model's folder name). */
  model?: string;
  /** A denoising strength (an img2img or inpainting run; the start image itself is not in the PNG). */
  imageMode: boolean;
  /** The prompt's `<lora:name:weight>` tags (taken out of the prompt), in order. */
  loras: LoraWeight[];
  /** `Lora hashes`: name -> A1111's short hash. */
  loraHashes: Record<string, string>;
  /** `TI hashes`: an embedding's trigger word -> A1111's short hash (the word itself is in the prompt). */
  embeddingHashes: Record<string, string>;
  /** "Name: value (why)" for everything not applied. */
  notApplied: string[];
}

/** `key: value` pairs of A1111's settings line; values may be quoted ("a, b") with \" escapes. */
function settingsLine(line: string): [string, string][] | null {
  const re = /\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/gy;
  const pairs: [string, string][] = [];
  let m: RegExpExecArray | null;
  while (re.lastIndex < line.length && (m = re.exec(line)) !== null) {
    let value = m[2]!.trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) {
      value = value.slice(1, -1).replace(/\\(.)/g, "$1");
    }
    pairs.push([m[1]!.trim(), value]);
    if (m[0].length === 0) break;
  }
  return re.lastIndex >= line.trimEnd().length && pairs.length >= 3 ? pairs : null;
}

/** Reads A1111's `parameters` text (prompt lines, "Negative prompt: ..." lines, one settings line). */
export function parseParameters(text: string): LoadedSettings {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const last = lines.length > 0 ? settingsLine(lines[lines.length - 1]!) : null;
  if (last) lines.pop();
  let prompt: string[] = [];
  let negative: string[] | null = null;
  for (const line of lines) {
    if (negative === null && line.startsWith("Negative prompt:")) {
      negative = [line.slice("Negative prompt:".length).trimStart()];
    } else if (negative !== null) {
      negative.push(line);
    } else {
      prompt.push(line);
    }
  }
  const notApplied: string[] = [];
  // LoRA tags go to the form's LoRA list (the engine would take them in the prompt too, but the list is
  // where they can be seen and re-weighted). A1111's third argument (the text encoder's own weight) is
  // not taken apart: the first weight counts, as in the engine.
  const loras: LoraWeight[] = [];
  let promptText = prompt.join("\n");
  promptText = promptText.replace(/<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>/g, (tag: string, name: string, weight?: string) => {
    const w = weight === undefined ? 1 : Number(weight.trim());
    if (!Number.isFinite(w) || (weight !== undefined && weight.trim() === "")) {
      notApplied.push(`${tag} (its weight is not a number)`);
      return "";
    }
    const listed = loras.find((l) => l.name === name);
    if (listed) listed.weight = w;
    else loras.push({ name, weight: w });
    return "";
  });
  const loraHashes: Record<string, string> = {};
  const embeddingHashes: Record<string, string> = {};
  const hashes = (value: string, into: Record<string, string>): void => {
    for (const pair of value.split(",")) {
      const at = pair.lastIndexOf(":");
      if (at > 0) into[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
    }
  };
  prompt = [promptText.trim()];
  const values: Partial<FormValues> = { prompt: prompt[0]!, negative: (negative ?? []).join("\n").trim() };
  let model: string | undefined;
  let imageMode = false;
  let sampler: string | undefined;
  let scheduleType: string | undefined;
  for (const [key, value] of last ?? []) {
    switch (key) {
      case "Steps":
        values.steps = value;
        break;
      case "CFG scale":
        values.guidance = value;
        break;
      case "Seed":
        values.seed = value;
        break;
      case "Size": {
        const size = /^(\d+)x(\d+)$/.exec(value);
        if (size) [values.width, values.height] = [size[1]!, size[2]!];
        else notApplied.push(`Size: ${value} (not WIDTHxHEIGHT)`);
        break;
      }
      case "Sampler":
        sampler = value;
        break;
      case "Schedule type":
        scheduleType = value;
        break;
      case "Denoising strength":
        values.strength = value;
        imageMode = true;
        break;
      case "Model":
        model = value;
        break;
      case "Model hash":
        break;
      case "Lora hashes":
        hashes(value, loraHashes);
        break;
      case "TI hashes":
        hashes(value, embeddingHashes);
        break;
      default:
        notApplied.push(`${key}: ${value}`);
    }
  }
  if (sampler !== undefined) {
    // Newer A1111 writes the sigma schedule apart ("Sampler: DPM++ 2M, Schedule type: Karras").
    const full = scheduleType !== undefined && scheduleType !== "Automatic" ? `${sampler} ${scheduleType}` : sampler;
    const name = SAMPLERS[full];
    if (name !== undefined) values.scheduler = name;
    else notApplied.push(`Sampler: ${full} (no such scheduler here)`);
  }
  if (!last) notApplied.push("the settings line (none found: only the prompt was read)");
  return { values, ...(model !== undefined ? { model } : {}), imageMode, loras, loraHashes, embeddingHashes, notApplied };
}
