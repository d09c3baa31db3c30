// An image file's pixel size, read from its header without decoding it, so the page can refuse an
// image too large to decode (a 30000x30000 PNG is 3.6 GB once decoded) before the browser tries.
// Reads the formats the page takes: PNG (IHDR), JPEG (SOFn), WebP (VP8, VP8L, VP8X), GIF, BMP and
// AVIF (the ISOBMFF `ispe` property). Pure byte parsing: unit-tested in image-header.test.ts.

export type ImageFormat = "png" | "jpeg" | "webp" | "gif" | "bmp" | "avif";

export interface ImageHeader {
  format: ImageFormat;
  width: number;
  height: number;
}

/** What a prefix of a file says: its header, `"more"` (a known format whose size lies past the
 * prefix), or `null` (not a format we read, or a damaged header). */
export type HeaderRead = ImageHeader | "more" | null;

/** Bytes read from the file's start first: every format's size is in there except a JPEG or AVIF
 * with large metadata ahead of it. */
export const FIRST_READ_BYTES = 64 * 1024;
/** How far into a file the size is looked for: past this, the file is refused as unreadable. */
export const MAX_HEADER_BYTES = 16 * 1024 * 1024;

const ascii = (b: Uint8Array, at: number, text: string): boolean =>
  at + text.length <= b.length && [...text].every((c, i) => b[at + i] === c.charCodeAt(0));
const u16be = (b: Uint8Array, at: number): number => (b[at]! << 8) | b[at + 1]!;
const u16le = (b: Uint8Array, at: number): number => b[at]! | (b[at + 1]! << 8);
const u24le = (b: Uint8Array, at: number): number => b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16);
const u32be = (b: Uint8Array, at: number): number => ((b[at]! << 24) >>> 0) + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!);
const u32le = (b: Uint8Array, at: number): number => (((b[at + 3]! << 24) >>> 0) + ((b[at + 2]! << 16) | (b[at + 1]! << 8) | b[at]!));
const i32le = (b: Uint8Array, at: number): number => u32le(b, at) | 0;

/** A header, or null when a size is zero (a decoder would refuse it; DNL-sized JPEGs say 0 too). */
function sized(format: ImageFormat, width: number, height: number): HeaderRead {
  return width > 0 && height > 0 ? { format, width, height } : null;
}

function png(b: Uint8Array): HeaderRead {
  // Signature, then the IHDR chunk (length, type, width, height: big-endian).
  if (b.length < 24) return "more";
  return ascii(b, 12, "IHDR") ? sized("png", u32be(b, 16), u32be(b, 20)) : null;
}

function gif(b: Uint8Array): HeaderRead {
  // The logical screen's size; Chromium decodes every frame into a canvas of that size.
  return b.length < 10 ? "more" : sized("gif", u16le(b, 6), u16le(b, 8));
}

function bmp(b: Uint8Array): HeaderRead {
  if (b.length < 26) return "more";
  const dib = u32le(b, 14);
  // OS/2 1.x's 12-byte header has 16-bit sizes; every later one 32-bit signed (negative height:
  // rows stored top-down).
  if (dib === 12) return sized("bmp", u16le(b, 18), u16le(b, 20));
  if (dib < 40) return null;
  return sized("bmp", Math.abs(i32le(b, 18)), Math.abs(i32le(b, 22)));
}

function webp(b: Uint8Array): HeaderRead {
  if (b.length < 30) return "more";
  if (ascii(b, 12, "VP8X")) return sized("webp", u24le(b, 24) + 1, u24le(b, 27) + 1);
  if (ascii(b, 12, "VP8L")) {
    if (b[20] !== 0x2f) return null;
    const bits = u32le(b, 21);
    return sized("webp", (bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1);
  }
  if (ascii(b, 12, "VP8 ")) {
    // A key frame's 3-byte tag, the start code 9d 01 2a, then 14-bit sizes (2 bits of scaling above).
    if (b[23] !== 0x9d || b[24] !== 0x01 || b[25] !== 0x2a) return null;
    return sized("webp", u16le(b, 26) & 0x3fff, u16le(b, 28) & 0x3fff);
  }
  return null;
}

function jpeg(b: Uint8Array): HeaderRead {
  // Marker segments after SOI: FF, fill bytes FF, the marker, then (except standalone markers) a
  // big-endian length that counts itself. The frame header (SOF0..SOF15 but DHT C4, JPG C8, DAC CC)
  // holds precision, height, width.
  let at = 2;
  for (;;) {
    if (at >= b.length) return "more";
    if (b[at] !== 0xff) return null;
    while (at < b.length && b[at] === 0xff) at++;
    if (at >= b.length) return "more";
    const marker = b[at]!;
    at++;
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;
    // End of image or start of scan before any frame header: not a JPEG we can size.
    if (marker === 0xd9 || marker === 0xda || marker === 0x00) return null;
    if (at + 2 > b.length) return "more";
    const length = u16be(b, at);
    if (length < 2) return null;
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (at + 7 > b.length) return "more";
      return sized("jpeg", u16be(b, at + 5), u16be(b, at + 3));
    }
    at += length;
  }
}

