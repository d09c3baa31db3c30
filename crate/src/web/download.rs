//! Downloading a model into the [`Store`]: streamed `fetch`, fixed-size chunks, incremental sha256,
//! `Range` resumption after any interruption (network error, HTTP 5xx, a stalled or short response,
//! a reload), and a hash check before a file counts as complete. One download per model across tabs
//! (Web Locks).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Object, Promise, Reflect};
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Headers, ReadableStreamDefaultReader, RequestCache, RequestInit, Response};

use super::store::{FileRecord, ModelRecord, Store};
use crate::Error;
use crate::manifest::{Manifest, ManifestFile};
use crate::protocol::{DownloadReport, Event, Phase};
use crate::weights::Variant;

/// Default chunk size: big enough that IndexedDB overhead is small, small enough that an interrupted
/// chunk costs little to fetch again.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 20;
/// A response that delivers nothing for this long is aborted and resumed.
pub const DEFAULT_STALL_MS: u32 = 30_000;
/// Attempts in a row without progress before a file fails for good.
const MAX_FAILURES: u32 = 6;
/// A file whose hash fails this many times is reported, not fetched again.
const MAX_CORRUPT: u32 = 3;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_init(url: &str, init: &RequestInit) -> Promise;
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &Function, ms: i32) -> i32;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: i32);

    /// `navigator.locks` (Web Locks API; web-sys has it only behind its unstable-API flag).
    type LockManager;
    #[wasm_bindgen(method)]
    fn request(this: &LockManager, name: &str, callback: &Function) -> Promise;
}

/// Options of one `EnsureModel`.
#[derive(Debug, Clone, Copy)]
pub struct DownloadOptions {
    pub stall_ms: u32,
    pub chunk_bytes: u64,
}

fn get(target: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(target, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// A thrown JS value as text (a DOMException's name and message).
pub(super) fn js_text(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| format!("{}: {}", e.name(), e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// Waits `ms` on the event loop.
pub async fn sleep(ms: u32) {
    let promise = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms as i32);
    });
    let _ = JsFuture::from(promise).await;
}

/// Awaits `promise` for at most `ms`; `Ok(None)` when the time ran out.
async fn within(promise: Promise, ms: u32) -> Result<Option<JsValue>, JsValue> {
    let timer = Rc::new(Cell::new(0));
    let stalled = Object::new();
    let timeout = {
        let (timer, stalled) = (timer.clone(), stalled.clone());
        Promise::new(&mut |resolve, _| {
            let stalled = stalled.clone();
            let fire = Closure::once_into_js(move || {
                let _ = resolve.call1(&JsValue::NULL, &stalled);
            });
            timer.set(set_timeout(fire.unchecked_ref(), ms as i32))
        })
    };
    let result = JsFuture::from(Promise::race(&js_sys::Array::of2(&promise, &timeout))).await;
    clear_timeout(timer.get());
    match result {
        Ok(v) if v == JsValue::from(stalled) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(e),
    }
}

/// The URL of `path` relative to `base` (a folder URL ending in `/`, or the manifest's URL).
pub fn resolve_url(path: &str, base: &str) -> Result<String, Error> {
    web_sys::Url::new_with_base(path, base)
        .map(|u| u.href())
        .map_err(|e| Error::BadRequest(format!("cannot resolve {path} against {base}: {}", js_text(&e))))
}

/// `GET url` with no HTTP cache involved; the whole body as text (manifests).
async fn fetch_text(url: &str, stall_ms: u32) -> Result<String, FetchFailure> {
    let (response, _) = start_get(url, 0, stall_ms).await.map_err(FetchFailure::Network)?;
    if !response.ok() {
        return Err(FetchFailure::Http(response.status()));
    }
    let text = response.text().map_err(|e| FetchFailure::Network(js_text(&e)))?;
    let text = JsFuture::from(text).await.map_err(|e| FetchFailure::Network(js_text(&e)))?;
    Ok(text.as_string().unwrap_or_default())
}

/// Starts `GET url` (from byte `from` when > 0), bypassing the HTTP cache: it must not answer a Range
/// request with stale or partial data of its own. The controller aborts the body. `Err` when no
/// response came (network error, or nothing within `stall_ms`).
async fn start_get(url: &str, from: u64, stall_ms: u32) -> Result<(Response, AbortController), String> {
    let init = RequestInit::new();
    init.set_cache(RequestCache::NoStore);
    let controller = AbortController::new().map_err(|e| js_text(&e))?;
    init.set_signal(Some(&controller.signal()));
    if from > 0 {
        let headers = Headers::new().map_err(|e| js_text(&e))?;
        headers.set("Range", &format!("bytes={from}-")).map_err(|e| js_text(&e))?;
        init.set_headers(&headers);
    }
    match within(fetch_with_init(url, &init), stall_ms).await {
        Ok(Some(r)) => Ok((r.unchecked_into::<Response>(), controller)),
        Ok(None) => {
            controller.abort();
            Err(format!("no response within {stall_ms} ms"))
        }
        Err(e) => Err(format!("network error: {}", js_text(&e))),
    }
}

enum FetchFailure {
    /// No response, or the connection broke.
    Network(String),
    /// A response with this status.
    Http(u16),
}

/// What the downloader reports while it works.
pub struct Reporter<'a> {
    pub emit: &'a dyn Fn(Event),
    pub cancel: &'a Cell<bool>,
}

