// Unit tests of image-header.ts: headers built byte by byte from each format's specification, with
// sizes whose width and height differ (a swap or an off-by-one shows), plus truncated and damaged
// files. The e2e app test also checks it against Chromium's own PNG, JPEG and WebP encoders.
import assert from "node:assert/strict";
import { test } from "node:test";
import { imageHeaderOf, MAX_HEADER_BYTES, readImageHeader } from "./image-header";

const bytes = (...parts: (number[] | string | Uint8Array)[]): Uint8Array => {
  const out: number[] = [];
  for (const p of parts) out.push(...(typeof p === "string" ? [...p].map((c) => c.charCodeAt(0)) : p));
  return Uint8Array.from(out);
};
const be16 = (n: number): number[] => [(n >> 8) & 255, n & 255];
const be32 = (n: number): number[] => [(n >>> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255];
const le16 = (n: number): number[] => [n & 255, (n >> 8) & 255];
const le24 = (n: number): number[] => [n & 255, (n >> 8) & 255, (n >> 16) & 255];
const le32 = (n: number): number[] => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255];
const zeros = (n: number): number[] => new Array<number>(n).fill(0);

const pngOf = (w: number, h: number): Uint8Array =>
  bytes("\x89PNG\r\n\x1a\n", be32(13), "IHDR", be32(w), be32(h), [8, 6, 0, 0, 0], zeros(4), be32(0), "IEND", zeros(4));

/** A baseline JPEG: SOI, the given segments before the frame header, SOF0, then the scan. */
const jpegOf = (w: number, h: number, before: number[][] = [], sof = 0xc0): Uint8Array =>
  bytes([0xff, 0xd8], ...before, [0xff, sof], be16(17), [8], be16(h), be16(w), [3], zeros(9), [0xff, 0xda], be16(12), zeros(10), [0xff, 0xd9]);
const segment = (marker: number, payload: number): number[] => [0xff, marker, ...be16(payload + 2), ...zeros(payload)];

const riff = (chunk: string, data: number[]): Uint8Array => bytes("RIFF", le32(4 + 8 + data.length), "WEBP", chunk, le32(data.length), data);

/** An ISOBMFF box. */
const box = (type: string, ...payload: number[][]): number[] => {
  const body = payload.flat();
  return [...be32(8 + body.length), ...[...type].map((c) => c.charCodeAt(0)), ...body];
};
const ispe = (w: number, h: number): number[] => box("ispe", zeros(4), be32(w), be32(h));
const avifOf = (props: number[][], beforeMeta: number[][] = []): Uint8Array =>
  Uint8Array.from([
    ...box("ftyp", [..."avif"].map((c) => c.charCodeAt(0)), zeros(4), [..."mif1miaf"].map((c) => c.charCodeAt(0))),
    ...beforeMeta.flat(),
    ...box("meta", zeros(4), box("hdlr", zeros(24)), box("iprp", box("ipco", ...props), box("ipma", zeros(8)))),
    ...box("mdat", zeros(16)),
  ]);

test("PNG: the IHDR's width and height", () => {
  assert.deepEqual(readImageHeader(pngOf(640, 480)), { format: "png", width: 640, height: 480 });
  assert.deepEqual(readImageHeader(pngOf(30000, 30000)), { format: "png", width: 30000, height: 30000 });
  // 32-bit sizes are unsigned.
  assert.deepEqual(readImageHeader(pngOf(0x80000001, 3)), { format: "png", width: 0x80000001, height: 3 });
  assert.equal(readImageHeader(pngOf(640, 0)), null, "a zero size");
  const noIhdr = pngOf(640, 480);
  noIhdr.set([0x49, 0x44, 0x41, 0x54], 12); // "IDAT" first
  assert.equal(readImageHeader(noIhdr), null);
  assert.equal(readImageHeader(pngOf(640, 480).subarray(0, 20)), "more");
});

