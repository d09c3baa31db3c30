// Images going into the engine: an uploaded or dropped file, checked from its header (format and size)
// before anything is decoded, then decoded exactly (no colour conversion, no premultiplication: the
// fixtures' PNG round-trips bit for bit), then fitted to the requested size
// (scaled to cover, centre-cropped) as the RGBA the engine takes.
import { imageHeaderOf } from "./image-header";
import type { RgbaImage } from "./protocol";

/** The most pixels an uploaded image (init image or mask) may have: 64 megapixels (8192x8192), 256
 * MiB once decoded to RGBA. The engine works at 4096x4096 at most (crate::limits), so larger images are only ever
 * scaled down; 64 MP still takes a 48 MP phone photo or an 8K frame, while decoding, say, a
 * 30000x30000 PNG (3.6 GB of pixels) would take the tab down. Checked from the file's header, before
 * the browser decodes anything. */
export const MAX_IMAGE_PIXELS = 8192 * 8192;

/** An upload the page will not decode; `message` says why, for people. */
export class UnusableImage extends Error {}

/** Not an image, or not in a format the page reads (see image-header.ts). */
export class NotAnImage extends UnusableImage {
  constructor(readonly fileName: string) {
    super(`"${fileName}" is not an image this app can read (use PNG, JPEG, WebP, AVIF, GIF or BMP).`);
  }
}

/** An image above MAX_IMAGE_PIXELS. */
export class ImageTooLarge extends UnusableImage {
  constructor(
    readonly fileName: string,
    readonly width: number,
    readonly height: number,
  ) {
    const megapixels = (n: number): string => `${Math.round(n / 1e5) / 10} megapixels`;
    super(
      `"${fileName}" is ${width}x${height} pixels (${megapixels(width * height)}): too large to open here. ` +
        `Images of up to ${megapixels(MAX_IMAGE_PIXELS)} (8192x8192) are accepted; scale it down first.`,
    );
  }
}

/** Decodes an image file, once its header shows a format the page reads and a size it can hold;
 * otherwise throws NotAnImage or ImageTooLarge without decoding it. */
export async function decodeImage(file: Blob, name: string): Promise<ImageBitmap> {
  const header = await imageHeaderOf(file);
  if (!header) throw new NotAnImage(name);
  if (header.width * header.height > MAX_IMAGE_PIXELS) throw new ImageTooLarge(name, header.width, header.height);
  try {
    return await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new NotAnImage(name);
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