impl Reporter<'_> {
    fn check_cancel(&self) -> Result<(), Error> {
        if self.cancel.get() { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// Fetches (or, offline, reads back) the manifest of `manifest_url` and stores it.
pub async fn manifest(store: &Store, manifest_url: &str, stall_ms: u32) -> Result<(Manifest, bool), Error> {
    match fetch_text(manifest_url, stall_ms).await {
        Ok(text) => {
            let manifest = Manifest::from_json(&text).map_err(|e| Error::BadRequest(format!("{manifest_url}: {e}")))?;
            store.put_model(&ModelRecord { id: manifest_url.to_string(), manifest: text }).await?;
            Ok((manifest, false))
        }
        Err(failure) => {
            // Offline (or the CDN is down): a stored manifest is as good, the files are verified.
            if let Some(record) = store.model(manifest_url).await? {
                let manifest = Manifest::from_json(&record.manifest).map_err(|e| Error::Storage(e.to_string()))?;
                return Ok((manifest, true));
            }
            Err(match failure {
                FetchFailure::Network(m) => Error::Network(format!("cannot fetch the manifest {manifest_url}: {m}")),
                FetchFailure::Http(status) => {
                    Error::Network(format!("the manifest {manifest_url} answered HTTP {status}"))
                }
            })
        }
    }
}

/// `navigator.storage.estimate()`: (usage, quota) in bytes, when the browser reports them.
async fn estimate() -> Option<(u64, u64)> {
    let storage = get(&get(&js_sys::global(), "navigator")?, "storage")?;
    let estimate: Function = get(&storage, "estimate")?.dyn_into().ok()?;
    let promise: Promise = estimate.call0(&storage).ok()?.dyn_into().ok()?;
    let result = JsFuture::from(promise).await.ok()?;
    let number = |key| get(&result, key).and_then(|v| v.as_f64()).map(|v| v as u64);
    Some((number("usage")?, number("quota")?))
}

/// Runs `work` holding the Web Lock `name` (exclusive): a second tab asking for the same model waits,
/// then finds the files complete. Without Web Locks (old browsers) it runs unlocked.
async fn with_lock<T: 'static>(name: &str, work: impl std::future::Future<Output = T> + 'static) -> Result<T, Error> {
    let locks = get(&js_sys::global(), "navigator").and_then(|n| get(&n, "locks"));
    let Some(locks) = locks else { return Ok(work.await) };
    let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    let work = RefCell::new(Some(work));
    let slot = out.clone();
    let callback = Closure::once_into_js(move |_lock: JsValue| -> Promise {
        let work = work.borrow_mut().take().expect("the lock callback runs once");
        wasm_bindgen_futures::future_to_promise(async move {
            *slot.borrow_mut() = Some(work.await);
            Ok(JsValue::UNDEFINED)
        })
    });
    let locks: LockManager = locks.unchecked_into();
    JsFuture::from(locks.request(name, callback.unchecked_ref()))
        .await
        .map_err(|e| Error::Storage(format!("Web Lock {name}: {}", js_text(&e))))?;
    let value = out.borrow_mut().take();
    value.ok_or_else(|| Error::Storage(format!("Web Lock {name}: the download did not run")))
}

/// Origins weights may come from besides the app's own: the Hub, and this machine (development, and
/// a model server the user runs). An entry without a port allows every port of its host.
pub const DEFAULT_ALLOWED_ORIGINS: [&str; 3] = ["https://huggingface.co", "http://localhost", "http://127.0.0.1"];

/// The origin of the worker's own page (`self.location.origin`).
fn own_origin() -> Option<String> {
    get(&get(&js_sys::global(), "location")?, "origin")?.as_string()
}

/// Refuses a URL whose origin is neither the app's own nor allow-listed: a `?model=` link must not
/// make the app fetch (and store gigabytes) from anywhere its author likes.
pub fn check_origin(url: &str, allowed: &[String]) -> Result<(), Error> {
    let parsed = web_sys::Url::new(url).map_err(|e| Error::BadRequest(format!("{url}: {}", js_text(&e))))?;
    let origin = parsed.origin();
    if own_origin().as_deref() == Some(origin.as_str()) {
        return Ok(());
    }
    let matches = |entry: &String| {
        web_sys::Url::new(entry).is_ok_and(|e| {
            e.protocol() == parsed.protocol()
                && e.hostname() == parsed.hostname()
                && (e.port().is_empty() || e.port() == parsed.port())
        })
    };
    if allowed.iter().any(matches) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{origin} is not an allowed model origin (allowed: this site, {}): {url}",
            allowed.join(", ")
        )))
    }
}

