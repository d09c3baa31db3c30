//! The worker side of the browser app (wasm32 only): `web/src/worker.ts` creates an [`Engine`] and
//! forwards every message from the page to [`Engine::handle`] (one at a time), except `cancel`, which
//! goes straight to [`Engine::cancel`]. The engine answers through the callback it was given, with
//! [`Event`]s serialised by serde-wasm-bindgen.

mod download;
mod load;
/// Public for the browser tests (tests/browser/store.rs).
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use burn::tensor::{Tensor, TensorData};
use js_sys::{Function, Promise};
use serde::Serialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::Error;
use crate::image::{a1111_parameters, encode_png, image_from_rgba};
use crate::pipeline::{GenerateRequest, Progress, read_f32, rgba8};
use crate::protocol::{Event, GenerateSettings, ModelSummary, Phase, Request};
use crate::schedulers::SchedulerKind;
use download::{DEFAULT_CHUNK_BYTES, DEFAULT_STALL_MS, DownloadOptions, Files};
use load::LoadedModel;
use store::{Extra, Store};

/// How the engine posts an event to the page.
type Post = Rc<dyn Fn(Event)>;

thread_local! {
    /// The engine's event callback, for the panic hook.
    static PANIC_POST: RefCell<Option<Post>> = const { RefCell::new(None) };
}

/// Runs the static constructors and installs the panic hook once the module is instantiated.
///
/// wasm32 aborts on panic: the trap unwinds nothing, so the request's promise never settles, a Web
/// Lock it holds stays held and the worker's queue waits forever. The hook runs before the trap: it
/// logs the message (console_error_panic_hook) and posts `Error {code: "panic"}`, on which the worker
/// ends itself (releasing its locks) and the page starts a fresh one (worker.ts, engine.ts).
#[wasm_bindgen(start)]
fn start() {
    crate::gpu::run_static_constructors();
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let post = PANIC_POST.with(|p| p.try_borrow().ok().and_then(|p| p.clone()));
        if let Some(post) = post {
            post(Error::Panic(info.to_string()).into());
        }
    }));
}

/// Converts an [`Event`] to the plain JS object the page receives (maps become objects, bytes
/// `Uint8Array`s).
fn to_js(event: &Event) -> JsValue {
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true);
    event.serialize(&serializer).unwrap_or_else(|e| {
        // Never a bare string (the page would take it for some request's answer): a typed error.
        let failed = Event::from(Error::BadRequest(format!("an event could not be serialised: {e}")));
        failed.serialize(&serializer).unwrap_or_else(|e| JsValue::from_str(&e.to_string()))
    })
}