test("JPEG: the frame header, past APPn, DQT, DHT, fill bytes and restart markers", () => {
  assert.deepEqual(readImageHeader(jpegOf(1024, 768)), { format: "jpeg", width: 1024, height: 768 });
  const progressive = jpegOf(35, 17, [segment(0xe0, 14), segment(0xe1, 3000), segment(0xdb, 65), segment(0xc4, 30)], 0xc2);
  assert.deepEqual(readImageHeader(progressive), { format: "jpeg", width: 35, height: 17 });
  // Fill bytes before a marker and a standalone marker (no length) are skipped.
  assert.deepEqual(readImageHeader(jpegOf(7, 9, [[0xff, 0xff, 0xff, 0xd0], segment(0xfe, 5)])), { format: "jpeg", width: 7, height: 9 });
  // DHT (C4), JPG (C8) and DAC (CC) are not frame headers although in the C0-CF range.
  assert.deepEqual(readImageHeader(jpegOf(5, 6, [segment(0xc4, 7), segment(0xc8, 7), segment(0xcc, 7)])), { format: "jpeg", width: 5, height: 6 });
  // The size past the bytes read: more are needed (a large EXIF block).
  assert.equal(readImageHeader(jpegOf(5, 6, [segment(0xe1, 60000)]).subarray(0, 40000)), "more");
  // A scan before any frame header, a height defined later (DNL, 0 here), garbage between segments.
  assert.equal(readImageHeader(bytes([0xff, 0xd8, 0xff, 0xda], be16(4), zeros(20))), null);
  assert.equal(readImageHeader(jpegOf(5, 0)), null);
  assert.equal(readImageHeader(bytes([0xff, 0xd8, 0xff, 0xe0], be16(4), [0, 0, 0x12, 0x34], zeros(20))), null);
  assert.equal(readImageHeader(bytes([0xff, 0xd8, 0xff, 0xe0], be16(1), zeros(20))), null, "a length below 2");
});

test("WebP: lossy (VP8), lossless (VP8L) and extended (VP8X)", () => {
  const vp8 = riff("VP8 ", [0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, ...le16(300 | (1 << 14)), ...le16(200 | (2 << 14)), ...zeros(10)]);
  assert.deepEqual(readImageHeader(vp8), { format: "webp", width: 300, height: 200 }, "the scaling bits are not the size");
  const badStart = riff("VP8 ", [0x50, 0x02, 0x00, 0x9d, 0x01, 0x2b, ...le16(300), ...le16(200), ...zeros(10)]);
  assert.equal(readImageHeader(badStart), null);
  // VP8L: signature 0x2f, then 14 bits width - 1, 14 bits height - 1.
  const bits = (16383 - 1) | ((5 - 1) << 14) | (1 << 28);
  assert.deepEqual(readImageHeader(riff("VP8L", [0x2f, ...le32(bits), ...zeros(10)])), { format: "webp", width: 16383, height: 5 });
  assert.equal(readImageHeader(riff("VP8L", [0x2e, ...le32(bits), ...zeros(10)])), null);
  // VP8X: 24-bit canvas width - 1 and height - 1 (up to 2^24 each).
  assert.deepEqual(readImageHeader(riff("VP8X", [0x10, 0, 0, 0, ...le24(29999), ...le24(0xffffff), ...zeros(4)])), {
    format: "webp",
    width: 30000,
    height: 2 ** 24,
  });
  assert.equal(readImageHeader(riff("ALPH", zeros(20))), null);
});

test("GIF and BMP", () => {
  assert.deepEqual(readImageHeader(bytes("GIF89a", le16(320), le16(240), zeros(10))), { format: "gif", width: 320, height: 240 });
  assert.deepEqual(readImageHeader(bytes("GIF87a", le16(1), le16(65535), zeros(10))), { format: "gif", width: 1, height: 65535 });
  const bmp = (dib: number, size: number[]): Uint8Array => bytes("BM", zeros(12), le32(dib), size, zeros(40));
  assert.deepEqual(readImageHeader(bmp(40, [...le32(800), ...le32(600)])), { format: "bmp", width: 800, height: 600 });
  assert.deepEqual(readImageHeader(bmp(124, [...le32(800), ...le32(-600)])), { format: "bmp", width: 800, height: 600 }, "top-down rows");
  assert.deepEqual(readImageHeader(bmp(12, [...le16(80), ...le16(60)])), { format: "bmp", width: 80, height: 60 }, "OS/2 1.x header");
  assert.equal(readImageHeader(bmp(20, [...le32(800), ...le32(600)])), null, "no such DIB header");
});

