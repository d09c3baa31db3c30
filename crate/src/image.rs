//! Images in and out: the pipeline's [`Image`] from PNG files and PNG files (with A1111's `parameters`
//! text chunk) from RGBA pixels. The browser page decodes uploads itself (canvas) and sends RGBA; the
//! worker encodes the results here, so every PNG carries the same metadata.

use crate::pipeline::{GenerateOutput, GenerateRequest};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

pub use crate::pipeline::Image;

/// An image file that could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG we can decode (or not there): the path and the decoder's reason.
    #[error("{path}: not a readable PNG image ({reason})")]
    Unreadable { path: String, reason: String },
    /// Writing failed.
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

/// The LoRAs and embeddings a generation used, for its `parameters` text.
#[derive(Debug, Clone, Default)]
pub struct ExtraNetworks {
    /// (name, weight, A1111 short hash)
    pub loras: Vec<(String, f32, String)>,
    /// (trigger word, A1111 short hash)
    pub embeddings: Vec<(String, String)>,
}

/// A1111's `parameters` text: the prompt, the negative prompt, then one line of settings, so other tools
/// (A1111, ComfyUI, civitai) read the generation settings back from the PNG. LoRAs appear as A1111 writes
/// them: a `<lora:name:weight>` tag in the prompt (added where the prompt has none) and `Lora hashes`.
pub fn a1111_parameters(
    r: &GenerateRequest,
    out: &GenerateOutput,
    model_hash: &str,
    model_name: &str,
    extra: &ExtraNetworks,
) -> String {
    let mut text = r.prompt.clone();
    for (name, weight, _) in &extra.loras {
        if !text.contains(&format!("<lora:{name}")) {
            text.push_str(&format!(" <lora:{name}:{weight}>"));
        }
    }
    if !r.negative_prompt.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", r.negative_prompt));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {model_hash}, Model: {model_name}",
        r.steps,
        out.scheduler.a1111_name(),
        r.guidance,
        r.seed,
        out.width,
        out.height,
    ));
    if r.init_image.is_some() {
        text.push_str(&format!(", Denoising strength: {}", r.strength));
    }
    let quoted = |items: Vec<String>| format!("\"{}\"", items.join(", "));
    if !extra.loras.is_empty() {
        let hashes = extra.loras.iter().map(|(name, _, hash)| format!("{name}: {hash}")).collect();
        text.push_str(&format!(", Lora hashes: {}", quoted(hashes)));
    }
    if !extra.embeddings.is_empty() {
        let hashes = extra.embeddings.iter().map(|(name, hash)| format!("{name}: {hash}")).collect();
        text.push_str(&format!(", TI hashes: {}", quoted(hashes)));
    }
    text
}

#[cfg(not(target_arch = "wasm32"))]
/// Reads a PNG as RGB in [0, 1] (or luminance, PIL's "L" weights, for masks).
pub fn read_png(path: &Path, gray: bool) -> Result<Image, ImageError> {
    let err =
        |e: &dyn std::fmt::Display| ImageError::Unreadable { path: path.display().to_string(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(|e| err(&e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| err(&e))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or_else(|| err(&"too large"))?];
    let frame = reader.next_frame(&mut buf).map_err(|e| err(&e))?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let rgb: Vec<[f32; 3]> = match frame.color_type {
        png::ColorType::Rgb => buf[..w * h * 3].chunks(3).map(|p| [p[0], p[1], p[2]].map(|v| v as f32)).collect(),
        png::ColorType::Rgba => buf[..w * h * 4].chunks(4).map(|p| [p[0], p[1], p[2]].map(|v| v as f32)).collect(),
        png::ColorType::Grayscale => buf[..w * h].iter().map(|&v| [v as f32; 3]).collect(),
        png::ColorType::GrayscaleAlpha => buf[..w * h * 2].chunks(2).map(|p| [p[0] as f32; 3]).collect(),
        png::ColorType::Indexed => return Err(err(&"palette not expanded")),
    };
    let data = if gray {
        // PIL's convert("L"): L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded.
        rgb.iter().map(|p| ((p[0] * 299.0 + p[1] * 587.0 + p[2] * 114.0) / 1000.0).round() / 255.0).collect()
    } else {
        rgb.iter().flat_map(|p| p.map(|v| v / 255.0)).collect()
    };
    Ok(Image { width: w, height: h, channels: if gray { 1 } else { 3 }, data })
}

/// RGBA8 pixels (from the page's `ImageData`) as the pipeline's [`Image`]: RGB in [0, 1], or for masks
/// luminance with PIL's "L" weights (alpha ignored, as PIL's convert does).
pub fn image_from_rgba(width: usize, height: usize, rgba: &[u8], gray: bool) -> Result<Image, String> {
    if width == 0 || height == 0 || rgba.len() != width * height * 4 {
        return Err(format!("{} bytes is not a {width}x{height} RGBA image", rgba.len()));
    }
    let pixels = rgba.chunks_exact(4);
    let data = if gray {
        pixels
            .map(|p| ((p[0] as f32 * 299.0 + p[1] as f32 * 587.0 + p[2] as f32 * 114.0) / 1000.0).round() / 255.0)
            .collect()
    } else {
        pixels.flat_map(|p| [p[0], p[1], p[2]].map(|v| v as f32 / 255.0)).collect()
    };
    Ok(Image { width, height, channels: if gray { 1 } else { 3 }, data })
}

/// Encodes RGBA8 pixels as an RGB PNG carrying A1111's `parameters` text chunk.
pub fn encode_png(w: usize, h: usize, rgba: &[u8], parameters: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_png_to(&mut out, w, h, rgba, parameters).map_err(|e| e.to_string())?;
    Ok(out)
}

fn write_png_to(
    out: impl std::io::Write,
    w: usize,
    h: usize,
    rgba: &[u8],
    parameters: &str,
) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // A1111's `parameters` chunk: other tools read the settings back from it.
    encoder.add_itxt_chunk("parameters".into(), parameters.into())?;
    let mut writer = encoder.write_header()?;
    let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    writer.write_image_data(&rgb)?;
    writer.finish()
}

#[cfg(not(target_arch = "wasm32"))]
pub fn write_png(path: &Path, w: usize, h: usize, rgba: &[u8], parameters: &str) -> Result<(), ImageError> {
    let err = |e: &dyn std::fmt::Display| ImageError::Write { path: path.display().to_string(), reason: e.to_string() };
    let file = std::fs::File::create(path).map_err(|e| err(&e))?;
    write_png_to(std::io::BufWriter::new(file), w, h, rgba, parameters).map_err(|e| err(&e))
}
