// Images going into the engine: an uploaded or dropped file decoded exactly (no colour conversion, no
// premultiplication: the fixtures' PNG round-trips bit for bit), then fitted to the requested size
// (scaled to cover, centre-cropped) as the RGBA the engine takes.
import type { RgbaImage } from "./protocol";

export class NotAnImage extends Error {}

/** Decodes an image file; a file that is not an image the browser can decode throws NotAnImage. */
export async function decodeImage(file: Blob, name: string): Promise<ImageBitmap> {
  try {
    return await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new NotAnImage(`"${name}" is not an image this browser can read (use PNG, JPEG or WebP).`);
  }
}

/** The largest multiple of 8 (at least 8) not above `n`. */
export function floor8(n: number): number {
  return Math.max(8, Math.floor(n / 8) * 8);
}

/** A size for an uploaded image: its own, scaled down so the longer side is at most `maxSide`, in
 * multiples of 8. */
export function fittedSize(width: number, height: number, maxSide: number): { width: number; height: number } {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  return { width: floor8(width * scale), height: floor8(height * scale) };
}

/** `source` drawn at `width` x `height` (covering it, centre-cropped); exact when the sizes match. */
export function rgbaAt(source: CanvasImageSource & { width: number; height: number }, width: number, height: number, smooth = true): RgbaImage {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new Error("no 2D canvas");
  ctx.imageSmoothingEnabled = smooth;
  if (source.width === width && source.height === height) {
    ctx.drawImage(source, 0, 0);
  } else {
    const scale = Math.max(width / source.width, height / source.height);
    const sw = width / scale;
    const sh = height / scale;
    ctx.drawImage(source, (source.width - sw) / 2, (source.height - sh) / 2, sw, sh, 0, 0, width, height);
  }
  const data = ctx.getImageData(0, 0, width, height).data;
  return { width, height, rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** Shows RGBA8 pixels in `canvas`, resized to them. */
export function drawRgba(canvas: HTMLCanvasElement, image: RgbaImage): void {
  canvas.width = image.width;
  canvas.height = image.height;
  // ImageData wants a Uint8ClampedArray of its own.
  const pixels = new Uint8ClampedArray(image.rgba.length);
  pixels.set(image.rgba);
  canvas.getContext("2d")?.putImageData(new ImageData(pixels, image.width, image.height), 0, 0);
}