/// Waits `ms` on the event loop.
pub async fn sleep_ms(ms: u32) {
    download::sleep(ms).await
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

#[derive(Default)]
struct State {
    store: Option<Rc<Store>>,
    model: Option<Rc<LoadedModel>>,
    /// The allow-list each model was last ensured or inspected with: a repair fetches from where the
    /// download did.
    allowed: std::collections::HashMap<String, Vec<String>>,
    /// LoRA files read and parsed, by sha256: those merged now (kept for a change of weight) and the
    /// last one added.
    loras: std::collections::HashMap<String, Rc<crate::lora::Lora>>,
    /// The adapter's [`tuning_key`] and how many measured kernel picks the store holds under it, once
    /// read ([`crate::kernels::tune`]: only where the adapter measures them). A device made after a
    /// loss may be another adapter's: its picks are then read, and saved, under its own key.
    kernel_picks_stored: Option<(String, usize)>,
}

/// The engine living in the dedicated worker.
#[wasm_bindgen]
pub struct Engine {
    post: Rc<dyn Fn(Event)>,
    cancel: Rc<Cell<bool>>,
    state: Rc<RefCell<State>>,
}

#[wasm_bindgen]
impl Engine {
    /// `post(event)` is called for every event (the worker passes `self.postMessage`).
    #[wasm_bindgen(constructor)]
    pub fn new(post: Function) -> Engine {
        let post: Rc<dyn Fn(Event)> = Rc::new(move |event: Event| {
            let _ = post.call1(&JsValue::NULL, &to_js(&event));
        });
        PANIC_POST.with(|p| *p.borrow_mut() = Some(post.clone()));
        Engine { post, cancel: Rc::new(Cell::new(false)), state: Rc::new(RefCell::new(State::default())) }
    }

    /// Handles one request object (see `web/src/protocol.ts`). Never rejects: failures, including a
    /// malformed request, are posted as `Error` events; a cancelled request posts `Cancelled`.
    pub fn handle(&self, request: JsValue) -> Promise {
        let request = serde_wasm_bindgen::from_value::<Request>(request);
        // A new request starts uncancelled. Cleared here, not in the future: the future first runs a
        // microtask later, and a cancel may come in between (when the wasm finishes loading, worker.ts
        // resumes the queued request and then the cancel that waited on the same load). A `Cancel`
        // (worker.ts calls `Engine::cancel` instead) sets the flag in `run`, for the request running.
        if !matches!(request, Ok(Request::Cancel)) {
            self.cancel.set(false);
        }
        let (post, cancel, state) = (self.post.clone(), self.cancel.clone(), self.state.clone());
        future_to_promise(async move {
            let request = match request {
                Ok(request) => request,
                Err(e) => {
                    post(Error::BadRequest(e.to_string()).into());
                    return Ok(JsValue::UNDEFINED);
                }
            };
            let phase = Rc::new(Cell::new(Phase::Download));
            // Every event goes out through this; progress events also record the phase a cancel would
            // interrupt.
            let emit: Rc<dyn Fn(Event)> = {
                let (post, phase) = (post.clone(), phase.clone());
                Rc::new(move |event: Event| {
                    if let Event::Progress { phase: p, .. } = &event {
                        phase.set(*p);
                    }
                    post(event)
                })
            };
            let context = Context { emit, cancel, state, phase: phase.clone() };
            match run(request, &context).await {
                Ok(Some(event)) => post(event),
                Ok(None) => {}
                Err(Error::Cancelled) => post(Event::Cancelled { phase: phase.get() }),
                Err(e) => post(e.into()),
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Asks the running request to stop at its next check (between two chunks, tensors or steps).
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// Chunks of models' weights files read from IndexedDB since the worker started (worker.ts's
    /// stats: a LoRA change must not read the model's weights again).
    #[wasm_bindgen(js_name = weightChunkReads)]
    pub fn weight_chunk_reads(&self) -> f64 {
        store::weight_chunk_reads() as f64
    }
}

struct Context {
    emit: Rc<dyn Fn(Event)>,
    cancel: Rc<Cell<bool>>,
    state: Rc<RefCell<State>>,
    /// The phase a cancellation would interrupt.
    phase: Rc<Cell<Phase>>,
}

impl Context {
    async fn store(&self) -> Result<Rc<Store>, Error> {
        if let Some(store) = self.state.borrow().store.clone().filter(|s| !s.is_closed()) {
            return Ok(store);
        }
        let store = Rc::new(Store::open().await?);
        self.state.borrow_mut().store = Some(store.clone());
        Ok(store)
    }

    fn emit(&self, event: Event) {
        (self.emit)(event)
    }

    /// The allow-list for `model`: the request's, else the one it was last used with, else the
    /// default; remembered for repairs.
    fn allow(&self, model: &str, requested: Option<Vec<String>>) -> Vec<String> {
        let mut state = self.state.borrow_mut();
        let allowed =
            requested.or_else(|| state.allowed.get(model).cloned()).unwrap_or_else(download::default_allowed_origins);
        state.allowed.insert(model.to_string(), allowed.clone());
        allowed
    }
}

async fn run(request: Request, cx: &Context) -> Result<Option<Event>, Error> {
    match request {
        Request::Status => {
            let (_, gpu) = crate::gpu::wgpu_device().await?;
            Ok(Some(Event::Status { gpu }))
        }
        Request::SelfTest => {
            let (gpu, _) = crate::gpu::wgpu_device().await?;
            Ok(Some(Event::SelfTest { report: crate::probe::self_test(&gpu, now_ms).await? }))
        }
        Request::Cancel => {
            cx.cancel.set(true);
            Ok(None)
        }
        Request::EnsureModel { manifest_url, variant, stall_timeout_ms, chunk_bytes, allowed_origins } => {
            let options = DownloadOptions {
                stall_ms: stall_timeout_ms.unwrap_or(DEFAULT_STALL_MS).max(100),
                chunk_bytes: chunk_bytes.map_or(DEFAULT_CHUNK_BYTES, |c| c.clamp(1 << 10, 64 << 20) as u64),
                allowed: cx.allow(&manifest_url, allowed_origins),
            };
            let variant = variant.map(Into::into);
            let report = ensure_model(cx, &manifest_url, variant, Files::All, options).await?;
            Ok(Some(Event::ModelReady { report }))
        }
        Request::InspectModel { manifest_url, variant, allowed_origins } => {
            let allowed = cx.allow(&manifest_url, allowed_origins);
            let options = DownloadOptions { stall_ms: DEFAULT_STALL_MS, chunk_bytes: DEFAULT_CHUNK_BYTES, allowed };
            let variant = variant.map(Into::into);
            let report = ensure_model(cx, &manifest_url, variant, Files::Small, options).await?;
            let store = cx.store().await?;
            // The estimate needs the device's precision (none without WebGPU: the info comes without it).
            let device = crate::gpu::wgpu_device().await.ok();
            let device = device.map(|(d, _)| (crate::pipeline::device_precision(&d), device_memory_bytes()));
            let info = repairing(cx, &manifest_url, variant, Files::Small, async || {
                load::model_info(&store, &manifest_url, variant, report.offline, device).await
            })
            .await?;
            Ok(Some(Event::ModelInfo { info }))
        }
        Request::ListModels => {
            let store = cx.store().await?;
            let mut models = Vec::new();
            for record in store.models().await? {
                let files = store.files(&record.id).await?;
                let manifest = crate::manifest::Manifest::from_json(&record.manifest).ok();
                let complete: Vec<String> = files.iter().filter(|f| f.complete).map(|f| f.path.clone()).collect();
                let ready = manifest.as_ref().is_some_and(|m| {
                    [None, Some(crate::weights::Variant::Fp32)]
                        .into_iter()
                        .any(|v| m.select(v).is_ok_and(|sel| sel.iter().all(|f| complete.contains(&f.path))))
                });
                models.push(ModelSummary {
                    id: record.id.clone(),
                    stored_bytes: files.iter().map(|f| f.stored).sum(),
                    manifest_bytes: manifest.map_or(0, |m| m.files.iter().map(|f| f.size).sum()),
                    complete_files: complete,
                    ready,
                });
            }
            Ok(Some(Event::Models { models }))
        }
        Request::DeleteModel { id } => {
            let store = cx.store().await?;
            // Files without a model record (left by a download that outlived a deletion before these
            // were refused) are deleted too.
            if store.model(&id).await?.is_none() && store.files(&id).await?.is_empty() {
                return Err(Error::NotStored(format!("no stored model {id}")));
            }
            {
                let mut state = cx.state.borrow_mut();
                if state.model.as_ref().is_some_and(|m| m.id == id) {
                    state.model = None;
                }
            }
            // Taken from a tab downloading the model, whose next write then finds the model gone
            // (store.rs): no chunk is written after the deletion.
            let (store, key) = (store.clone(), id.clone());
            let deleted = download::try_lock(&download::lock_name(&id), true, None, move || async move {
                store.delete_model(&key).await
            })
            .await?;
            deleted.ok_or_else(|| Error::Storage(format!("could not take the lock of {id} to delete it")))??;
            Ok(Some(Event::Deleted { id }))
        }
        Request::AddLora { name, bytes, url, sha256, allowed_origins } => {
            let file = ExtraFile { bytes, url, sha256, allowed_origins };
            add_lora(cx, name, file).await.map(|lora| Some(Event::LoraAdded { lora }))
        }
        Request::ListLoras => {
            let mut loras: Vec<crate::protocol::LoraSummary> = cx.store().await?.extras(Extra::Lora).await?;
            loras.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Some(Event::Loras { loras }))
        }
        Request::DeleteLora { name } => {
            delete_extra(cx, Extra::Lora, &name).await?;
            Ok(Some(Event::LoraDeleted { name }))
        }
        Request::AddEmbedding { token, bytes, url, sha256, allowed_origins } => {
            let file = ExtraFile { bytes, url, sha256, allowed_origins };
            add_embedding(cx, token, file).await.map(|embedding| Some(Event::EmbeddingAdded { embedding }))
        }
        Request::ListEmbeddings => {
            let mut embeddings: Vec<crate::protocol::EmbeddingSummary> =
                cx.store().await?.extras(Extra::Embedding).await?;
            embeddings.sort_by(|a, b| a.token.cmp(&b.token));
            Ok(Some(Event::Embeddings { embeddings }))
        }
        Request::DeleteEmbedding { token } => {
            delete_extra(cx, Extra::Embedding, &token).await?;
            Ok(Some(Event::EmbeddingDeleted { token }))
        }
        Request::LoseDevice => {
            crate::gpu::destroy_device().await?;
            // The lost callback runs from the browser's promise: give it turns of the event loop.
            let mut waits = 0;
            while crate::gpu::device_lost().is_none() {
                if waits == 50 {
                    return Err(Error::GpuInit("the destroyed device did not report itself lost".into()));
                }
                sleep_ms(20).await;
                waits += 1;
            }
            cx.state.borrow_mut().model = None;
            // What a page sees after a real device loss; the next request re-initialises.
            Err(Error::DeviceLost(crate::gpu::device_lost().unwrap_or_else(|| "destroyed on request".into())))
        }
        Request::Panic { hold_download_lock: None } => panic!("a panic requested for testing"),
        Request::Panic { hold_download_lock: Some(url) } => {
            let held = download::try_lock(&download::lock_name(&url), false, None, || async {
                if std::hint::black_box(true) {
                    panic!("a panic requested for testing, in a download lock");
                }
            })
            .await?;
            held.ok_or_else(|| Error::Storage(format!("the download lock of {url} is held by another tab")))?;
            Ok(None)
        }
        Request::Generate { model, variant, settings } => generate(cx, model, variant.map(Into::into), settings).await,
        Request::BenchUnet { model, variant, sample, timestep, encoder_hidden_states, reps } => {
            let (device, _) = crate::gpu::wgpu_device().await?;
            let (loaded, _) = loaded_model(cx, &model, variant.map(Into::into), &device).await?;
            if loaded.pipeline.unet.needs_text_time() {
                return Err(Error::Unsupported("BenchUnet does not take SDXL's text-time conditioning".into()));
            }
            let tensor = |t: &crate::protocol::F32Tensor, what: &str| {
                t.values()
                    .ok_or_else(|| Error::BadRequest(format!("{what}: {} bytes for shape {:?}", t.data.len(), t.shape)))
            };
            let dims = |t: &crate::protocol::F32Tensor| t.shape.iter().map(|&d| d as usize).collect::<Vec<_>>();
            let (s, e) = (dims(&sample), dims(&encoder_hidden_states));
            if s.len() != 4 || e.len() != 3 {
                return Err(Error::BadRequest(format!("sample {s:?} must be 4-D, encoder_hidden_states {e:?} 3-D")));
            }
            let sample =
                Tensor::<4>::from_data(TensorData::new(tensor(&sample, "sample")?, [s[0], s[1], s[2], s[3]]), &device);
            let ehs = Tensor::<3>::from_data(
                TensorData::new(tensor(&encoder_hidden_states, "encoder_hidden_states")?, [e[0], e[1], e[2]]),
                &device,
            );
            let (mut ms, mut output) = (Vec::new(), Vec::new());
            for _ in 0..reps.max(1) {
                if cx.cancel.get() {
                    return Err(Error::Cancelled);
                }
                let t0 = now_ms();
                let out = loaded.pipeline.unet.forward(sample.clone(), timestep, ehs.clone(), None);
                output = read_f32(out).await.map_err(Error::from)?;
                ms.push(now_ms() - t0);
            }
            let shape = [s[0], loaded.pipeline.unet_config.out_channels, s[2], s[3]];
            Ok(Some(Event::BenchUnet { ms, output: crate::protocol::F32Tensor::from_values(&shape, &output) }))
        }
        Request::Load { model, variant } => {
            let t0 = now_ms();
            let (device, _) = crate::gpu::wgpu_device().await?;
            let was_loaded = loaded_model(cx, &model, variant.map(Into::into), &device).await?.1;
            let load_ms = if was_loaded { 0.0 } else { now_ms() - t0 };
            Ok(Some(Event::ModelLoaded { id: model, load_ms, wasm_memory_bytes: wasm_memory_bytes() }))
        }
    }
}

/// The model `id` on the GPU (loading it, after dropping another one, if needed); whether it was
/// already there. A device loss since it was loaded means loading it again.
async fn loaded_model(
    cx: &Context,
    id: &str,
    variant: Option<crate::weights::Variant>,
    device: &burn::tensor::Device,
) -> Result<(Rc<LoadedModel>, bool), Error> {
    let loaded =
        cx.state.borrow().model.clone().filter(|m| m.id == id && m.variant == variant && &m.pipeline.device == device);
    if let Some(model) = loaded {
        return Ok((model, true));
    }
    // Free the previous model's GPU memory before loading the next.
    cx.state.borrow_mut().model = None;
    let store = cx.store().await?;
    let load = async || {
        cx.phase.set(Phase::Load);
        load::load_model(&store, id, variant, device, &|e| cx.emit(e), &cx.cancel).await
    };
    let model = Rc::new(repairing(cx, id, variant, Files::All, load).await?);
    cx.state.borrow_mut().model = Some(model.clone());
    Ok((model, false))
}

/// [`download::ensure_model`] in this engine's store.
async fn ensure_model(
    cx: &Context,
    manifest_url: &str,
    variant: Option<crate::weights::Variant>,
    files: Files,
    options: DownloadOptions,
) -> Result<crate::protocol::DownloadReport, Error> {
    let store = cx.store().await?;
    download::ensure_model(store, manifest_url.to_string(), variant, files, options, cx.emit.clone(), cx.cancel.clone())
        .await
}

/// Runs `read` (something that reads the stored model `id`'s `files`); when it finds a damaged chunk
/// (which the reader marked for repair), finds every damaged chunk of those files, fetches them again
/// and runs it once more. The page sees `repair` progress; when the repair cannot be done (offline, the
/// server failing), the request fails with `damaged`, saying what; quota, cancel and refusals keep
/// their own codes.
async fn repairing<T>(
    cx: &Context,
    id: &str,
    variant: Option<crate::weights::Variant>,
    files: Files,
    read: impl AsyncFn() -> Result<T, Error>,
) -> Result<T, Error> {
    match read().await {
        Err(Error::Damaged(what)) => {
            let store = cx.store().await?;
            let found = load::scrub(&store, id, variant, files == Files::Small, &cx.cancel).await?;
            web_sys::console::warn_1(
                &format!("websd: {what}; {found} damaged chunk(s) in all; fetching them again").into(),
            );
            let allowed = cx.allow(id, None);
            let options = DownloadOptions { stall_ms: DEFAULT_STALL_MS, chunk_bytes: DEFAULT_CHUNK_BYTES, allowed };
            match ensure_model(cx, id, variant, files, options).await {
                Ok(_) => read().await,
                Err(e @ (Error::Network(_) | Error::Integrity(_) | Error::Storage(_) | Error::Damaged(_))) => {
                    Err(Error::Damaged(format!("{what}, and fetching it again failed: {e}")))
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// `navigator.deviceMemory` in bytes, where the browser reports it (GiB rounded down to a power of two
/// and clamped; see [`crate::memory::REPORTED_MEMORY_CAP_BYTES`]).
fn device_memory_bytes() -> Option<u64> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gib = js_sys::Reflect::get(&navigator, &"deviceMemory".into()).ok()?.as_f64()?;
    (gib.is_finite() && gib > 0.0).then_some((gib * (1u64 << 30) as f64) as u64)
}

/// The wasm heap's size now (it only grows: this is the peak so far).
fn wasm_memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as u64
}

/// The LoRAs a generation asks for, in order: the settings' list, then the prompt's `<lora:name:weight>`
/// tags (a tag sets the weight of a LoRA the list names, or adds it).
fn wanted_loras(s: &GenerateSettings) -> Result<Vec<(String, f32)>, Error> {
    let (_, tags) = crate::lora::extract_tags(&s.prompt).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut wanted: Vec<(String, f32)> = Vec::new();
    for (name, weight) in s.loras.iter().map(|l| (l.name.clone(), l.weight)) {
        if wanted.iter().any(|(n, _)| *n == name) {
            return Err(Error::Invalid(format!("the LoRA {name} is listed twice")));
        }
        wanted.push((name, weight));
    }
    for (name, weight) in tags {
        match wanted.iter_mut().find(|(n, _)| *n == name) {
            Some(listed) => listed.1 = weight,
            None => wanted.push((name, weight)),
        }
    }
    let max = crate::limits::MAX_LORA_WEIGHT;
    if let Some((name, weight)) = wanted.iter().find(|(_, w)| !w.is_finite() || w.abs() > max) {
        return Err(Error::Invalid(format!("the LoRA {name}'s weight must be within -{max} to {max}, got {weight}")));
    }
    Ok(wanted)
}

/// A name a LoRA can be stored under: what `<lora:name:weight>` can say (no `:` or `>`), and short.
fn check_lora_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.len() > 200 || name.contains([':', '<', '>']) || name.trim() != name {
        return Err(Error::Invalid(format!(
            "{name:?} cannot name a LoRA: 1 to 200 characters, no ':', '<' or '>', no spaces around it"
        )));
    }
    Ok(())
}

/// Where the file of an `AddLora` / `AddEmbedding` comes from: the page's bytes or a URL (an allowed
/// origin), with the sha256 it must have when given.
struct ExtraFile {
    bytes: Option<Vec<u8>>,
    url: Option<String>,
    sha256: Option<String>,
    allowed_origins: Option<Vec<String>>,
}

/// An extra network's file, read (at most [`crate::limits::MAX_EXTRA_BYTES`]) and hashed: its bytes
/// (also in JS, for the store), where it came from, its sha256.
struct ReadExtra {
    bytes: Vec<u8>,
    js: js_sys::Uint8Array,
    source: String,
    sha256: String,
}

async fn read_extra(cx: &Context, kind: Extra, key: &str, file: ExtraFile) -> Result<ReadExtra, Error> {
    let what = format!("the {} {key}", kind.label());
    let (bytes, source) = match (file.bytes, file.url) {
        (Some(bytes), None) => (bytes, "a file".to_string()),
        (None, Some(url)) => {
            let allowed = file.allowed_origins.unwrap_or_else(download::default_allowed_origins);
            cx.emit(Event::Progress {
                phase: Phase::Download,
                done: 0,
                total: 1,
                bytes: None,
                file: Some(url.clone()),
            });
            (download::fetch_extra(&url, allowed, &cx.cancel, kind.label()).await?, url)
        }
        _ => return Err(Error::BadRequest(format!("adding {what} takes its bytes or its url (one of them)"))),
    };
    let max = crate::limits::MAX_EXTRA_BYTES;
    if bytes.len() as u64 > max {
        return Err(Error::TooLarge(format!("{what} has {} bytes, at most {max} are taken", bytes.len())));
    }
    let js = js_sys::Uint8Array::from(bytes.as_slice());
    let sha256 = store::sha256_hex(&js).await?;
    if let Some(want) = file.sha256.filter(|want| !want.eq_ignore_ascii_case(&sha256)) {
        return Err(Error::Integrity(format!("{what} has sha256 {sha256}, {want} was expected")));
    }
    Ok(ReadExtra { bytes, js, source, sha256 })
}

/// [`Request::DeleteLora`] / [`Request::DeleteEmbedding`].
async fn delete_extra(cx: &Context, kind: Extra, key: &str) -> Result<(), Error> {
    let store = cx.store().await?;
    if store.extra::<serde_json::Value>(kind, key).await?.is_none() {
        return Err(Error::NotStored(format!("no stored {} {key}", kind.label())));
    }
    store.delete_extra(kind, key).await
}

/// [`Request::AddLora`]: the file, read as a LoRA, then stored (replacing one of the same name).
async fn add_lora(cx: &Context, name: String, file: ExtraFile) -> Result<crate::protocol::LoraSummary, Error> {
    use crate::lora::{Component, Lora};
    check_lora_name(&name)?;
    let ReadExtra { bytes, js, source, sha256 } = read_extra(cx, Extra::Lora, &name, file).await?;
    let lora =
        Lora::from_source(&name, std::io::Cursor::new(bytes.as_slice())).map_err(|e| Error::Invalid(e.to_string()))?;
    let summary = crate::protocol::LoraSummary {
        name,
        size: bytes.len() as u64,
        sha256: sha256.clone(),
        short_hash: crate::lora::short_hash(&bytes).unwrap_or_default(),
        source,
        unet_layers: lora.layer_count(Component::Unet) as u32,
        text_encoder_layers: lora.layer_count(Component::TextEncoder) as u32,
    };
    drop(bytes);
    cx.store().await?.put_extra(Extra::Lora, &summary.name, &summary, &js).await?;
    cx.state.borrow_mut().loras.insert(sha256, Rc::new(lora));
    Ok(summary)
}

/// [`Request::AddEmbedding`]: the file, read as an embedding for `token`, then stored (replacing one of
/// the same word).
async fn add_embedding(
    cx: &Context,
    token: String,
    file: ExtraFile,
) -> Result<crate::protocol::EmbeddingSummary, Error> {
    use crate::textual_inversion::Embedding;
    if token.len() > 200 {
        return Err(Error::Invalid(format!("the trigger word {token:?} is longer than 200 bytes")));
    }
    let ReadExtra { bytes, js, source, sha256 } = read_extra(cx, Extra::Embedding, &token, file).await?;
    let embedding = Embedding::from_source(&token, std::io::Cursor::new(bytes.as_slice()))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let summary = crate::protocol::EmbeddingSummary {
        token,
        size: bytes.len() as u64,
        sha256,
        short_hash: Embedding::short_hash(&bytes),
        source,
        vectors: embedding.count as u32,
        width: embedding.width as u32,
    };
    cx.store().await?.put_extra(Extra::Embedding, &summary.token, &summary, &js).await?;
    Ok(summary)
}

/// Whether `text` uses the trigger word `token` (as a word of its own: not inside a longer word).
fn uses_word(text: &str, token: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(token).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + token.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// The stored embeddings whose trigger words the settings' prompts use, read from the store; the
/// model gets exactly those (tokenizer and token table rebuilt from the loaded ones when that set
/// changes: `StableDiffusion::set_textual_inversions`).
async fn apply_embeddings(
    cx: &Context,
    settings: &GenerateSettings,
) -> Result<Vec<crate::protocol::EmbeddingSummary>, Error> {
    use crate::textual_inversion::Embedding;
    let store = cx.store().await?;
    let texts = [Some(&settings.prompt), Some(&settings.negative_prompt)];
    let mut used: Vec<crate::protocol::EmbeddingSummary> = store.extras(Extra::Embedding).await?;
    used.retain(|e| texts.iter().flatten().any(|t| uses_word(t, &e.token)));
    used.sort_by(|a, b| a.token.cmp(&b.token));
    let mut embeddings = Vec::with_capacity(used.len());
    for e in &used {
        let bytes = store.extra_bytes(Extra::Embedding, &e.token, e.size, &e.sha256).await?.to_vec();
        embeddings.push(
            Embedding::from_source(&e.token, std::io::Cursor::new(bytes)).map_err(|e| Error::Invalid(e.to_string()))?,
        );
    }
    only_handle(&mut cx.state.borrow_mut().model)?.pipeline.set_textual_inversions(embeddings)?;
    Ok(used)
}

/// Merges `wanted` (stored LoRAs with their weights) into the loaded model in place of what is merged
/// now, unless that is already it; the model is not read again. Announced with `LorasApplied`.
async fn apply_loras(
    cx: &Context,
    wanted: &[(crate::protocol::LoraSummary, f32)],
    device: &burn::tensor::Device,
) -> Result<Rc<LoadedModel>, Error> {
    use crate::lora::{Applied, Lora};
    let target: Vec<Applied> =
        wanted.iter().map(|(r, w)| Applied { name: r.name.clone(), sha256: r.sha256.clone(), weight: *w }).collect();
    {
        let state = cx.state.borrow();
        let model = state.model.as_ref().ok_or_else(|| Error::Invalid("no model is loaded".into()))?;
        if model.loras.applied() == target.as_slice() {
            return Ok(model.clone());
        }
    }
    // The files not parsed yet, from the store (each checked against its sha256).
    let store = cx.store().await?;
    for (record, _) in wanted {
        if !cx.state.borrow().loras.contains_key(&record.sha256) {
            let bytes = store.extra_bytes(Extra::Lora, &record.name, record.size, &record.sha256).await?.to_vec();
            let lora = Lora::from_source(&record.name, std::io::Cursor::new(bytes))
                .map_err(|e| Error::Invalid(e.to_string()))?;
            cx.state.borrow_mut().loras.insert(record.sha256.clone(), Rc::new(lora));
        }
    }
    let t0 = now_ms();
    let mut state = cx.state.borrow_mut();
    let State { model, loras, .. } = &mut *state;
    let model = only_handle(model)?;
    let list: Vec<(&Lora, String, f32)> =
        wanted.iter().map(|(r, w)| (&*loras[&r.sha256], r.sha256.clone(), *w)).collect();
    let (text_encoder, unet) = model
        .loras
        .apply(&list, model.pipeline.text_encoder.clone(), model.pipeline.unet.clone(), device)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    model.pipeline.text_encoder = text_encoder;
    model.pipeline.unet = unet;
    let applied = Event::LorasApplied {
        loras: wanted.iter().map(|(r, w)| crate::protocol::LoraWeight { name: r.name.clone(), weight: *w }).collect(),
        adapted_weights: model.loras.adapted_weights() as u32,
        kept_bytes: model.loras.kept_bytes(),
        ms: now_ms() - t0,
    };
    loras.retain(|sha256, _| wanted.iter().any(|(r, _)| r.sha256 == *sha256));
    let model = state.model.clone().expect("changed above");
    drop(state);
    cx.emit(applied);
    Ok(model)
}

/// The loaded model, to change in place: requests run one at a time and the caller holds no other
/// handle, so the state's is the only one.
fn only_handle(model: &mut Option<Rc<LoadedModel>>) -> Result<&mut LoadedModel, Error> {
    let rc = model.as_mut().ok_or_else(|| Error::Invalid("no model is loaded".into()))?;
    Rc::get_mut(rc).ok_or_else(|| Error::Invalid("the loaded model is in use".into()))
}

/// The request's settings as the pipeline's request.
fn pipeline_request(s: &GenerateSettings) -> Result<GenerateRequest, Error> {
    let (prompt, _) = crate::lora::extract_tags(&s.prompt).map_err(|e| Error::Invalid(e.to_string()))?;
    let image = |img: &crate::protocol::RgbaImage, gray: bool, what: &str| {
        image_from_rgba(img.width as usize, img.height as usize, &img.rgba, gray)
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))
    };
    let init_image = s.init_image.as_ref().map(|i| image(i, false, "init image")).transpose()?;
    let mask = s.mask.as_ref().map(|i| image(i, true, "mask")).transpose()?;
    if mask.is_some() && init_image.is_none() {
        return Err(Error::Invalid("a mask needs an init image".into()));
    }
    // The weighting syntax is checked here, before any load (its chunk count needs the tokenizer, later).
    let texts = [Some(&prompt), Some(&s.negative_prompt), s.prompt_2.as_ref(), s.negative_prompt_2.as_ref()];
    if s.prompt_weighting {
        for text in texts.into_iter().flatten() {
            crate::prompt_weighting::parse_prompt_attention(text).map_err(|e| Error::Invalid(e.to_string()))?;
        }
    }
    // A1111's <lora:name:weight> tags belong in the prompt (as natively); elsewhere they are refused
    // rather than read as words.
    for text in texts.into_iter().skip(1).flatten() {
        let (_, tags) = crate::lora::extract_tags(text).map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some((name, _)) = tags.first() {
            return Err(Error::Invalid(format!("<lora:{name}...>: LoRA tags belong in the (first) prompt")));
        }
    }
    if s.seed > crate::limits::MAX_SEED {
        return Err(Error::Invalid(format!("seed must be at most 2^53 - 1, got {}", s.seed)));
    }
    let scheduler =
        s.scheduler.as_deref().map(SchedulerKind::from_name).transpose().map_err(|e| Error::Invalid(e.to_string()))?;
    let strength = s.strength.unwrap_or(crate::limits::default_strength(init_image.is_some(), mask.is_some()));
    Ok(GenerateRequest {
        prompt,
        negative_prompt: s.negative_prompt.clone(),
        steps: s.steps as usize,
        guidance: s.guidance,
        seed: s.seed,
        width: s.width.map(|w| w as usize),
        height: s.height.map(|h| h as usize),
        batch: s.batch as usize,
        scheduler,
        init_image,
        mask,
        strength,
        preview_every: s.preview_every as usize,
        prompt_weighting: s.prompt_weighting,
        prompt_2: s.prompt_2.clone(),
        negative_prompt_2: s.negative_prompt_2.clone(),
        // The page says [width, height] and [x, y]; diffusers (height, width) and (top, left).
        original_size: s.original_size.map(|[w, h]| [h as usize, w as usize]),
        crops_coords_top_left: s.crop.map_or([0, 0], |[x, y]| [y as usize, x as usize]),
        target_size: s.target_size.map(|[w, h]| [h as usize, w as usize]),
    })
}

/// A readback already submitted to the GPU queue. burn's readbacks are lazy `async fn`s and a readback
/// waits for everything queued before it, so one polled only after the next step's work was queued
/// would wait for that step too: the first poll, which submits the copy, happens at once.
enum Readback {
    Done(Result<Vec<f32>, crate::pipeline::PipelineError>),
    Pending(std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<f32>, crate::pipeline::PipelineError>>>>),
}

impl Readback {
    fn submit<const D: usize>(t: Tensor<D>) -> Self {
        let mut read = Box::pin(read_f32(t));
        let mut poll = std::task::Context::from_waker(std::task::Waker::noop());
        match read.as_mut().poll(&mut poll) {
            std::task::Poll::Ready(values) => Readback::Done(values),
            std::task::Poll::Pending => Readback::Pending(read),
        }
    }

    async fn values(self) -> Result<Vec<f32>, crate::pipeline::PipelineError> {
        match self {
            Readback::Done(values) => values,
            Readback::Pending(read) => read.await,
        }
    }
}

/// A denoising step queued on the GPU whose progress (and preview) is not reported yet.
struct StepBehind {
    step: usize,
    total: usize,
    /// One value of the step's latents: complete once the step is.
    done: Readback,
    /// The step's preview image `[1, h, w, 3]` and its readback.
    preview: Option<([usize; 4], Readback)>,
}

impl StepBehind {
    /// Waits for the step's readbacks without reporting them (the run was cancelled or failed). A
    /// dropped readback leaves its staging buffer being mapped; the next run's first submit that reuses
    /// it is then a validation error ("used in submit while pending map").
    async fn drain(self) {
        let _ = self.done.values().await;
        if let Some((_, read)) = self.preview {
            let _ = read.values().await;
        }
    }

    /// Waits for the step on the GPU, then reports it (and sends its preview).
    async fn finish(self, cx: &Context) {
        let _ = self.done.values().await;
        cx.emit(Event::Progress {
            phase: Phase::Denoise,
            done: self.step as u64,
            total: self.total as u64,
            bytes: None,
            file: None,
        });
        if let Some(([_, h, w, _], read)) = self.preview
            && let Ok(values) = read.values().await
        {
            let rgba = rgba8(&values);
            cx.emit(Event::Preview { step: self.step as u32, width: w as u32, height: h as u32, rgba });
        }
    }
}

/// The store's key for what this adapter measured: [`crate::gpu::GpuInfo::tuning_key`] and the
/// browser's user agent (a browser reports no driver; its version stands in for the shader compiler's).
fn tuning_key(gpu: &crate::gpu::GpuInfo) -> String {
    let agent = js_sys::global()
        .dyn_into::<web_sys::WorkerGlobalScope>()
        .ok()
        .and_then(|scope| scope.navigator().user_agent().ok())
        .unwrap_or_default();
    format!("{} | {agent}", gpu.tuning_key())
}

/// Where this adapter measures its kernels ([`crate::kernels::tune`]), what it measured
/// in an earlier worker, read once per worker and adapter. A record that cannot be read is measured
/// again.
async fn restore_kernel_picks(cx: &Context, store: &Store, gpu: &crate::gpu::GpuInfo) {
    let key = tuning_key(gpu);
    let read = cx.state.borrow().kernel_picks_stored.as_ref().is_some_and(|(k, _)| *k == key);
    if !crate::kernels::tune::recording() || read {
        return;
    }
    let picks = store.kernel_picks(&key).await.unwrap_or_default();
    crate::kernels::tune::import(&picks);
    cx.state.borrow_mut().kernel_picks_stored = Some((key, picks.len()));
}

/// Stores what this adapter has measured when it measured more since the last write. A failed write
/// only means measuring again in the next worker.
async fn save_kernel_picks(cx: &Context, store: &Store, gpu: &crate::gpu::GpuInfo) {
    let picks = crate::kernels::tune::export();
    let stored = (tuning_key(gpu), picks.len());
    if !crate::kernels::tune::recording() || cx.state.borrow().kernel_picks_stored.as_ref() == Some(&stored) {
        return;
    }
    if store.put_kernel_picks(&stored.0, &picks).await.is_ok() {
        cx.state.borrow_mut().kernel_picks_stored = Some(stored);
    }
}

async fn generate(
    cx: &Context,
    id: String,
    variant: Option<crate::weights::Variant>,
    settings: GenerateSettings,
) -> Result<Option<Event>, Error> {
    let t0 = now_ms();
    let mut request = pipeline_request(&settings)?;
    let wanted = wanted_loras(&settings)?;
    let (device, gpu) = crate::gpu::wgpu_device().await?;
    // Checked from the configs before loading: a request that cannot fit is refused without uploading
    // gigabytes first, and the page learns the estimate (and a warning) while the weights load.
    let store = cx.store().await?;
    let pre = repairing(cx, &id, variant, Files::All, async || load::preflight(&store, &id, variant).await).await?;
    // The LoRAs must be stored, and the model one they can adapt, before it loads.
    let mut loras = Vec::with_capacity(wanted.len());
    for (name, weight) in wanted {
        let record: crate::protocol::LoraSummary = store.extra(Extra::Lora, &name).await?.ok_or_else(|| {
            Error::NotStored(format!("the LoRA {name} is not stored: add it (from a file or a URL) first"))
        })?;
        loras.push((record, weight));
    }
    if !loras.is_empty() && pre.unet.has_text_time() {
        return Err(Error::Unsupported("LoRAs for SDXL are not supported yet".into()));
    }
    let precision = crate::pipeline::device_precision(&device);
    let (width, height, plan) =
        crate::pipeline::validate_request(&pre.unet, &pre.vae, &request, precision).map_err(Error::from)?;
    let estimate = crate::memory::MemoryEstimate::new(&pre.weights, &plan, precision);
    let device_memory_bytes = device_memory_bytes();
    cx.emit(Event::Memory {
        report: crate::protocol::MemoryReport {
            weight_bytes: estimate.weight_bytes,
            activation_bytes: estimate.activation_bytes,
            largest_buffer_bytes: plan.largest.bytes,
            unet_samples_per_call: plan.unet_samples_per_call as u32,
            device_memory_bytes,
            warning: estimate.advice(device_memory_bytes, width, height, request.batch),
        },
    });
    drop(loaded_model(cx, &id, variant, &device).await?);
    let embeddings = apply_embeddings(cx, &settings).await?;
    let model = apply_loras(cx, &loras, &device).await?;
    let sd = &model.pipeline;
    restore_kernel_picks(cx, &store, &gpu).await;
    cx.emit(Event::Progress { phase: Phase::Encode, done: 0, total: 1, bytes: None, file: None });
    // The loop runs one step ahead of the GPU: each step's callback waits for the step before it (a
    // one-value readback, and that step's preview), so the GPU always has the next step queued instead
    // of idling while the CPU records it. Progress is reported as steps finish, the event loop runs
    // at each wait (which is how a Cancel message arrives).
    let mut behind: Option<StepBehind> = None;
    let output = sd
        .generate_async(&request, false, async |p| {
            match p {
                Progress::Encoded => {
                    cx.emit(Event::Progress { phase: Phase::Encode, done: 1, total: 1, bytes: None, file: None })
                }
                Progress::Step { step, total, latents } => {
                    let done = Readback::submit(latents.slice([0..1, 0..1, 0..1, 0..1]));
                    if let Some(previous) = behind.replace(StepBehind { step, total, done, preview: None }) {
                        previous.finish(cx).await;
                    }
                }
                Progress::Preview { step, image } => {
                    if let Some(b) = behind.as_mut().filter(|b| b.step == step) {
                        b.preview = Some((image.dims(), Readback::submit(image)));
                    }
                }
                Progress::Denoised => {
                    // The last step (and its preview) is reported before the decode is queued, so that
                    // the progress says "decode" only while the VAE runs.
                    if let Some(last) = behind.take() {
                        last.finish(cx).await;
                    }
                    cx.emit(Event::Progress { phase: Phase::Decode, done: 0, total: 1, bytes: None, file: None });
                }
                Progress::Decoded => {}
                Progress::Tune { done, total } => {
                    // The step measured after is shown done first.
                    if let Some(previous) = behind.take() {
                        previous.finish(cx).await;
                    }
                    let (done, total) = (done as u64, total as u64);
                    cx.emit(Event::Progress { phase: Phase::Tune, done, total, bytes: None, file: None })
                }
            }
            !cx.cancel.get()
        })
        .await;
    if let Some(pending) = behind.take() {
        pending.drain().await;
    }
    // Kept whatever the outcome: a cancel while measuring keeps the shapes measured before it.
    save_kernel_picks(cx, &store, &gpu).await;
    let output = output.map_err(Error::from)?;
    let images = output.rgba8_async().await.map_err(Error::from)?;
    cx.emit(Event::Progress { phase: Phase::Decode, done: 1, total: 1, bytes: None, file: None });
    // The prompt as typed (with its <lora:...> tags); the LoRAs with their weights and short hashes.
    request.prompt = settings.prompt.clone();
    let extra = crate::image::ExtraNetworks {
        loras: loras.iter().map(|(r, w)| (r.name.clone(), *w, r.short_hash.clone())).collect(),
        embeddings: embeddings.iter().map(|e| (e.token.clone(), e.short_hash.clone())).collect(),
    };
    let parameters = a1111_parameters(&request, &output, &model.hash, &model.name, &extra);
    let mut echoed = settings.clone();
    echoed.loras =
        loras.iter().map(|(r, w)| crate::protocol::LoraWeight { name: r.name.clone(), weight: *w }).collect();
    echoed.init_image = None;
    echoed.mask = None;
    echoed.scheduler = Some(output.scheduler.name().to_string());
    echoed.width = Some(output.width as u32);
    echoed.height = Some(output.height as u32);
    if request.init_image.is_some() {
        echoed.strength = Some(request.strength);
    }
    let count = images.len() as u32;
    for (index, rgba) in images.iter().enumerate() {
        let png = encode_png(output.width, output.height, rgba, &parameters).map_err(Error::Invalid)?;
        cx.emit(Event::Result {
            png,
            width: output.width as u32,
            height: output.height as u32,
            seed: request.seed,
            index: index as u32,
            count,
            settings: echoed.clone(),
            elapsed_ms: now_ms() - t0,
        });
    }
    Ok(None)
}
