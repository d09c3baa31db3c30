// The inpainting mask: painted with a brush over the init image (white = repaint), cleared, inverted,
// or loaded from a black-and-white image. Kept in a canvas at the init image's size; handed to the
// engine at the requested size.
import type { RgbaImage } from "./protocol";
import { rgbaAt } from "./images";

const PAINT = "rgba(255, 255, 255, 1)";

export class MaskEditor {
  private readonly ctx: CanvasRenderingContext2D;
  private drawing = false;
  private last: { x: number; y: number } | null = null;
  /** Brush diameter in image pixels. */
  brush = 16;
  erase = false;
  /** Called after every change (painted pixels or not). */
  onChange: () => void = () => undefined;

  constructor(readonly canvas: HTMLCanvasElement) {
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    if (!ctx) throw new Error("no 2D canvas");
    this.ctx = ctx;
    canvas.addEventListener("pointerdown", (e) => {
      this.drawing = true;
      this.last = null;
      canvas.setPointerCapture(e.pointerId);
      this.stroke(e);
    });
    canvas.addEventListener("pointermove", (e) => this.drawing && this.stroke(e));
    const end = (): void => {
      if (!this.drawing) return;
      this.drawing = false;
      this.last = null;
      this.onChange();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }

  /** A new, empty mask of the init image's size. */
  reset(width: number, height: number): void {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear(): void {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.onChange();
  }

  invert(): void {
    const { width, height } = this.canvas;
    const image = this.ctx.getImageData(0, 0, width, height);
    const d = image.data;
    for (let i = 0; i < d.length; i += 4) {
      const on = d[i + 3]! >= 128;
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = on ? 0 : 255;
    }
    this.ctx.putImageData(image, 0, 0);
    this.onChange();
  }

  /** Loads a mask image (white or light = repaint), scaled to the canvas. */
  load(bitmap: ImageBitmap): void {
    const { width, height } = this.canvas;
    const src = rgbaAt(bitmap, width, height, false).rgba;
    const image = this.ctx.createImageData(width, height);
    const d = image.data;
    for (let i = 0; i < d.length; i += 4) {
      const luma = 0.299 * src[i]! + 0.587 * src[i + 1]! + 0.114 * src[i + 2]!;
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = luma >= 127.5 ? 255 : 0;
    }
    this.ctx.putImageData(image, 0, 0);
    this.onChange();
  }

  /** Fraction of the image marked for repainting. */
  coverage(): number {
    const { width, height } = this.canvas;
    if (width === 0 || height === 0) return 0;
    const d = this.ctx.getImageData(0, 0, width, height).data;
    let on = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i]! >= 128) on++;
    return on / (width * height);
  }

  /** The mask as the engine takes it (white = repaint, black = keep) at `width` x `height`. */
  export(width: number, height: number): RgbaImage {
    const scaled = rgbaAt(this.canvas, width, height, false);
    const d = scaled.rgba;
    for (let i = 0; i < d.length; i += 4) {
      const v = d[i + 3]! >= 128 ? 255 : 0;
      d[i] = d[i + 1] = d[i + 2] = v;
      d[i + 3] = 255;
    }
    return scaled;
  }

  private stroke(e: PointerEvent): void {
    const rect = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - rect.left) / rect.width) * this.canvas.width;
    const y = ((e.clientY - rect.top) / rect.height) * this.canvas.height;
    const ctx = this.ctx;
    ctx.globalCompositeOperation = this.erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = PAINT;
    ctx.lineWidth = this.brush;
    ctx.lineCap = "round";
    ctx.beginPath();
    if (this.last) {
      ctx.moveTo(this.last.x, this.last.y);
      ctx.lineTo(x, y);
      ctx.stroke();
    } else {
      ctx.arc(x, y, this.brush / 2, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.globalCompositeOperation = "source-over";
    this.last = { x, y };
  }
}
