//! Loading a stored model onto the GPU, tensor by tensor: each weights file is read chunk by chunk in
//! file order, every tensor goes to the device as soon as its bytes are in, so the wasm heap holds one
//! chunk and one tensor at a time, never a whole file.

use std::cell::Cell;
use std::collections::BTreeMap;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use js_sys::Uint8Array;

use super::store::{FileRecord, Store};
use crate::Error;
use crate::config::{AutoencoderKLConfig, UNet2DConditionConfig};
use crate::manifest::Manifest;
use crate::model_folder::{ComponentConfigs, ModelConfigs, Part};
use crate::pipeline::StableDiffusion;
use crate::protocol::{Event, ModelInfo, Phase, WeightsVariant};
use crate::schedulers::SchedulerKind;
use crate::weights::{DeviceTensors, Dtype, SafetensorsHeader, TensorInfo, Variant};

/// Bytes of a weights file read and decoded at a time, into the piece being built.
const READ_PIECE_BYTES: usize = 8 << 20;

/// Uploaded bytes after which the device is flushed: cubecl keeps a write's data (in the wasm heap)
/// until its stream runs, so without flushes the whole model would wait there.
const FLUSH_BYTES: usize = 32 << 20;

/// A piece's values as the device takes them: f32, or f16 where the device computes in f16.
enum HostValues {
    F32(Vec<f32>),
    F16(Vec<burn::tensor::f16>),
}

impl HostValues {
    fn new(f16: bool, capacity: usize) -> Self {
        if f16 { Self::F16(Vec::with_capacity(capacity)) } else { Self::F32(Vec::with_capacity(capacity)) }
    }

    /// Appends `bytes` (whole elements of `info`'s dtype).
    fn extend(&mut self, info: &TensorInfo, bytes: &[u8]) -> Result<(), crate::weights::WeightsError> {
        match self {
            Self::F32(values) => info.extend_f32(bytes, values),
            Self::F16(values) => {
                values.extend(bytes.chunks_exact(2).map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]])));
                Ok(())
            }
        }
    }

    fn into_data(self) -> TensorData {
        match self {
            Self::F32(values) => {
                let n = values.len();
                TensorData::new(values, [n])
            }
            Self::F16(values) => {
                let n = values.len();
                TensorData::new(values, [n])
            }
        }
    }
}

/// A model on the GPU, with what the results' metadata needs.
pub struct LoadedModel {
    pub id: String,
    pub variant: Option<Variant>,
    pub pipeline: StableDiffusion,
    /// A1111's "Model hash": the first 10 hex digits of the U-Net file's sha256.
    pub hash: String,
    /// The model folder's name (the manifest URL's last folder).
    pub name: String,
    /// The LoRAs merged into its text encoder and U-Net now.
    pub loras: crate::lora::Merged,
}

/// Chunk reads kept in flight ahead of the one being used: IndexedDB serves a few requests in parallel
/// faster than one at a time, and the reads go on while the worker decodes and uploads (each holds a
/// 4 MiB chunk in the JS heap, not in the wasm heap).
const READ_AHEAD: u64 = 3;

/// A chunk's read, already issued.
type ChunkRead = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Uint8Array, Error>>>>;