/// Which of the variant's files an `ensure_model` makes complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    All,
    /// Configs and tokenizer only (what `InspectModel` needs), not the weights.
    Small,
}

/// Makes every file `variant` needs (or only its small ones) complete and verified in the store.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_model(
    store: Rc<Store>,
    manifest_url: String,
    variant: Option<Variant>,
    files: Files,
    allowed: &[String],
    options: DownloadOptions,
    emit: Rc<dyn Fn(Event)>,
    cancel: Rc<Cell<bool>>,
) -> Result<DownloadReport, Error> {
    check_origin(&manifest_url, allowed)?;
    let (manifest, offline) = manifest(&store, &manifest_url, options.stall_ms).await?;
    let mut selected: Vec<ManifestFile> =
        manifest.select(variant).map_err(|e| Error::Model(e.to_string()))?.into_iter().cloned().collect();
    if files == Files::Small {
        selected.retain(|f| !f.path.ends_with(".safetensors"));
    }
    let base = match &manifest.base_url {
        Some(base) => resolve_url(base, &manifest_url)?,
        None => manifest_url.clone(),
    };
    check_origin(&base, allowed)?;
    let lock = format!("websd-download {manifest_url}");
    let work = async move {
        let reporter = Reporter { emit: &*emit, cancel: &cancel };
        download_files(&store, &manifest_url, &base, &selected, options, &reporter, offline).await
    };
    with_lock(&lock, work).await?
}

