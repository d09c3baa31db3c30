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
    #[wasm_bindgen(method, js_name = request)]
    fn request_with_options(this: &LockManager, name: &str, options: &Object, callback: &Function) -> Promise;
}

/// Options of one `EnsureModel`.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub stall_ms: u32,
    pub chunk_bytes: u64,
    /// Origins files may come from besides the app's own (see [`check_origin`]).
    pub allowed: Vec<String>,
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

/// Largest manifest body read: a real one is a few KiB (SDXL with every variant ~10 KiB); a server
/// that sends more (or never ends) is not serving a manifest.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Longest a manifest's body may take in all (a server trickling a byte per stall period would
/// otherwise hold the worker for hours).
const MANIFEST_DEADLINE_MS: f64 = 60_000.0;

/// `GET url` with no HTTP cache involved; the whole body as text (manifests), at most
/// [`MAX_MANIFEST_BYTES`], all within [`MANIFEST_DEADLINE_MS`] plus the stall time.
async fn fetch_text(url: &str, options: &DownloadOptions, cancel: &Cell<bool>) -> Result<String, FetchFailure> {
    let bytes = fetch_body(url, options, cancel, MAX_MANIFEST_BYTES, Some(MANIFEST_DEADLINE_MS)).await?;
    String::from_utf8(bytes)
        .map_err(|_| FetchFailure::Refused(Error::BadRequest(format!("{url}: the manifest is not UTF-8"))))
}

/// `GET url` with no HTTP cache involved; the whole body, at most `max_bytes`, each read within the
/// stall time, all within `deadline_ms` (when given) plus the stall time; `cancel` is checked at every
/// read.
async fn fetch_body(
    url: &str,
    options: &DownloadOptions,
    cancel: &Cell<bool>,
    max_bytes: usize,
    deadline_ms: Option<f64>,
) -> Result<Vec<u8>, FetchFailure> {
    let started = js_sys::Date::now();
    let (response, controller) = start_get(url, None, options.stall_ms).await.map_err(FetchFailure::Network)?;
    if let Err(e) = check_final_url(&response, &options.allowed) {
        controller.abort();
        return Err(FetchFailure::Refused(e));
    }
    if !response.ok() {
        controller.abort();
        return Err(FetchFailure::Http(response.status()));
    }
    let Some(body) = response.body() else { return Ok(Vec::new()) };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::new();
    let result = loop {
        if cancel.get() {
            break Err(FetchFailure::Refused(Error::Cancelled));
        }
        if let Some(deadline) = deadline_ms
            && js_sys::Date::now() - started > deadline + options.stall_ms as f64
        {
            break Err(FetchFailure::Network(format!("the body took longer than {} s", deadline / 1000.0)));
        }
        let read = match within(reader.read(), options.stall_ms).await {
            Ok(Some(read)) => read,
            Ok(None) => break Err(FetchFailure::Network(format!("the body stalled for {} ms", options.stall_ms))),
            Err(e) => break Err(FetchFailure::Network(format!("connection broke: {}", js_text(&e)))),
        };
        if get(&read, "done").and_then(|d| d.as_bool()).unwrap_or(false) {
            break Ok(());
        }
        let Some(value) = get(&read, "value") else { continue };
        let chunk = super::store::byte_view(value);
        if bytes.len() + chunk.length() as usize > max_bytes {
            break Err(FetchFailure::TooLarge);
        }
        bytes.extend_from_slice(&chunk.to_vec());
    };
    if result.is_err() {
        controller.abort();
    }
    let _ = reader.cancel();
    result?;
    Ok(bytes)
}

/// An extra network's file (`what`: "LoRA", "embedding") from `url` (an allowed origin), at most
/// [`crate::limits::MAX_EXTRA_BYTES`].
pub async fn fetch_extra(url: &str, allowed: Vec<String>, cancel: &Cell<bool>, what: &str) -> Result<Vec<u8>, Error> {
    check_origin(url, &allowed)?;
    let options = DownloadOptions { stall_ms: DEFAULT_STALL_MS, chunk_bytes: DEFAULT_CHUNK_BYTES, allowed };
    let max = crate::limits::MAX_EXTRA_BYTES as usize;
    match fetch_body(url, &options, cancel, max, None).await {
        Ok(bytes) => Ok(bytes),
        Err(FetchFailure::Refused(e)) => Err(e),
        Err(FetchFailure::TooLarge) => {
            Err(Error::TooLarge(format!("{url}: the {what} is larger than {} MiB", max >> 20)))
        }
        Err(FetchFailure::Network(m)) => Err(Error::Network(format!("cannot fetch the {what} {url}: {m}"))),
        Err(FetchFailure::Http(status)) => Err(Error::Network(format!("the {what} {url} answered HTTP {status}"))),
    }
}