test("AVIF: the largest ispe of the meta box's properties", () => {
  assert.deepEqual(readImageHeader(avifOf([box("pixi", zeros(7)), ispe(1920, 1080)])), { format: "avif", width: 1920, height: 1080 });
  // A grid image: tiles and the grid each have an ispe; the grid's bounds the decode.
  assert.deepEqual(readImageHeader(avifOf([ispe(512, 512), ispe(30000, 20000), ispe(256, 256)])), { format: "avif", width: 30000, height: 20000 });
  // mdat (or anything) before meta is skipped; a meta past the bytes read needs more.
  const late = avifOf([ispe(64, 48)], [box("free", zeros(5000))]);
  assert.deepEqual(readImageHeader(late), { format: "avif", width: 64, height: 48 });
  assert.equal(readImageHeader(late.subarray(0, 4000)), "more");
  assert.equal(readImageHeader(avifOf([box("pixi", zeros(7))])), null, "no ispe");
  // Another ISOBMFF brand (HEIC, MP4) is not read.
  const heic = avifOf([ispe(64, 48)]);
  heic.set([..."heic"].map((c) => c.charCodeAt(0)), 8);
  heic.set([..."heix"].map((c) => c.charCodeAt(0)), 16);
  heic.set([..."heixheix"].map((c) => c.charCodeAt(0)), 20);
  assert.equal(readImageHeader(heic), null);
});

test("other files are not read", () => {
  for (const other of [bytes("not an image at all"), bytes("II*\0", zeros(20)), bytes("<svg xmlns='http://www.w3.org/2000/svg'/>"), new Uint8Array(0)]) {
    assert.equal(readImageHeader(other), null, new TextDecoder().decode(other));
  }
  assert.equal(readImageHeader(bytes("\x89PNG")), "more");
});

test("imageHeaderOf reads further into a file only as far as it has to", async () => {
  const reads: number[] = [];
  /** A Blob that records how many bytes each read takes. */
  class Traced extends Blob {
    override slice(start?: number, end?: number, type?: string): Blob {
      reads.push(Math.min(end ?? this.size, this.size) - (start ?? 0));
      return super.slice(start, end, type);
    }
  }
  const traced = (data: Uint8Array): Blob => new Traced([data as Uint8Array<ArrayBuffer>]);
  assert.deepEqual(await imageHeaderOf(traced(pngOf(30000, 30000))), { format: "png", width: 30000, height: 30000 });
  assert.equal(reads.length, 1);
  // A JPEG whose frame header follows 100 kB of metadata: a second, larger read.
  reads.length = 0;
  const exif = Array.from({ length: 2 }, () => segment(0xe1, 60000));
  assert.deepEqual(await imageHeaderOf(traced(jpegOf(4000, 3000, exif))), { format: "jpeg", width: 4000, height: 3000 });
  assert.deepEqual(reads, [65536, 120000 + 8 + 2 + 19 + 14 + 2]);
  // A truncated file: null, after reading it whole once.
  reads.length = 0;
  assert.equal(await imageHeaderOf(traced(jpegOf(4000, 3000, exif).subarray(0, 100000))), null);
  assert.deepEqual(reads, [65536, 100000]);
  // Metadata that never ends: no read past MAX_HEADER_BYTES.
  reads.length = 0;
  const endless = new Uint8Array(MAX_HEADER_BYTES + 1000);
  endless.set([0xff, 0xd8]);
  for (let at = 2; at + 4 <= endless.length; at += 65000) endless.set([0xff, 0xe1, ...be16(65000 - 2)], at);
  assert.equal(await imageHeaderOf(traced(endless)), null);
  assert.ok(Math.max(...reads) <= MAX_HEADER_BYTES, JSON.stringify(reads));
});