async fn download_files(
    store: &Store,
    id: &str,
    base: &str,
    files: &[ManifestFile],
    options: DownloadOptions,
    reporter: &Reporter<'_>,
    offline: bool,
) -> Result<DownloadReport, Error> {
    // Current records; a file whose manifest entry changed starts over.
    let mut records = Vec::new();
    for f in files {
        let record = match store.file(id, &f.path).await? {
            Some(r) if r.size == f.size && r.sha256 == f.sha256 => r,
            stale => {
                let fresh = FileRecord {
                    id: id.to_string(),
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    chunk_bytes: options.chunk_bytes,
                    stored: 0,
                    complete: false,
                };
                if stale.is_some() {
                    store.reset_file(&fresh).await?;
                } else {
                    store.put_file(&fresh).await?;
                }
                fresh
            }
        };
        records.push(record);
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let missing: u64 = records.iter().filter(|r| !r.complete).map(|r| r.size - r.stored).sum();
    let mut report = DownloadReport {
        id: id.to_string(),
        files: files.iter().map(|f| f.path.clone()).collect(),
        total_bytes: total,
        fetched_bytes: 0,
        retries: 0,
        corrupt_files: Vec::new(),
        offline,
    };
    if missing == 0 {
        return Ok(report);
    }
    if let Some((usage, quota)) = estimate().await {
        let available = quota.saturating_sub(usage);
        if missing > available {
            return Err(Error::Quota {
                needed: missing,
                available,
                detail: " (free some space, or delete a stored model)".into(),
            });
        }
    }
    let mut progress = Progress { done: total - missing, total, fetched: 0 };
    for record in &mut records {
        if record.complete {
            continue;
        }
        let url = resolve_url(&record.path, base)?;
        match download_file(store, record, &url, options, reporter, &mut progress, &mut report).await {
            Err(Error::Quota { detail, .. }) => {
                let remaining = progress.total - progress.done;
                let available = estimate().await.map_or(0, |(usage, quota)| quota.saturating_sub(usage));
                return Err(Error::Quota { needed: remaining, available, detail });
            }
            other => other?,
        }
    }
    report.fetched_bytes = progress.fetched;
    Ok(report)
}

struct Progress {
    /// Bytes stored (all selected files).
    done: u64,
    total: u64,
    /// Bytes received from the network.
    fetched: u64,
}

impl Progress {
    fn emit(&self, reporter: &Reporter<'_>, file: &str) {
        (reporter.emit)(Event::Progress {
            phase: Phase::Download,
            done: self.done,
            total: self.total,
            bytes: Some(self.fetched),
            file: Some(file.to_string()),
        });
    }
}

/// Hash of what is already stored (after a reload the in-memory hasher is gone).
async fn rehash(store: &Store, record: &FileRecord) -> Result<Sha256, Error> {
    let mut hasher = Sha256::new();
    for index in 0..record.chunks_stored() {
        hasher.update(store.chunk(&record.id, &record.path, index).await?);
    }
    Ok(hasher)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn download_file(
    store: &Store,
    record: &mut FileRecord,
    url: &str,
    options: DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    report: &mut DownloadReport,
) -> Result<(), Error> {
    let mut hasher = rehash(store, record).await?;
    let mut failures = 0u32;
    let mut corrupt = 0u32;
    progress.emit(reporter, &record.path);
    loop {
        reporter.check_cancel()?;
        if record.stored == record.size {
            let digest = hex(&std::mem::take(&mut hasher).finalize());
            if digest == record.sha256 {
                record.complete = true;
                store.put_file(record).await?;
                return Ok(());
            }
            // Corrupted in transit (or in the store): nothing of it is trusted, fetch it again.
            corrupt += 1;
            report.corrupt_files.push(record.path.clone());
            web_sys::console::warn_1(
                &format!(
                    "websd: {} has sha256 {digest}, the manifest says {}; fetching it again",
                    record.path, record.sha256
                )
                .into(),
            );
            if corrupt >= MAX_CORRUPT {
                return Err(Error::Integrity(format!(
                    "{} failed its sha256 check {corrupt} times (got {digest}, expected {})",
                    record.path, record.sha256
                )));
            }
            progress.done -= record.stored;
            store.reset_file(record).await?;
            record.stored = 0;
            continue;
        }
        let before = record.stored;
        match fetch_range(store, record, url, options, reporter, progress, &mut hasher).await {
            Ok(()) => {}
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(reason)) => {
                report.retries += 1;
                failures = if record.stored > before { 1 } else { failures + 1 };
                if failures >= MAX_FAILURES {
                    return Err(Error::Network(format!("{}: {reason} ({failures} attempts in a row)", record.path)));
                }
                web_sys::console::warn_1(
                    &format!("websd: {}: {reason}; resuming at byte {}", record.path, record.stored).into(),
                );
                // Back off: 0.25 s, 0.5 s, 1 s, ... (a first retry after progress is quick).
                sleep(250 << (failures - 1).min(4)).await;
            }
        }
    }
}

enum Attempt {
    /// Worth resuming (connection, 5xx, stall, short body).
    Retry(String),
    /// Not (4xx, quota, cancel, storage failure).
    Fatal(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Fatal(e)
    }
}

/// One request from `record.stored` to the end, storing whole chunks as they complete. A partial
/// chunk in memory is dropped on failure: at most one chunk is fetched twice per interruption.
async fn fetch_range(
    store: &Store,
    record: &mut FileRecord,
    url: &str,
    options: DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    hasher: &mut Sha256,
) -> Result<(), Attempt> {
    let start = record.stored;
    let (response, controller) = start_get(url, start, options.stall_ms).await.map_err(Attempt::Retry)?;
    let status = response.status();
    // 206 from `start`, or 200 (no Range support: skip what is stored).
    let mut skip = match status {
        206 => {
            let range = response.headers().get("content-range").ok().flatten().unwrap_or_default();
            let first =
                range.strip_prefix("bytes ").and_then(|r| r.split('-').next()).and_then(|s| s.parse::<u64>().ok());
            if first != Some(start) {
                controller.abort();
                return Err(Attempt::Retry(format!("asked for bytes {start}-, got Content-Range {range:?}")));
            }
            0
        }
        200 => start,
        500..=599 | 408 | 429 => {
            controller.abort();
            return Err(Attempt::Retry(format!("HTTP {status}")));
        }
        _ => {
            controller.abort();
            return Err(Attempt::Fatal(Error::Network(format!("{url} answered HTTP {status}"))));
        }
    };
    let Some(body) = response.body() else {
        return Err(Attempt::Retry("response without a body".into()));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let chunk = record.chunk_bytes as usize;
    let mut pending: Vec<u8> = Vec::with_capacity(chunk);
    let result = loop {
        if reporter.cancel.get() {
            controller.abort();
            break Err(Attempt::Fatal(Error::Cancelled));
        }
        let read = match within(reader.read(), options.stall_ms).await {
            Ok(Some(read)) => read,
            Ok(None) => {
                controller.abort();
                break Err(Attempt::Retry(format!("stalled for {} ms", options.stall_ms)));
            }
            Err(e) => break Err(Attempt::Retry(format!("connection broke: {}", js_text(&e)))),
        };
        if get(&read, "done").and_then(|d| d.as_bool()).unwrap_or(false) {
            let stored_end = record.stored + pending.len() as u64;
            if stored_end < record.size {
                break Err(Attempt::Retry(format!("the body ended at byte {stored_end} of {}", record.size)));
            }
            break Ok(());
        }
        let Some(value) = get(&read, "value") else { continue };
        let mut bytes = super::store::byte_view(value).to_vec();
        progress.fetched += bytes.len() as u64;
        if skip > 0 {
            let n = (skip as usize).min(bytes.len());
            bytes.drain(..n);
            skip -= n as u64;
        }
        pending.extend_from_slice(&bytes);
        if record.stored + pending.len() as u64 > record.size {
            controller.abort();
            break Err(Attempt::Fatal(Error::Integrity(format!(
                "{url} sent more than the manifest's {} bytes",
                record.size
            ))));
        }
        // Store every whole chunk, and the file's last (short) one.
        while pending.len() >= chunk || (!pending.is_empty() && record.stored + pending.len() as u64 == record.size) {
            let n = pending.len().min(chunk);
            let index = record.stored / record.chunk_bytes;
            let next = FileRecord { stored: record.stored + n as u64, ..record.clone() };
            store.put_chunk(&next, index, &pending[..n]).await?;
            hasher.update(&pending[..n]);
            pending.drain(..n);
            *record = next;
            progress.done += n as u64;
            progress.emit(reporter, &record.path);
        }
    };
    let _ = reader.cancel();
    result
}