interface Box {
  type: string;
  /** The payload's start, and the box's end (past the bytes read, for a box not read whole). */
  from: number;
  to: number;
}

/** The ISOBMFF box whose header starts at `at`; `"more"` when that header lies past the bytes read. */
function boxAt(b: Uint8Array, at: number, parentEnd: number): Box | "more" | null {
  if (at + 8 > b.length) return "more";
  let size = u32be(b, at);
  let header = 8;
  if (size === 1) {
    if (at + 16 > b.length) return "more";
    size = u32be(b, at + 8) * 2 ** 32 + u32be(b, at + 12);
    header = 16;
  } else if (size === 0) {
    size = parentEnd - at; // to the end of its parent (or of the file)
  }
  if (size < header || at + size > parentEnd) return null;
  return { type: String.fromCharCode(...b.subarray(at + 4, at + 8)), from: at + header, to: at + size };
}

/** The child box of `type` among the boxes in `[from, to)`, which must all have been read. */
function child(b: Uint8Array, from: number, to: number, type: string): Box | null {
  for (let at = from; at < to; ) {
    const box = boxAt(b, at, to);
    if (box === "more" || box === null) return null;
    if (box.type === type) return box;
    at = box.to;
  }
  return null;
}

function avif(b: Uint8Array): HeaderRead {
  // Top-level boxes (ftyp, meta, mdat, ...) one by one up to meta, a full box (4 bytes of version and
  // flags) holding iprp > ipco > the ispe properties (full box, then width and height). Every item
  // has an ispe (alpha planes, thumbnails, a grid's tiles and the grid itself): the largest of each
  // dimension bounds what a decoder allocates.
  let meta: Box | null = null;
  for (let at = 0; !meta; ) {
    const box = boxAt(b, at, Number.MAX_SAFE_INTEGER);
    if (box === "more" || box === null) return box;
    if (box.type === "meta") meta = box;
    else at = box.to;
  }
  if (meta.to > b.length) return "more";
  const iprp = child(b, meta.from + 4, meta.to, "iprp");
  const ipco = iprp && child(b, iprp.from, iprp.to, "ipco");
  if (!ipco) return null;
  let width = 0;
  let height = 0;
  for (let at = ipco.from; at < ipco.to; ) {
    const p = boxAt(b, at, ipco.to);
    if (p === "more" || p === null) return null;
    if (p.type === "ispe" && p.to - p.from >= 12) {
      width = Math.max(width, u32be(b, p.from + 4));
      height = Math.max(height, u32be(b, p.from + 8));
    }
    at = p.to;
  }
  return sized("avif", width, height);
}

/** The format and size from the first bytes of a file (see HeaderRead). */
export function readImageHeader(b: Uint8Array): HeaderRead {
  if (b.length < 12) return b.length === 0 ? null : "more";
  if (ascii(b, 0, "\x89PNG\r\n\x1a\n")) return png(b);
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return jpeg(b);
  if (ascii(b, 0, "RIFF") && ascii(b, 8, "WEBP")) return webp(b);
  if (ascii(b, 0, "GIF87a") || ascii(b, 0, "GIF89a")) return gif(b);
  if (ascii(b, 0, "BM")) return bmp(b);
  if (ascii(b, 4, "ftyp") && (ascii(b, 8, "avif") || ascii(b, 8, "avis") || hasBrand(b, "avif"))) return avif(b);
  return null;
}

/** Whether an ISOBMFF file's ftyp lists `brand` among its compatible brands. */
function hasBrand(b: Uint8Array, brand: string): boolean {
  const size = u32be(b, 0);
  for (let at = 16; at + 4 <= Math.min(size, b.length); at += 4) if (ascii(b, at, brand)) return true;
  return false;
}

/** The header of an image file, reading as little of it as it takes (`null`: not readable). */
export async function imageHeaderOf(file: Blob): Promise<ImageHeader | null> {
  for (let n = FIRST_READ_BYTES; ; n *= 4) {
    const read = readImageHeader(new Uint8Array(await file.slice(0, Math.min(n, MAX_HEADER_BYTES)).arrayBuffer()));
    if (read !== "more") return read;
    if (n >= file.size || n >= MAX_HEADER_BYTES) return null;
  }
}