/// Starts `GET url` (bytes `from-` or `from-to` when given), bypassing the HTTP cache: it must not
/// answer a Range request with stale or partial data of its own. The controller aborts the body.
/// `Err` when no response came (network error, or nothing within `stall_ms`).
async fn start_get(
    url: &str,
    range: Option<(u64, Option<u64>)>,
    stall_ms: u32,
) -> Result<(Response, AbortController), String> {
    let init = RequestInit::new();
    init.set_cache(RequestCache::NoStore);
    let controller = AbortController::new().map_err(|e| js_text(&e))?;
    init.set_signal(Some(&controller.signal()));
    if let Some((from, to)) = range {
        let headers = Headers::new().map_err(|e| js_text(&e))?;
        let to = to.map(|t| t.to_string()).unwrap_or_default();
        headers.set("Range", &format!("bytes={from}-{to}")).map_err(|e| js_text(&e))?;
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

/// A redirected response must end on an allowed origin too (the allow-list is checked on the URL
/// asked for; a CDN may redirect, an open redirect must not take the app elsewhere).
fn check_final_url(response: &Response, allowed: &[String]) -> Result<(), Error> {
    if !response.redirected() {
        return Ok(());
    }
    let url = response.url();
    check_origin(&url, allowed).map_err(|e| Error::Invalid(format!("redirected: {e}")))
}

enum FetchFailure {
    /// No response, or the connection broke.
    Network(String),
    /// A response with this status.
    Http(u16),
    /// A response that must not be used, and no stored copy either (redirected off the allow-list).
    Refused(Error),
    /// A body longer than the caller takes.
    TooLarge,
}

/// What the downloader reports while it works, and what stops it.
pub struct Reporter<'a> {
    pub emit: &'a dyn Fn(Event),
    pub cancel: &'a Cell<bool>,
    /// Set when another tab took the model's lock to delete it.
    pub stolen: &'a Cell<bool>,
}

impl Reporter<'_> {
    fn check_cancel(&self) -> Result<(), Error> {
        if self.stolen.get() {
            return Err(Error::NotStored("the model was deleted in another tab while this downloaded it".into()));
        }
        if self.cancel.get() { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// Fetches (or, offline, reads back) the manifest of `manifest_url` and stores it.
pub async fn manifest(
    store: &Store,
    manifest_url: &str,
    options: &DownloadOptions,
    cancel: &Cell<bool>,
) -> Result<(Manifest, bool), Error> {
    let too_large =
        || Error::BadRequest(format!("{manifest_url}: the manifest is larger than {} KiB", MAX_MANIFEST_BYTES >> 10));
    match fetch_text(manifest_url, options, cancel).await {
        Ok(text) => {
            let manifest = Manifest::from_json(&text).map_err(|e| Error::BadRequest(format!("{manifest_url}: {e}")))?;
            store.put_model(&ModelRecord { id: manifest_url.to_string(), manifest: text }).await?;
            Ok((manifest, false))
        }
        Err(FetchFailure::Refused(e)) => Err(e),
        // Refused outright: no stored manifest stands in for one the server sent wrong.
        Err(FetchFailure::TooLarge) => Err(too_large()),
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
                FetchFailure::Refused(e) => e,
                FetchFailure::TooLarge => too_large(),
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

/// The Web Lock that serialises downloads (and deletion) of the model `manifest_url` across tabs.
pub(super) fn lock_name(manifest_url: &str) -> String {
    format!("websd-download {manifest_url}")
}

/// How often a request waiting for another tab's lock looks again (and checks for a cancel).
const LOCK_POLL_MS: u32 = 200;

/// Runs `work()` holding the Web Lock `name` (exclusive) if no other tab holds it: `Ok(None)` (and
/// `work` not run) if one does. With `steal`, takes the lock from its holder instead: that tab's
/// `with_lock` ends once its work does, which is at its next write (the record it writes is gone).
/// Without Web Locks (old browsers) it runs unlocked.
///
/// Waiting is the caller's loop (polling `ifAvailable`), not a queued request: a queued lock request
/// cannot be cancelled from here, and a tab waiting for another's whole download must stay cancellable.
pub(super) async fn try_lock<T: 'static, F: std::future::Future<Output = T> + 'static>(
    name: &str,
    steal: bool,
    stolen: Option<&Cell<bool>>,
    work: impl FnOnce() -> F + 'static,
) -> Result<Option<T>, Error> {
    let locks = get(&js_sys::global(), "navigator").and_then(|n| get(&n, "locks"));
    let Some(locks) = locks else { return Ok(Some(work().await)) };
    let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    // The work's promise, once granted: a stolen lock ends the request early, the work is awaited.
    let running: Rc<RefCell<Option<Promise>>> = Rc::new(RefCell::new(None));
    let (slot, run) = (out.clone(), running.clone());
    let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
        if lock.is_null() {
            // `ifAvailable` and another tab holds it.
            return JsValue::UNDEFINED;
        }
        let future = work();
        let promise = wasm_bindgen_futures::future_to_promise(async move {
            *slot.borrow_mut() = Some(future.await);
            Ok(JsValue::UNDEFINED)
        });
        *run.borrow_mut() = Some(promise.clone());
        promise.into()
    });
    let options = Object::new();
    let flag = if steal { "steal" } else { "ifAvailable" };
    let _ = Reflect::set(&options, &flag.into(), &JsValue::TRUE);
    let locks: LockManager = locks.unchecked_into();
    let request = JsFuture::from(locks.request_with_options(name, &options, callback.unchecked_ref())).await;
    let started = running.borrow_mut().take();
    match (request, started) {
        (Ok(_), None) => Ok(None),
        (Ok(_), Some(_)) => Ok(out.borrow_mut().take()),
        (Err(e), Some(work)) => {
            // Stolen (another tab deletes the model): the work stops at its next check, or at its next
            // write, which finds the model gone.
            if let Some(stolen) = stolen {
                stolen.set(true);
            }
            let _ = JsFuture::from(work).await;
            out.borrow_mut().take().map(Some).ok_or_else(|| Error::Storage(format!("Web Lock {name}: {}", js_text(&e))))
        }
        (Err(e), None) => Err(Error::Storage(format!("Web Lock {name}: {}", js_text(&e)))),
    }
}

/// The allow-list of a request that gives none: the Hub's origins, and this machine's when the app is
/// itself served from it (see [`crate::manifest::LOOPBACK_ORIGINS`]).
pub fn default_allowed_origins() -> Vec<String> {
    let local = own_origin()
        .and_then(|o| web_sys::Url::new(&o).ok())
        .is_some_and(|u| crate::manifest::is_loopback(&u.hostname()));
    let loopback = if local { &crate::manifest::LOOPBACK_ORIGINS[..] } else { &[] };
    crate::manifest::DEFAULT_ALLOWED_ORIGINS.iter().chain(loopback).map(|o| o.to_string()).collect()
}

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
    let scheme = parsed.protocol();
    let scheme = scheme.trim_end_matches(':');
    let matches = |entry: &String| crate::manifest::origin_matches(entry, scheme, &parsed.hostname(), &parsed.port());
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
/// Holds the model's download lock while it downloads; while another tab holds it, waits
/// (cancellably) until that tab is done or has stored what this request needs.
pub async fn ensure_model(
    store: Rc<Store>,
    manifest_url: String,
    variant: Option<Variant>,
    files: Files,
    options: DownloadOptions,
    emit: Rc<dyn Fn(Event)>,
    cancel: Rc<Cell<bool>>,
) -> Result<DownloadReport, Error> {
    check_origin(&manifest_url, &options.allowed)?;
    let (manifest, offline) = manifest(&store, &manifest_url, &options, &cancel).await?;
    let mut selected: Vec<ManifestFile> =
        manifest.select(variant).map_err(|e| Error::Model(e.to_string()))?.into_iter().cloned().collect();
    if files == Files::Small {
        selected.retain(|f| !f.path.ends_with(".safetensors"));
    } else {
        // A model too large for this GPU's precision is refused before its weights download (only a
        // model large enough to be refused on some GPU asks for the device).
        let weights = manifest.weights_files(variant).map_err(|e| Error::Model(e.to_string()))?;
        if crate::memory::check_browser_weights(&weights, crate::memory::Precision::F32).is_err() {
            let (device, _) = crate::gpu::wgpu_device().await?;
            crate::memory::check_browser_weights(&weights, crate::pipeline::device_precision(&device))
                .map_err(Error::Unsupported)?;
        }
    }
    // Small files first: a tab inspecting the model while this one downloads it waits for these only.
    selected.sort_by_key(|f| f.path.ends_with(".safetensors"));
    let base = match &manifest.base_url {
        Some(base) => resolve_url(base, &manifest_url)?,
        None => manifest_url.clone(),
    };
    check_origin(&base, &options.allowed)?;
    let lock = lock_name(&manifest_url);
    let (selected, base, options) = (Rc::new(selected), Rc::new(base), Rc::new(options));
    let stolen = Rc::new(Cell::new(false));
    loop {
        // Everything verified already: no lock needed to say so.
        if let Some(report) = stored_report(&store, &manifest_url, &selected, offline).await? {
            return Ok(report);
        }
        let (store, id, selected, base, options) =
            (store.clone(), manifest_url.clone(), selected.clone(), base.clone(), options.clone());
        let (emit, stop, taken) = (emit.clone(), cancel.clone(), stolen.clone());
        let work = move || async move {
            let reporter = Reporter { emit: &*emit, cancel: &stop, stolen: &taken };
            download_files(&store, &id, &base, &selected, &options, &reporter, offline).await
        };
        if let Some(result) = try_lock(&lock, false, Some(&stolen), work).await? {
            return result;
        }
        if cancel.get() {
            return Err(Error::Cancelled);
        }
        sleep(LOCK_POLL_MS).await;
    }
}

/// The report of a request with nothing to do: every file stored, verified and checkable chunk by
/// chunk; `None` otherwise.
async fn stored_report(
    store: &Store,
    id: &str,
    files: &[ManifestFile],
    offline: bool,
) -> Result<Option<DownloadReport>, Error> {
    for f in files {
        let ok = store.file(id, &f.path).await?.is_some_and(|r| {
            r.size == f.size && r.sha256 == f.sha256 && r.complete && r.repair.is_empty() && r.chunks_verifiable()
        });
        if !ok {
            return Ok(None);
        }
    }
    Ok(Some(DownloadReport {
        id: id.to_string(),
        files: files.iter().map(|f| f.path.clone()).collect(),
        total_bytes: files.iter().map(|f| f.size).sum(),
        fetched_bytes: 0,
        retries: 0,
        corrupt_files: Vec::new(),
        repaired_chunks: 0,
        offline,
    }))
}

async fn download_files(
    store: &Store,
    id: &str,
    base: &str,
    files: &[ManifestFile],
    options: &DownloadOptions,
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
                    chunk_sha256: Vec::new(),
                    repair: Vec::new(),
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
    // Verified before chunk hashes were kept: verified again (read back, not fetched) to record them.
    for record in &mut records {
        if record.complete && !record.chunks_verifiable() {
            record.complete = false;
        }
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let repairing = |r: &FileRecord| !r.complete && !r.repair.is_empty() && r.stored == r.size && r.chunks_verifiable();
    let repair_bytes: u64 =
        records.iter().filter(|r| repairing(r)).map(|r| r.repair.iter().map(|&i| r.chunk_len(i)).sum::<u64>()).sum();
    let missing: u64 = records.iter().filter(|r| !r.complete && !repairing(r)).map(|r| r.size - r.stored).sum();
    let mut report = DownloadReport {
        id: id.to_string(),
        files: files.iter().map(|f| f.path.clone()).collect(),
        total_bytes: total,
        fetched_bytes: 0,
        retries: 0,
        corrupt_files: Vec::new(),
        repaired_chunks: 0,
        offline,
    };
    if missing + repair_bytes == 0 && records.iter().all(|r| r.complete) {
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
    // Only damaged chunks to fetch: the progress says "repairing", and counts just those bytes.
    let only_repairs = records.iter().all(|r| r.complete || repairing(r));
    let mut progress = if only_repairs && repair_bytes > 0 {
        Progress { phase: Phase::Repair, done: 0, total: repair_bytes, fetched: 0 }
    } else {
        Progress { phase: Phase::Download, done: total - missing - repair_bytes, total, fetched: 0 }
    };
    for record in &mut records {
        if record.complete {
            continue;
        }
        let url = resolve_url(&record.path, base)?;
        let result = if repairing(record) {
            repair_file(store, record, &url, options, reporter, &mut progress, &mut report).await
        } else {
            download_file(store, record, &url, options, reporter, &mut progress, &mut report).await
        };
        match result {
            Err(Error::Quota { detail, .. }) => {
                let remaining = progress.total.saturating_sub(progress.done);
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
    /// `Download`, or `Repair` when only damaged chunks are fetched.
    phase: Phase,
    /// Bytes stored (all selected files).
    done: u64,
    total: u64,
    /// Bytes received from the network.
    fetched: u64,
}

impl Progress {
    fn emit(&self, reporter: &Reporter<'_>, file: &str) {
        (reporter.emit)(Event::Progress {
            phase: self.phase,
            done: self.done,
            total: self.total,
            bytes: Some(self.fetched),
            file: Some(file.to_string()),
        });
    }
}

/// Hash of what is already stored (after a reload the in-memory hasher is gone), and the stored
/// chunks' own hashes into `record`; `None` when a stored chunk is missing or no longer matches the
/// hash it had when it was downloaded (the caller starts the file over).
async fn rehash(store: &Store, record: &mut FileRecord, reporter: &Reporter<'_>) -> Result<Option<Sha256>, Error> {
    let mut hasher = Sha256::new();
    let mut hashes = Vec::new();
    for index in 0..record.chunks_stored() {
        reporter.check_cancel()?;
        let bytes = match store.chunk(&record.id, &record.path, index).await {
            Ok(bytes) => bytes,
            Err(Error::NotStored(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let digest = hex(&Sha256::digest(&bytes));
        let known = record.chunk_sha256.get(index as usize);
        if bytes.len() as u64 != record.chunk_len(index) || known.is_some_and(|k| *k != digest) {
            return Ok(None);
        }
        hasher.update(&bytes);
        hashes.push(digest);
    }
    record.chunk_sha256 = hashes;
    Ok(Some(hasher))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn download_file(
    store: &Store,
    record: &mut FileRecord,
    url: &str,
    options: &DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    report: &mut DownloadReport,
) -> Result<(), Error> {
    let mut hasher = match rehash(store, record, reporter).await? {
        Some(hasher) => hasher,
        None => {
            web_sys::console::warn_1(
                &format!("websd: a stored chunk of {} is damaged; starting it over", record.path).into(),
            );
            start_over(store, record, progress).await?;
            Sha256::new()
        }
    };
    let mut failures = 0u32;
    let mut corrupt = 0u32;
    // Set when a server's 206 cannot be checked (no readable Content-Range, a length that does not
    // agree): later attempts ask for the whole file and skip what is stored.
    let mut whole = false;
    progress.emit(reporter, &record.path);
    loop {
        reporter.check_cancel()?;
        if record.stored == record.size {
            let digest = hex(&std::mem::take(&mut hasher).finalize());
            if digest == record.sha256 {
                record.complete = true;
                // Verified whole: marks from before (another tab's, on a file since reset) are moot.
                record.repair.clear();
                store.update_file(record).await?;
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
            start_over(store, record, progress).await?;
            continue;
        }
        let before = record.stored;
        match fetch_range(store, record, url, options, reporter, progress, &mut hasher, &mut whole).await {
            Ok(()) => {}
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(reason) | Attempt::Unverifiable(reason)) => {
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

/// Drops what is stored of `record`'s file (chunks, hashes, repair marks): it is fetched from the start.
async fn start_over(store: &Store, record: &mut FileRecord, progress: &mut Progress) -> Result<(), Error> {
    progress.done = progress.done.saturating_sub(record.stored);
    store.reset_file(record).await?;
    *record = record.emptied();
    Ok(())
}

/// Fetches again, one `Range` request each, the chunks of a verified file that were found damaged
/// when read; each must match the hash it had when the file was verified.
async fn repair_file(
    store: &Store,
    record: &mut FileRecord,
    url: &str,
    options: &DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    report: &mut DownloadReport,
) -> Result<(), Error> {
    progress.emit(reporter, &record.path);
    // As in `download_file`: after an uncheckable 206, whole-file requests.
    let mut whole = false;
    while let Some(&index) = record.repair.first() {
        let (start, len) = (index * record.chunk_bytes, record.chunk_len(index));
        let expected = record.chunk_sha256[index as usize].clone();
        let (mut failures, mut corrupt) = (0u32, 0u32);
        let bytes = loop {
            reporter.check_cancel()?;
            match fetch_exact(url, start, len, options, reporter, progress, &mut whole).await {
                Ok(bytes) if hex(&Sha256::digest(&bytes)) == expected => break bytes,
                Ok(_) => {
                    corrupt += 1;
                    report.corrupt_files.push(record.path.clone());
                    if corrupt >= MAX_CORRUPT {
                        return Err(Error::Integrity(format!(
                            "{}: chunk {index} fetched again failed its sha256 check {corrupt} times",
                            record.path
                        )));
                    }
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason) | Attempt::Unverifiable(reason)) => {
                    report.retries += 1;
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        return Err(Error::Network(format!(
                            "{}: chunk {index}: {reason} ({failures} attempts in a row)",
                            record.path
                        )));
                    }
                    sleep(250 << (failures - 1).min(4)).await;
                }
            }
        };
        let mut next = record.clone();
        next.repair.remove(0);
        next.complete = next.repair.is_empty();
        store.put_chunk(&next, index, &bytes).await?;
        *record = next;
        report.repaired_chunks += 1;
        progress.done += len;
        progress.emit(reporter, &record.path);
    }
    Ok(())
}

/// Bytes `start..start + len` of `url`: a bounded `Range` request; a server that ignores `Range`
/// (200) is read from the start, the bytes before `start` dropped.
async fn fetch_exact(
    url: &str,
    start: u64,
    len: u64,
    options: &DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    whole: &mut bool,
) -> Result<Vec<u8>, Attempt> {
    let range = (!*whole).then_some((start, Some(start + len - 1)));
    let (response, controller) = start_get(url, range, options.stall_ms).await.map_err(Attempt::Retry)?;
    if let Err(e) = check_final_url(&response, &options.allowed) {
        controller.abort();
        return Err(Attempt::Fatal(e));
    }
    let mut skip = match response_offset(&response, url, start, Some(len)) {
        Ok(skip) => skip,
        Err(e) => {
            controller.abort();
            if matches!(e, Attempt::Unverifiable(_)) {
                *whole = true;
            }
            return Err(e);
        }
    };
    let Some(body) = response.body() else { return Err(Attempt::Retry("response without a body".into())) };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut out = Vec::with_capacity(len as usize);
    let result = loop {
        if let Err(e) = reporter.check_cancel() {
            break Err(Attempt::Fatal(e));
        }
        let read = match within(reader.read(), options.stall_ms).await {
            Ok(Some(read)) => read,
            Ok(None) => break Err(Attempt::Retry(format!("stalled for {} ms", options.stall_ms))),
            Err(e) => break Err(Attempt::Retry(format!("connection broke: {}", js_text(&e)))),
        };
        if get(&read, "done").and_then(|d| d.as_bool()).unwrap_or(false) {
            break Err(Attempt::Retry(format!("the body ended after {} of {len} bytes", out.len())));
        }
        let Some(value) = get(&read, "value") else { continue };
        let mut bytes = super::store::byte_view(value).to_vec();
        progress.fetched += bytes.len() as u64;
        if skip > 0 {
            let n = (skip as usize).min(bytes.len());
            bytes.drain(..n);
            skip -= n as u64;
        }
        let want = len as usize - out.len();
        out.extend_from_slice(&bytes[..want.min(bytes.len())]);
        if out.len() as u64 == len {
            break Ok(());
        }
    };
    controller.abort();
    let _ = reader.cancel();
    result.map(|()| out)
}

/// Where a response's body starts relative to the byte `start` asked for: the bytes to skip. A 206
/// must say it starts at `start` (Content-Range), or, where the header is not readable (a CDN that
/// does not expose it to CORS), have the length the request implies (`len`, or the rest of the file);
/// a 200 is the whole file (the server ignored `Range`).
fn response_offset(response: &Response, url: &str, start: u64, len: Option<u64>) -> Result<u64, Attempt> {
    let status = response.status();
    let header = |name: &str| response.headers().get(name).ok().flatten();
    match status {
        206 => {
            let range = header("content-range");
            let first = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse::<u64>().ok());
            match (first, len) {
                (Some(first), _) if first == start => Ok(0),
                (Some(_), _) => Err(Attempt::Retry(format!("asked for bytes {start}-, got Content-Range {range:?}"))),
                (None, Some(len)) if header("content-length").and_then(|l| l.parse::<u64>().ok()) == Some(len) => Ok(0),
                (None, _) => Err(Attempt::Unverifiable(format!(
                    "a 206 for bytes {start}- without a readable Content-Range or the matching length"
                ))),
            }
        }
        200 => Ok(start),
        500..=599 | 408 | 429 => Err(Attempt::Retry(format!("HTTP {status}"))),
        _ => Err(Attempt::Fatal(Error::Network(format!("{url} answered HTTP {status}")))),
    }
}

enum Attempt {
    /// Worth resuming (connection, 5xx, stall, short body).
    Retry(String),
    /// A partial response whose offset cannot be checked: worth retrying as a whole-file request.
    Unverifiable(String),
    /// Not (4xx, quota, cancel, storage failure, a redirect off the allow-list).
    Fatal(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Fatal(e)
    }
}

/// One request from `record.stored` to the end, storing whole chunks as they complete. A partial
/// chunk in memory is dropped on failure: at most one chunk is fetched twice per interruption.
#[allow(clippy::too_many_arguments)]
async fn fetch_range(
    store: &Store,
    record: &mut FileRecord,
    url: &str,
    options: &DownloadOptions,
    reporter: &Reporter<'_>,
    progress: &mut Progress,
    hasher: &mut Sha256,
    whole: &mut bool,
) -> Result<(), Attempt> {
    let start = record.stored;
    let range = (start > 0 && !*whole).then_some((start, None));
    let (response, controller) = start_get(url, range, options.stall_ms).await.map_err(Attempt::Retry)?;
    if let Err(e) = check_final_url(&response, &options.allowed) {
        controller.abort();
        return Err(Attempt::Fatal(e));
    }
    // 206 from `start`, or 200 (no Range support, or asked for the whole file: skip what is stored).
    let mut skip = match response_offset(&response, url, start, Some(record.size - start)) {
        Ok(skip) => skip,
        Err(Attempt::Unverifiable(reason)) => {
            controller.abort();
            *whole = true;
            return Err(Attempt::Retry(format!("{reason}; asking for the whole file next")));
        }
        Err(e) => {
            controller.abort();
            return Err(e);
        }
    };
    let Some(body) = response.body() else {
        return Err(Attempt::Retry("response without a body".into()));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let chunk = record.chunk_bytes as usize;
    let mut pending: Vec<u8> = Vec::with_capacity(chunk);
    let result = loop {
        if let Err(e) = reporter.check_cancel() {
            controller.abort();
            break Err(Attempt::Fatal(e));
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
        // A server that sends more than the manifest's size: the file's first `size` bytes are kept
        // and the sha256 decides (a different file fails it and is fetched again).
        let room = (record.size - record.stored) as usize - pending.len();
        let overflow = bytes.len() > room;
        if overflow {
            web_sys::console::warn_1(
                &format!("websd: {url} sent more than the manifest's {} bytes", record.size).into(),
            );
            bytes.truncate(room);
        }
        pending.extend_from_slice(&bytes);
        // Store every whole chunk, and the file's last (short) one.
        while pending.len() >= chunk || (!pending.is_empty() && record.stored + pending.len() as u64 == record.size) {
            let n = pending.len().min(chunk);
            let index = record.stored / record.chunk_bytes;
            let mut next = FileRecord { stored: record.stored + n as u64, ..record.clone() };
            next.chunk_sha256.truncate(index as usize);
            next.chunk_sha256.push(hex(&Sha256::digest(&pending[..n])));
            store.put_chunk(&next, index, &pending[..n]).await?;
            hasher.update(&pending[..n]);
            pending.drain(..n);
            *record = next;
            progress.done += n as u64;
            progress.emit(reporter, &record.path);
        }
        if overflow {
            controller.abort();
            break Ok(());
        }
    };
    let _ = reader.cancel();
    result
}