/// Sequential reads over a stored file's chunks: one chunk at hand (left in JS) and the next
/// [`READ_AHEAD`] being read.
struct ChunkReader<'a> {
    store: &'a Store,
    record: FileRecord,
    buf: Option<Uint8Array>,
    buf_start: u64,
    buf_len: u64,
    /// Reads of the chunks from `ahead_from` on, in order.
    ahead: std::collections::VecDeque<ChunkRead>,
    ahead_from: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(store: &'a Store, record: FileRecord) -> Self {
        Self { store, record, buf: None, buf_start: 0, buf_len: 0, ahead: Default::default(), ahead_from: 0 }
    }

    /// Chunk `index`, with the reads of the [`READ_AHEAD`] after it issued (sequential reads then wait
    /// for IndexedDB only when it is slower than decoding and uploading).
    async fn fetch(&mut self, index: u64) -> Result<Uint8Array, Error> {
        let (id, path) = (&self.record.id, &self.record.path);
        if !self.record.chunks_verifiable() {
            // Verified before chunk hashes were kept: the repair reads it back once to record them.
            return Err(Error::Damaged(format!("{path} has no chunk hashes yet")));
        }
        if index != self.ahead_from {
            // Not the next chunk (the header's re-read, or a seek): start over from `index`.
            self.ahead.clear();
            self.ahead_from = index;
        }
        let chunks = self.record.size.div_ceil(self.record.chunk_bytes);
        let end = (index + 1 + READ_AHEAD).min(chunks);
        while self.ahead_from + (self.ahead.len() as u64) < end {
            let next = self.ahead_from + self.ahead.len() as u64;
            let check = self.record.chunk_check(next);
            self.ahead.push_back(Box::pin(self.store.chunk_soon(id, path, next, check)?));
        }
        let this = self.ahead.pop_front().expect("the read of chunk `index` was issued");
        self.ahead_from += 1;
        match this.await {
            // Missing, short or changed since it was verified: marked, so that the next download
            // fetches this chunk again (and only it).
            Err(Error::Damaged(what)) => {
                // Unmarked (the model deleted meanwhile, say), the scrub before the repair finds it.
                let _ = self.store.mark_damaged(id, path, index).await;
                Err(Error::Damaged(what))
            }
            other => other,
        }
    }

    /// `len` bytes from `start`, copied from the chunks in JS straight into the returned vector (one
    /// copy per byte: a chunk is never brought into the wasm heap whole).
    async fn read(&mut self, start: u64, len: usize) -> Result<Vec<u8>, Error> {
        if start + len as u64 > self.record.size {
            return Err(Error::Model(format!("{}: read past the end", self.record.path)));
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = start;
        while out.len() < len {
            let in_buf = self.buf.is_some() && self.buf_start <= pos && pos < self.buf_start + self.buf_len;
            if !in_buf {
                let index = pos / self.record.chunk_bytes;
                let chunk = self.fetch(index).await?;
                self.buf_start = index * self.record.chunk_bytes;
                self.buf_len = chunk.length() as u64;
                self.buf = Some(chunk);
                if self.buf_len == 0 {
                    return Err(Error::Model(format!("{}: chunk {index} is empty", self.record.path)));
                }
            }
            let chunk = self.buf.as_ref().expect("a chunk at hand");
            let offset = (pos - self.buf_start) as u32;
            let n = (len - out.len()).min((self.buf_len - offset as u64) as usize);
            let filled = out.len();
            chunk.subarray(offset, offset + n as u32).copy_to_uninit(&mut out.spare_capacity_mut()[..n]);
            // SAFETY: `copy_to_uninit` initialised the `n` bytes after `filled`.
            unsafe { out.set_len(filled + n) };
            pos += n as u64;
        }
        Ok(out)
    }
}

/// Reads and checks every stored chunk of the model `id`'s files for `variant`, marking the damaged
/// ones for repair (a load stops at the first damaged chunk; this finds them all, so one repair fetches
/// them together). Returns how many it found.
pub async fn scrub(
    store: &Store,
    id: &str,
    variant: Option<Variant>,
    small_only: bool,
    cancel: &Cell<bool>,
) -> Result<usize, Error> {
    let record = store.model(id).await?.ok_or_else(|| Error::NotStored(format!("the model {id} is not stored")))?;
    let manifest = Manifest::from_json(&record.manifest).map_err(|e| Error::Storage(e.to_string()))?;
    let mut damaged = 0;
    for f in manifest.select(variant).map_err(|e| Error::Model(e.to_string()))? {
        if small_only && f.path.ends_with(".safetensors") {
            continue;
        }
        let Some(file) = store.file(id, &f.path).await? else { continue };
        if file.sha256 != f.sha256 || file.stored != file.size || !file.chunks_verifiable() {
            continue;
        }
        let chunks = file.chunks();
        // READ_AHEAD + 1 reads in flight, checked in order.
        let (mut reads, mut next) = (std::collections::VecDeque::new(), 0);
        while next < chunks || !reads.is_empty() {
            while next < chunks && reads.len() as u64 <= READ_AHEAD {
                reads.push_back((next, store.chunk_soon(id, &f.path, next, file.chunk_check(next))?));
                next += 1;
            }
            if cancel.get() {
                return Err(Error::Cancelled);
            }
            let (index, read) = reads.pop_front().expect("a read in flight");
            match read.await {
                Err(Error::Damaged(_)) => {
                    store.mark_damaged(id, &f.path, index).await?;
                    damaged += 1;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }
    Ok(damaged)
}

/// A whole (small) file: configs, tokenizer.
async fn read_file(store: &Store, record: &FileRecord) -> Result<Vec<u8>, Error> {
    ChunkReader::new(store, record.clone()).read(0, record.size as usize).await
}

struct LoadProgress<'a> {
    emit: &'a dyn Fn(Event),
    cancel: &'a Cell<bool>,
    done: u64,
    total: u64,
}

/// Streams one safetensors file from the store to the device.
async fn upload_weights(
    store: &Store,
    record: FileRecord,
    device: &Device,
    progress: &mut LoadProgress<'_>,
) -> Result<DeviceTensors, Error> {
    let path = record.path.clone();
    let bad = |e: crate::weights::WeightsError| Error::Model(format!("{path}: {e}"));
    let size = record.size;
    let mut reader = ChunkReader::new(store, record);
    let first8 = reader.read(0, 8.min(size as usize)).await?;
    let prefix_len = SafetensorsHeader::prefix_len(&first8).map_err(bad)?;
    if prefix_len > size {
        return Err(Error::Model(format!("{path}: header longer than the file")));
    }
    let prefix = reader.read(0, prefix_len as usize).await?;
    let header = SafetensorsHeader::parse(&prefix, size).map_err(bad)?;
    let mut infos: Vec<TensorInfo> = header.tensors().cloned().collect();
    infos.sort_by_key(|t| t.start);
    let mut tensors = DeviceTensors::default();
    // Where the time goes (reported on the console): reading chunks, decoding to the device's dtype,
    // handing tensors to the GPU.
    let now = js_sys::Date::now;
    let (t_start, mut t_read, mut t_decode, mut t_upload) = (now(), 0.0, 0.0, 0.0);
    let mut unflushed = 0;
    for info in infos {
        if progress.cancel.get() {
            return Err(Error::Cancelled);
        }
        let len = (info.end - info.start) as usize;
        if !matches!(info.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            // Integer buffers (CLIP's stored `position_ids`) are no weights: no model reads them.
            progress.done += len as u64;
            continue;
        }
        // Each tensor goes up whole, in one GPU buffer (no joins on the GPU: they cost SwiftShader a
        // copy of most of the U-Net), unless it exceeds one: CLIP's token embedding (152 MB as f32) goes
        // up in pieces of whole rows, the row blocks the model keeps it in (`TensorLoader::row_blocks`,
        // `TokenEmbedding::max_rows`). The bytes are read and decoded [`READ_PIECE_BYTES`] at a time, so
        // the wasm heap holds the piece's values and one read.
        let elem = info.dtype.size() as usize;
        let device_f16 = info.dtype == Dtype::F16 && device.settings().float_dtype == FloatDType::F16;
        let device_elem = if device_f16 { 2 } else { 4 };
        let row: usize = info.shape.iter().skip(1).product::<usize>().max(1);
        let numel = info.numel();
        let per_piece = if numel * device_elem <= crate::gpu::MAX_BUFFER_BYTES as usize {
            numel
        } else {
            crate::models::clip::TokenEmbedding::max_rows(row) * row
        };
        let per_read = (READ_PIECE_BYTES / elem).max(1);
        let mut pieces = Vec::with_capacity(numel.div_ceil(per_piece.max(1)));
        let mut first = 0;
        while first < numel {
            let last = (first + per_piece).min(numel);
            let mut values = HostValues::new(device_f16, last - first);
            let mut at = first;
            while at < last {
                let to = (at + per_read).min(last);
                let t0 = now();
                let bytes = reader.read(info.start + (at * elem) as u64, (to - at) * elem).await?;
                let t1 = now();
                values.extend(&info, &bytes).map_err(bad)?;
                (t_read, t_decode) = (t_read + t1 - t0, t_decode + now() - t1);
                at = to;
            }
            let t0 = now();
            pieces.push(Tensor::<1>::from_data(values.into_data(), device));
            unflushed += (last - first) * device_elem;
            if unflushed >= FLUSH_BYTES {
                device.flush().map_err(|e| Error::DeviceLost(format!("handing {path} to the GPU: {e:?}")))?;
                unflushed = 0;
            }
            t_upload += now() - t0;
            first = last;
        }
        tensors.insert(info, pieces);
        progress.done += len as u64;
        (progress.emit)(Event::Progress {
            phase: Phase::Load,
            done: progress.done,
            total: progress.total,
            bytes: None,
            file: Some(path.clone()),
        });
    }
    if unflushed > 0 {
        device.flush().map_err(|e| Error::DeviceLost(format!("handing {path} to the GPU: {e:?}")))?;
    }
    web_sys::console::info_1(
        &format!(
            "websd: {path} loaded in {:.1} s: reading chunks {:.1} s, decoding {:.1} s, handing to the GPU {:.1} s",
            (now() - t_start) / 1e3,
            t_read / 1e3,
            t_decode / 1e3,
            t_upload / 1e3
        )
        .into(),
    );
    Ok(tensors)
}

/// The U-Net's, VAE's and scheduler's configs of a stored model, read and checked as natively
/// ([`ComponentConfigs::read`]); `records` must hold the three files ([`ComponentConfigs::FILES`]).
async fn read_configs(store: &Store, records: &BTreeMap<String, FileRecord>) -> Result<ComponentConfigs, Error> {
    let mut files = BTreeMap::new();
    for path in ComponentConfigs::FILES {
        let record = records.get(path).ok_or_else(|| Error::NotStored(format!("{path} is not stored")))?;
        files.insert(path, read_file(store, record).await?);
    }
    Ok(ComponentConfigs::read(&mut |path: &str| Ok(files.get(path).cloned()))?)
}

/// What a generation needs to know of a stored model before loading it: its U-Net and VAE configs and
/// the weights files `variant` selects.
pub struct Preflight {
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub weights: Vec<crate::memory::WeightsFile>,
}

/// A stored file's record if it is complete (as the manifest's `sha256` says); a verified file with
/// chunks found damaged is [`Error::Damaged`] (the engine fetches those chunks again), anything else
/// is not stored.
fn readable(record: Option<FileRecord>, sha256: &str) -> Result<Option<FileRecord>, Error> {
    match record {
        Some(r) if r.sha256 == sha256 && r.complete => Ok(Some(r)),
        Some(r) if r.sha256 == sha256 && !r.repair.is_empty() => {
            Err(Error::Damaged(format!("{}: {} damaged chunk(s) waiting to be fetched again", r.path, r.repair.len())))
        }
        _ => Ok(None),
    }
}

/// [`Preflight`] of the stored model `id` (its configs must be stored).
pub async fn preflight(store: &Store, id: &str, variant: Option<Variant>) -> Result<Preflight, Error> {
    let record = store
        .model(id)
        .await?
        .ok_or_else(|| Error::NotStored(format!("the model {id} is not stored: download it first (EnsureModel)")))?;
    let manifest = Manifest::from_json(&record.manifest).map_err(|e| Error::Storage(e.to_string()))?;
    let mut configs = BTreeMap::new();
    for path in ComponentConfigs::FILES {
        let want = manifest.files.iter().find(|f| f.path == path);
        let stored = readable(store.file(id, path).await?, want.map_or("", |f| f.sha256.as_str()))?;
        let stored = stored.ok_or_else(|| Error::NotStored(format!("{path} of the model {id} is not stored")))?;
        configs.insert(path.to_string(), stored);
    }
    let ComponentConfigs { unet, vae, .. } = read_configs(store, &configs).await?;
    let weights = manifest.weights_files(variant).map_err(|e| Error::Model(e.to_string()))?;
    Ok(Preflight { unet, vae, weights })
}

/// A stored model's defaults (from its configs, which must be stored) and how much of `variant` is.
pub async fn model_info(
    store: &Store,
    id: &str,
    variant: Option<Variant>,
    offline: bool,
    device: Option<(crate::memory::Precision, Option<u64>)>,
) -> Result<ModelInfo, Error> {
    let record = store.model(id).await?.ok_or_else(|| Error::NotStored(format!("the model {id} is not stored")))?;
    let manifest = Manifest::from_json(&record.manifest).map_err(|e| Error::Storage(e.to_string()))?;
    let selected = manifest.select(variant).map_err(|e| Error::Model(e.to_string()))?;
    let (mut stored_bytes, mut ready) = (0, true);
    let mut configs = BTreeMap::new();
    for f in &selected {
        let file = store.file(id, &f.path).await?.filter(|r| r.sha256 == f.sha256);
        let complete = file.as_ref().is_some_and(|r| r.complete);
        stored_bytes += file.as_ref().map_or(0, |r| if complete { r.size } else { r.stored });
        ready &= complete;
        if let (Some(r), true) = (file, f.path.ends_with("config.json")) {
            configs.insert(f.path.clone(), r);
        }
    }
    let ComponentConfigs { unet, vae, scheduler } = read_configs(store, &configs).await?;
    let scheduler = SchedulerKind::model_default(&scheduler).map_err(|e| Error::Unsupported(e.to_string()))?;
    let size = (unet.sample_size * vae.scale_factor()) as u32;
    let fp16 = manifest.weights("unet", variant).is_ok_and(|f| f.path.ends_with(".fp16.safetensors"));
    let (steps, guidance) = manifest.steps_and_guidance();
    // The estimate on this device (precision, reported memory) at the default size, before any weight
    // downloads; a model this device cannot hold says so (EnsureModel refuses it).
    let memory = match device {
        Some((precision, device_memory_bytes)) => {
            let weights = manifest.weights_files(variant).map_err(|e| Error::Model(e.to_string()))?;
            let side = size as usize;
            let work = crate::memory::Workload {
                width: side,
                height: side,
                batch: 1,
                guidance: guidance > 1.0,
                encode: false,
                precision,
            };
            crate::memory::plan(&unet, &vae, &work).ok().map(|plan| {
                let estimate = crate::memory::MemoryEstimate::new(&weights, &plan, precision);
                let refused = crate::memory::check_browser_weights(&weights, precision).err();
                crate::protocol::MemoryReport {
                    weight_bytes: estimate.weight_bytes,
                    activation_bytes: estimate.activation_bytes,
                    largest_buffer_bytes: plan.largest.bytes,
                    unet_samples_per_call: plan.unet_samples_per_call as u32,
                    device_memory_bytes,
                    warning: refused.or_else(|| estimate.advice(device_memory_bytes, side, side, 1)),
                }
            })
        }
        None => None,
    };
    Ok(ModelInfo {
        id: id.to_string(),
        width: size,
        height: size,
        scheduler: scheduler.name().to_string(),
        inpainting: unet.in_channels == 9,
        sdxl: unet.has_text_time(),
        memory,
        variant: if fp16 { WeightsVariant::Fp16 } else { WeightsVariant::Fp32 },
        total_bytes: selected.iter().map(|f| f.size).sum(),
        stored_bytes,
        ready,
        offline,
        steps: steps as u32,
        guidance,
    })
}

/// Loads the stored model `id` (every file of `variant` must be complete) onto `device`.
pub async fn load_model(
    store: &Store,
    id: &str,
    variant: Option<Variant>,
    device: &Device,
    emit: &dyn Fn(Event),
    cancel: &Cell<bool>,
) -> Result<LoadedModel, Error> {
    let record = store
        .model(id)
        .await?
        .ok_or_else(|| Error::NotStored(format!("the model {id} is not stored: download it first (EnsureModel)")))?;
    let manifest = Manifest::from_json(&record.manifest).map_err(|e| Error::Storage(e.to_string()))?;
    let selected = manifest.select(variant).map_err(|e| Error::Model(e.to_string()))?;
    let mut records = BTreeMap::new();
    let mut incomplete = Vec::new();
    for f in &selected {
        match readable(store.file(id, &f.path).await?, &f.sha256)? {
            Some(r) => {
                records.insert(f.path.clone(), r);
            }
            None => incomplete.push(f.path.clone()),
        }
    }
    if !incomplete.is_empty() {
        return Err(Error::NotStored(format!(
            "the model {id} is not completely stored (missing {}): download it first (EnsureModel)",
            incomplete.join(", ")
        )));
    }
    // The small files (configs, tokenizers) whole: everything but the weights is parsed and checked
    // together, as natively ([`ModelConfigs::read`]), before any weight is uploaded.
    let mut small = BTreeMap::new();
    for (path, record) in records.iter().filter(|(p, _)| !p.ends_with(".safetensors")) {
        small.insert(path.clone(), read_file(store, record).await?);
    }
    let configs = ModelConfigs::read(&mut |path: &str| Ok(small.get(path).cloned()))?;
    drop(small);

    let mut weights = Vec::new();
    for part in configs.parts() {
        let file = manifest.weights(part.folder(), variant).map_err(|e| Error::Model(e.to_string()))?;
        weights.push((part, records[&file.path].clone()));
    }
    let hash =
        weights.iter().find(|(p, _)| *p == Part::Unet).map(|(_, r)| r.sha256[..10].to_string()).unwrap_or_default();
    let mut progress = LoadProgress { emit, cancel, done: 0, total: weights.iter().map(|(_, r)| r.size).sum() };
    let mut uploaded = Vec::new();
    for (part, record) in weights {
        uploaded.push((part, upload_weights(store, record, device, &mut progress).await?));
    }
    let t0 = js_sys::Date::now();
    // Where each weight a LoRA may adapt ends up: LoRAs are merged into the built model later, without
    // reading it again (crate::lora::Merged).
    let sink = crate::lora::TargetSink::default();
    let find = |part: Part| {
        let tensors = uploaded.iter().find(|(p, _)| *p == part).map(|(_, t)| t.clone());
        let tensors = tensors
            .ok_or_else(|| crate::pipeline::PipelineError::Model(format!("{} was not uploaded", part.folder())))?;
        Ok(crate::lora::WithLoras::plain(tensors).recording(part.lora_adapted(), sink.clone()))
    };
    let pipeline = configs.assemble(find, device)?;
    let loras = crate::lora::Merged::new(sink.take());
    web_sys::console::info_1(
        &format!("websd: building the modules took {:.1} s", (js_sys::Date::now() - t0) / 1e3).into(),
    );

    let name = id.trim_end_matches("manifest.json").trim_end_matches('/').rsplit('/').next().unwrap_or(id).to_string();
    Ok(LoadedModel { id: id.to_string(), variant, pipeline, hash, name, loras })
}
