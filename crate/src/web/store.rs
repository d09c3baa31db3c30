//! The weight store: models in IndexedDB (through the `idb` crate), in the worker.
//!
//! Object stores:
//! - `models`: id (the manifest URL) -> [`ModelRecord`] (the manifest as fetched);
//! - `files`: `[id, path]` -> [`FileRecord`] (bytes stored so far, whether verified);
//! - `chunks`: `[id, path, index]` -> a `Blob` of `chunk_bytes` (the last one shorter); stores written
//!   before Blob chunks hold a `Uint8Array` there, which reads still take;
//! - extra networks ([`Extra`]): `loras` (name -> [`crate::protocol::LoraSummary`]) with `lora-files`,
//!   and `embeddings` (trigger word -> [`crate::protocol::EmbeddingSummary`]) with `embedding-files`:
//!   each file one `Blob` (read whole, to be parsed, so not chunked), written with its record;
//! - `kernel-picks`: an adapter's description -> the kernels measured on it
//!   ([`crate::kernels::tune`]), so that a device measures each shape once, not once per page.
//!
//! Chunks are Blobs because a read then copies each byte once: IndexedDB keeps a large typed array as
//! a blob file anyway, and reading one back reads that file into a buffer and deserializes a second
//! copy out of it, while a stored `Blob` comes back as a handle whose `arrayBuffer()` reads the file
//! straight into the result. Measured in Chromium here (512 MiB in 4 MiB chunks, 4 reads in flight):
//! 1.1-1.2 s and 1.03 GiB of fresh renderer pages for typed arrays, 0.5-0.8 s and 0.52 GiB for Blobs.
//!
//! A chunk and its file record are written in one transaction, so `stored` never counts a chunk that
//! is not there, whatever interrupts the worker (reload, quota, crash). A file is `complete` only
//! after its sha256 matched.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use idb::{Database, DatabaseEvent, Factory, KeyRange, ObjectStoreParams, Query, TransactionMode};
use js_sys::{Array, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};

use super::download::js_text;
use crate::Error;
use crate::kernels::tune::Picks;

const DB_NAME: &str = "websd-weights";
/// 2 added the extra networks' stores, 3 `kernel-picks` (the upgrade creates whatever store is missing).
const DB_VERSION: u32 = 3;
const MODELS: &str = "models";
const FILES: &str = "files";
const CHUNKS: &str = "chunks";
const LORAS: &str = "loras";
const LORA_FILES: &str = "lora-files";
const EMBEDDINGS: &str = "embeddings";
const EMBEDDING_FILES: &str = "embedding-files";
const KERNEL_PICKS: &str = "kernel-picks";

/// The extra networks the store keeps beside models: each a record store (key -> its summary) and a
/// file store (key -> the file as one `Blob`: it is read whole, to be parsed, so it is not chunked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// LoRAs, by name ([`crate::protocol::LoraSummary`]).
    Lora,
    /// Textual-inversion embeddings, by trigger word ([`crate::protocol::EmbeddingSummary`]).
    Embedding,
}

impl Extra {
    fn stores(self) -> (&'static str, &'static str) {
        match self {
            Extra::Lora => (LORAS, LORA_FILES),
            Extra::Embedding => (EMBEDDINGS, EMBEDDING_FILES),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Extra::Lora => "LoRA",
            Extra::Embedding => "embedding",
        }
    }
}

thread_local! {
    /// Chunks of weights files read so far (the tests count them: a LoRA change must not read the
    /// model's weights again; its small config files are read by every generation's preflight).
    static WEIGHT_CHUNK_READS: Cell<u64> = const { Cell::new(0) };
}

/// Chunks of models' weights files read from the store since the worker started.
pub fn weight_chunk_reads() -> u64 {
    WEIGHT_CHUNK_READS.with(Cell::get)
}

/// A stored model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    pub id: String,
    /// The manifest JSON as last fetched (used offline).
    pub manifest: String,
}

/// The state of one file of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    pub id: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Chunk size this file is stored in (kept when resuming).
    pub chunk_bytes: u64,
    /// Bytes in whole chunks stored so far (the last chunk may be shorter once `stored == size`).
    pub stored: u64,
    /// Stored in full and the sha256 matched (and no chunk is waiting for repair).
    pub complete: bool,
    /// sha256 (hex) of each stored chunk, in order (absent in records written before they were kept).
    #[serde(default)]
    pub chunk_sha256: Vec<String>,
    /// Chunks of a verified file found damaged when read: the next download fetches just these.
    #[serde(default)]
    pub repair: Vec<u64>,
}

impl FileRecord {
    /// Number of chunks stored.
    pub fn chunks_stored(&self) -> u64 {
        self.stored.div_ceil(self.chunk_bytes)
    }

    /// This file's record with nothing stored (no chunks, hashes or repair marks).
    pub fn emptied(&self) -> FileRecord {
        FileRecord { stored: 0, complete: false, chunk_sha256: Vec::new(), repair: Vec::new(), ..self.clone() }
    }

    /// Number of chunks of the whole file.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_bytes)
    }

    /// Length of chunk `index` (the last one may be shorter).
    pub fn chunk_len(&self, index: u64) -> u64 {
        self.chunk_bytes.min(self.size.saturating_sub(index * self.chunk_bytes))
    }

    /// What a read of chunk `index` must find, when the record knows it.
    pub fn chunk_check(&self, index: u64) -> Option<ChunkCheck> {
        let sha256 = self.chunk_sha256.get(index as usize)?.clone();
        Some(ChunkCheck { len: self.chunk_len(index), sha256 })
    }

    /// Whether a verified file's chunks can be checked one by one (records from before chunk hashes
    /// cannot, until verified again).
    pub fn chunks_verifiable(&self) -> bool {
        self.chunk_sha256.len() as u64 == self.chunks()
    }
}

/// The expected length and sha256 of a stored chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkCheck {
    pub len: u64,
    pub sha256: String,
}

/// Maps IndexedDB failures to the crate's errors; a full quota (Chrome aborts the transaction with
/// `QuotaExceededError`) gets its own variant, with the sizes filled in by the caller.
pub fn store_error(context: &str, err: impl std::fmt::Display) -> Error {
    let text = err.to_string();
    if text.contains("QuotaExceeded") || text.contains("quota") {
        Error::Quota { needed: 0, available: 0, detail: format!(" ({context}: {text})") }
    } else {
        Error::Storage(format!("{context}: {text}"))
    }
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, Error> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| Error::Storage(format!("encoding a record: {e}")))
}

fn from_js<T: for<'de> Deserialize<'de>>(value: JsValue) -> Result<T, Error> {
    serde_wasm_bindgen::from_value(value).map_err(|e| Error::Storage(format!("decoding a record: {e}")))
}

fn key(parts: &[JsValue]) -> JsValue {
    parts.iter().collect::<Array>().into()
}

fn file_key(id: &str, path: &str) -> JsValue {
    key(&[id.into(), path.into()])
}

fn chunk_key(id: &str, path: &str, index: u64) -> JsValue {
    key(&[id.into(), path.into(), JsValue::from_f64(index as f64)])
}

/// Every key that starts with `prefix` (arrays compare element-wise; a proper prefix sorts first, and
/// `last + "\0"` sorts after every extension of it).
fn prefix_range(prefix: &[&str]) -> Result<Query, Error> {
    let lower = key(&prefix.iter().map(|s| JsValue::from_str(s)).collect::<Vec<_>>());
    let mut upper: Vec<JsValue> = prefix.iter().map(|s| JsValue::from_str(s)).collect();
    let last = format!("{}\0", prefix.last().expect("non-empty prefix"));
    *upper.last_mut().unwrap() = JsValue::from_str(&last);
    let range = KeyRange::bound(&lower, &key(&upper), Some(false), Some(true))
        .map_err(|e| Error::Storage(format!("key range: {e}")))?;
    Ok(Query::KeyRange(range))
}

/// The open database.
pub struct Store {
    db: Database,
    /// Set once the connection is closed: by the browser ("clear site data", eviction), or by us when
    /// another connection needs a new version or deletes the database. The engine then opens a new one.
    closed: Rc<Cell<bool>>,
}

impl Store {
    /// Opens (creating or upgrading) the database.
    pub async fn open() -> Result<Store, Error> {
        let factory = Factory::new().map_err(|e| Error::Storage(format!("IndexedDB is not available: {e}")))?;
        let mut request = factory.open(DB_NAME, Some(DB_VERSION)).map_err(|e| store_error("opening", e))?;
        request.on_upgrade_needed(|event| {
            let Ok(db) = event.database() else { return };
            for name in [MODELS, FILES, CHUNKS, LORAS, LORA_FILES, EMBEDDINGS, EMBEDDING_FILES, KERNEL_PICKS] {
                if !db.store_names().iter().any(|n| n == name) {
                    let _ = db.create_object_store(name, ObjectStoreParams::new());
                }
            }
        });
        let mut db = request.await.map_err(|e| store_error("opening", e))?;
        let closed = Rc::new(Cell::new(false));
        // A tab that upgrades or deletes the database waits ("blocked") for every open connection to
        // close: this one closes at once, and the next request opens a new one.
        let on_change = closed.clone();
        db.on_version_change(move |event| {
            on_change.set(true);
            if let Some(db) = event.target().and_then(|t| t.dyn_into::<web_sys::IdbDatabase>().ok()) {
                db.close();
            }
        });
        let on_close = closed.clone();
        db.on_close(move |_| on_close.set(true));
        Ok(Store { db, closed })
    }

    /// Whether the connection was closed (by the browser, or for another connection); the engine then
    /// opens a new one.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    async fn get(&self, store: &str, key: JsValue) -> Result<Option<JsValue>, Error> {
        let tx = self.db.transaction(&[store], TransactionMode::ReadOnly).map_err(|e| store_error("reading", e))?;
        let os = tx.object_store(store).map_err(|e| store_error("reading", e))?;
        let value = os.get(key).map_err(|e| store_error("reading", e))?.await.map_err(|e| store_error("reading", e))?;
        Ok(value.filter(|v| !v.is_undefined()))
    }

    async fn put(&self, store: &str, key: JsValue, value: &JsValue) -> Result<(), Error> {
        let tx = self.db.transaction(&[store], TransactionMode::ReadWrite).map_err(|e| store_error("writing", e))?;
        let os = tx.object_store(store).map_err(|e| store_error("writing", e))?;
        os.put(value, Some(&key))
            .map_err(|e| store_error("writing", e))?
            .await
            .map_err(|e| store_error("writing", e))?;
        finish(tx, "writing").await
    }

    /// The kernels measured on `adapter` ([`crate::kernels::tune::export`]);
    /// none stored, none.
    pub async fn kernel_picks(&self, adapter: &str) -> Result<Picks, Error> {
        Ok(self.get(KERNEL_PICKS, adapter.into()).await?.map(from_js).transpose()?.unwrap_or_default())
    }

    /// Replaces what [`Store::kernel_picks`] gives for `adapter`.
    pub async fn put_kernel_picks(&self, adapter: &str, picks: &Picks) -> Result<(), Error> {
        self.put(KERNEL_PICKS, adapter.into(), &to_js(picks)?).await
    }

    /// The stored model `id`.
    pub async fn model(&self, id: &str) -> Result<Option<ModelRecord>, Error> {
        self.get(MODELS, id.into()).await?.map(from_js).transpose()
    }

    pub async fn put_model(&self, record: &ModelRecord) -> Result<(), Error> {
        self.put(MODELS, record.id.as_str().into(), &to_js(record)?).await
    }

    /// Every stored model.
    pub async fn models(&self) -> Result<Vec<ModelRecord>, Error> {
        self.all(MODELS).await
    }

    /// Every record of `store`.
    async fn all<T: for<'de> Deserialize<'de>>(&self, store: &str) -> Result<Vec<T>, Error> {
        let tx = self.db.transaction(&[store], TransactionMode::ReadOnly).map_err(|e| store_error("listing", e))?;
        let os = tx.object_store(store).map_err(|e| store_error("listing", e))?;
        let all = os
            .get_all(None, None)
            .map_err(|e| store_error("listing", e))?
            .await
            .map_err(|e| store_error("listing", e))?;
        all.into_iter().map(from_js).collect()
    }

    /// The record of one file.
    pub async fn file(&self, id: &str, path: &str) -> Result<Option<FileRecord>, Error> {
        self.get(FILES, file_key(id, path)).await?.map(from_js).transpose()
    }

    /// Every file record of a model.
    pub async fn files(&self, id: &str) -> Result<Vec<FileRecord>, Error> {
        let tx = self.db.transaction(&[FILES], TransactionMode::ReadOnly).map_err(|e| store_error("listing", e))?;
        let os = tx.object_store(FILES).map_err(|e| store_error("listing", e))?;
        let all = os
            .get_all(Some(prefix_range(&[id])?), None)
            .map_err(|e| store_error("listing", e))?
            .await
            .map_err(|e| store_error("listing", e))?;
        all.into_iter().map(from_js).collect()
    }

    /// Creates or replaces a file record; refused when the model's record is gone (deleted meanwhile).
    pub async fn put_file(&self, record: &FileRecord) -> Result<(), Error> {
        self.write_file(record, false).await
    }

    /// Replaces an existing file record (a download's progress); refused when the model or the record
    /// is gone (deleted meanwhile).
    pub async fn update_file(&self, record: &FileRecord) -> Result<(), Error> {
        self.write_file(record, true).await
    }

    async fn write_file(&self, record: &FileRecord, existing_only: bool) -> Result<(), Error> {
        let tx =
            self.db.transaction(&[MODELS, FILES], TransactionMode::ReadWrite).map_err(|e| store_error("writing", e))?;
        let key = file_key(&record.id, &record.path);
        if !exists(&tx, MODELS, record.id.as_str().into()).await?
            || (existing_only && !exists(&tx, FILES, key.clone()).await?)
        {
            return Err(deleted(&record.path));
        }
        let files = tx.object_store(FILES).map_err(|e| store_error("writing", e))?;
        files
            .put(&to_js(record)?, Some(&key))
            .map_err(|e| store_error("writing", e))?
            .await
            .map_err(|e| store_error("writing", e))?;
        finish(tx, "writing").await
    }

    /// Stores chunk `index` of a file and its updated record in one transaction, only while the model
    /// and the file's record exist (not deleted by another tab). Chunks another tab marked damaged
    /// meanwhile stay marked (a repair writes the record it read before).
    pub async fn put_chunk(&self, record: &FileRecord, index: u64, bytes: &[u8]) -> Result<(), Error> {
        let tx = self
            .db
            .transaction(&[MODELS, FILES, CHUNKS], TransactionMode::ReadWrite)
            .map_err(|e| store_error("writing", e))?;
        // SAFETY: the view is used only by the Blob constructor, which copies the bytes before anything
        // can grow the wasm memory (and detach the view).
        let parts = Array::of1(&unsafe { Uint8Array::view(bytes) }.into());
        let data: JsValue = web_sys::Blob::new_with_u8_array_sequence(&parts)
            .map_err(|e| store_error("writing a chunk", js_text(&e)))?
            .into();
        let key = file_key(&record.id, &record.path);
        let existing: Option<FileRecord> = match exists(&tx, MODELS, record.id.as_str().into()).await? {
            true => read(&tx, FILES, key.clone()).await?,
            false => None,
        };
        // Nothing is written then: the transaction ends with its reads.
        let Some(existing) = existing else { return Err(deleted(&record.path)) };
        let mut record = record.clone();
        if record.stored == record.size && existing.stored == existing.size && existing.sha256 == record.sha256 {
            let marked = existing.repair.iter().filter(|&&i| i != index && !record.repair.contains(&i));
            record.repair.extend(marked.copied().collect::<Vec<_>>());
            record.repair.sort_unstable();
            record.complete &= record.repair.is_empty();
        }
        let chunks = tx.object_store(CHUNKS).map_err(|e| store_error("writing", e))?;
        let files = tx.object_store(FILES).map_err(|e| store_error("writing", e))?;
        let put_chunk = chunks.put(&data, Some(&chunk_key(&record.id, &record.path, index)));
        let put_record = files.put(&to_js(&record)?, Some(&key));
        put_chunk
            .map_err(|e| store_error("writing a chunk", e))?
            .await
            .map_err(|e| store_error("writing a chunk", e))?;
        put_record.map_err(|e| store_error("writing", e))?.await.map_err(|e| store_error("writing", e))?;
        finish(tx, "writing a chunk").await
    }

    /// Marks chunk `index` of a file damaged (in one transaction with the read of its record): the
    /// file is no longer complete, and the next download fetches that chunk again.
    pub async fn mark_damaged(&self, id: &str, path: &str, index: u64) -> Result<(), Error> {
        let tx = self.db.transaction(&[FILES], TransactionMode::ReadWrite).map_err(|e| store_error("writing", e))?;
        let key = file_key(id, path);
        let Some(mut record) = read::<FileRecord>(&tx, FILES, key.clone()).await? else { return Err(deleted(path)) };
        if !record.repair.contains(&index) {
            record.repair.push(index);
            record.repair.sort_unstable();
        }
        record.complete = false;
        let files = tx.object_store(FILES).map_err(|e| store_error("writing", e))?;
        files
            .put(&to_js(&record)?, Some(&key))
            .map_err(|e| store_error("writing", e))?
            .await
            .map_err(|e| store_error("writing", e))?;
        finish(tx, "writing").await
    }

    /// Chunk `index` of a file, read from now on, not from the caller's first poll: awaiting the result
    /// later lets IndexedDB (and the Blob's read) work while the caller does (the loader decodes and
    /// uploads one chunk while the next ones are read). The bytes stay in JS: the caller copies what it
    /// needs straight to where it goes. With `check`, a chunk that is missing, has another length or
    /// another sha256 is [`Error::Damaged`] (hashed by the browser's native SHA-256, off the wasm heap,
    /// while the caller works on the chunk before).
    pub fn chunk_soon(
        &self,
        id: &str,
        path: &str,
        index: u64,
        check: Option<ChunkCheck>,
    ) -> Result<impl std::future::Future<Output = Result<Uint8Array, Error>> + 'static, Error> {
        if path.ends_with(".safetensors") {
            WEIGHT_CHUNK_READS.with(|n| n.set(n.get() + 1));
        }
        let tx = self.db.transaction(&[CHUNKS], TransactionMode::ReadOnly).map_err(|e| store_error("reading", e))?;
        let request = tx
            .object_store(CHUNKS)
            .map_err(|e| store_error("reading", e))?
            .get(chunk_key(id, path, index))
            .map_err(|e| store_error("reading", e))?
            // The success callback goes in place now: a request that completed before it was set
            // would leave the read waiting forever.
            .into_future();
        let path = path.to_string();
        let read = async move {
            let _tx = tx;
            let value = request.await.map_err(|e| store_error("reading", e))?.filter(|v| !v.is_undefined());
            let Some(check) = check else {
                let value = value
                    .ok_or_else(|| Error::NotStored(format!("{path}: chunk {index} is missing from the store")))?;
                return chunk_bytes(value).await;
            };
            let damaged = |what: String| Error::Damaged(format!("{path}: chunk {index} {what}"));
            let bytes = chunk_bytes(value.ok_or_else(|| damaged("is missing".into()))?).await?;
            if bytes.length() as u64 != check.len {
                return Err(damaged(format!("has {} bytes, {} expected", bytes.length(), check.len)));
            }
            let digest = sha256_hex(&bytes).await?;
            if digest != check.sha256 {
                return Err(damaged(format!("has sha256 {digest}, {} when downloaded", check.sha256)));
            }
            Ok(bytes)
        };
        // The executor drives the read from here (a future that is not polled would not read the Blob),
        // and leaves its result in `slot`.
        let slot: Rc<RefCell<Option<Result<Uint8Array, Error>>>> = Rc::default();
        let mut read = Some(read);
        let done = js_sys::Promise::new(&mut |resolve, _reject| {
            let (slot, read) = (slot.clone(), read.take().expect("the promise's executor runs once"));
            wasm_bindgen_futures::spawn_local(async move {
                *slot.borrow_mut() = Some(read.await);
                let _ = resolve.call0(&JsValue::NULL);
            });
        });
        Ok(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(done).await;
            slot.borrow_mut().take().expect("the read finished before resolving")
        })
    }

    /// Chunk `index` of a file (unchecked: the downloader hashes what it reads itself).
    pub async fn chunk(&self, id: &str, path: &str, index: u64) -> Result<Vec<u8>, Error> {
        Ok(self.chunk_soon(id, path, index, None)?.await?.to_vec())
    }

    /// Removes a file's chunks and resets its record to nothing stored (one transaction); refused when
    /// the model's record is gone (deleted meanwhile).
    pub async fn reset_file(&self, record: &FileRecord) -> Result<(), Error> {
        let tx = self
            .db
            .transaction(&[MODELS, FILES, CHUNKS], TransactionMode::ReadWrite)
            .map_err(|e| store_error("deleting", e))?;
        if !exists(&tx, MODELS, record.id.as_str().into()).await? {
            return Err(deleted(&record.path));
        }
        let chunks = tx.object_store(CHUNKS).map_err(|e| store_error("deleting", e))?;
        let files = tx.object_store(FILES).map_err(|e| store_error("deleting", e))?;
        chunks
            .delete(prefix_range(&[&record.id, &record.path])?)
            .map_err(|e| store_error("deleting", e))?
            .await
            .map_err(|e| store_error("deleting", e))?;
        files
            .put(&to_js(&record.emptied())?, Some(&file_key(&record.id, &record.path)))
            .map_err(|e| store_error("deleting", e))?
            .await
            .map_err(|e| store_error("deleting", e))?;
        finish(tx, "deleting").await
    }

    /// Stores an extra network's file and its record (under `key`) in one transaction, replacing one
    /// of the same key.
    pub async fn put_extra<T: Serialize>(
        &self,
        kind: Extra,
        key: &str,
        record: &T,
        bytes: &Uint8Array,
    ) -> Result<(), Error> {
        let what = format!("writing a {}", kind.label());
        let data: JsValue = web_sys::Blob::new_with_u8_array_sequence(&Array::of1(bytes))
            .map_err(|e| store_error(&what, js_text(&e)))?
            .into();
        let (records, files) = kind.stores();
        let tx =
            self.db.transaction(&[records, files], TransactionMode::ReadWrite).map_err(|e| store_error(&what, e))?;
        let key: JsValue = key.into();
        let put_file = tx.object_store(files).map_err(|e| store_error(&what, e))?.put(&data, Some(&key));
        let put_record = tx.object_store(records).map_err(|e| store_error(&what, e))?.put(&to_js(record)?, Some(&key));
        put_file.map_err(|e| store_error(&what, e))?.await.map_err(|e| store_error(&what, e))?;
        put_record.map_err(|e| store_error(&what, e))?.await.map_err(|e| store_error(&what, e))?;
        finish(tx, &what).await
    }

    /// The record stored under `key`.
    pub async fn extra<T: for<'de> Deserialize<'de>>(&self, kind: Extra, key: &str) -> Result<Option<T>, Error> {
        self.get(kind.stores().0, key.into()).await?.map(from_js).transpose()
    }

    /// Every record of `kind`, by key.
    pub async fn extras<T: for<'de> Deserialize<'de>>(&self, kind: Extra) -> Result<Vec<T>, Error> {
        self.all(kind.stores().0).await
    }

    /// The file stored under `key`, checked against its record's `size` and `sha256`
    /// ([`Error::Damaged`] when it changed since it was stored: it must be added again).
    pub async fn extra_bytes(&self, kind: Extra, key: &str, size: u64, sha256: &str) -> Result<Uint8Array, Error> {
        let value = self.get(kind.stores().1, key.into()).await?;
        let damaged = |what: String| Error::Damaged(format!("the stored {} {key} {what}: add it again", kind.label()));
        let bytes = chunk_bytes(value.ok_or_else(|| damaged("is missing".into()))?).await?;
        if bytes.length() as u64 != size {
            return Err(damaged(format!("has {} bytes, {size} when stored", bytes.length())));
        }
        let digest = sha256_hex(&bytes).await?;
        if digest != sha256 {
            return Err(damaged(format!("has sha256 {digest}, {sha256} when stored")));
        }
        Ok(bytes)
    }

    /// Removes what is stored under `key`: its record and file (one transaction).
    pub async fn delete_extra(&self, kind: Extra, key: &str) -> Result<(), Error> {
        let (records, files) = kind.stores();
        let tx = self
            .db
            .transaction(&[records, files], TransactionMode::ReadWrite)
            .map_err(|e| store_error("deleting", e))?;
        for store in [records, files] {
            let os = tx.object_store(store).map_err(|e| store_error("deleting", e))?;
            os.delete(Query::Key(key.into()))
                .map_err(|e| store_error("deleting", e))?
                .await
                .map_err(|e| store_error("deleting", e))?;
        }
        finish(tx, "deleting").await
    }

    /// Removes a model: its record, files and chunks (one transaction).
    pub async fn delete_model(&self, id: &str) -> Result<(), Error> {
        let tx = self
            .db
            .transaction(&[MODELS, FILES, CHUNKS], TransactionMode::ReadWrite)
            .map_err(|e| store_error("deleting", e))?;
        for (store, query) in
            [(CHUNKS, prefix_range(&[id])?), (FILES, prefix_range(&[id])?), (MODELS, Query::Key(id.into()))]
        {
            let os = tx.object_store(store).map_err(|e| store_error("deleting", e))?;
            os.delete(query).map_err(|e| store_error("deleting", e))?.await.map_err(|e| store_error("deleting", e))?;
        }
        finish(tx, "deleting").await
    }
}

/// The value under `key` in `store`, read within `tx`.
async fn read<T: for<'de> Deserialize<'de>>(
    tx: &idb::Transaction,
    store: &str,
    key: JsValue,
) -> Result<Option<T>, Error> {
    let os = tx.object_store(store).map_err(|e| store_error("reading", e))?;
    let value = os.get(key).map_err(|e| store_error("reading", e))?.await.map_err(|e| store_error("reading", e))?;
    value.filter(|v| !v.is_undefined()).map(from_js).transpose()
}

/// Whether `store` has `key`, within `tx`.
async fn exists(tx: &idb::Transaction, store: &str, key: JsValue) -> Result<bool, Error> {
    let os = tx.object_store(store).map_err(|e| store_error("reading", e))?;
    let value = os.get(key).map_err(|e| store_error("reading", e))?.await.map_err(|e| store_error("reading", e))?;
    Ok(value.is_some_and(|v| !v.is_undefined()))
}

/// The error of a write for a file whose record is gone.
fn deleted(path: &str) -> Error {
    Error::NotStored(format!("{path}: the model was deleted (in another tab?) while this was writing it"))
}

/// sha256 of `bytes` (hex): `crypto.subtle` where there is one (native, and the bytes stay in JS),
/// else sha2 in wasm. WebGPU needs a secure context, which has `crypto.subtle`, so the fallback is for
/// completeness.
pub async fn sha256_hex(bytes: &Uint8Array) -> Result<String, Error> {
    use js_sys::Reflect;
    let subtle = Reflect::get(&js_sys::global(), &"crypto".into())
        .and_then(|c| Reflect::get(&c, &"subtle".into()))
        .ok()
        .filter(|s| s.is_object());
    let hex = |digest: &[u8]| digest.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if let Some(subtle) = subtle {
        let digest: js_sys::Function = Reflect::get(&subtle, &"digest".into())
            .map_err(|e| Error::Storage(format!("crypto.subtle.digest: {}", js_text(&e))))?
            .unchecked_into();
        let promise = digest
            .call2(&subtle, &"SHA-256".into(), bytes)
            .map_err(|e| Error::Storage(format!("crypto.subtle.digest: {}", js_text(&e))))?;
        let buffer = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(promise))
            .await
            .map_err(|e| Error::Storage(format!("crypto.subtle.digest: {}", js_text(&e))))?;
        return Ok(hex(&Uint8Array::new(&buffer).to_vec()));
    }
    use sha2::Digest;
    Ok(hex(&sha2::Sha256::digest(bytes.to_vec())))
}

/// `value` (a `Uint8Array`, or an `ArrayBuffer`) as a `Uint8Array`, without copying: `new
/// Uint8Array(typedArray)` (js-sys' `Uint8Array::new`) copies a typed array's bytes, once more for
/// every chunk read or downloaded.
pub fn byte_view(value: JsValue) -> Uint8Array {
    value.dyn_into::<Uint8Array>().unwrap_or_else(|other| Uint8Array::new(&other))
}

/// A stored chunk's bytes: a Blob's contents (read now), or a typed array as stored before Blob chunks.
async fn chunk_bytes(value: JsValue) -> Result<Uint8Array, Error> {
    match value.dyn_into::<web_sys::Blob>() {
        Ok(blob) => {
            let buffer = wasm_bindgen_futures::JsFuture::from(blob.array_buffer())
                .await
                .map_err(|e| store_error("reading a chunk", js_text(&e)))?;
            Ok(Uint8Array::new(&buffer))
        }
        Err(value) => Ok(byte_view(value)),
    }
}

/// Waits for the transaction; an abort (quota, ...) is an error naming the transaction's reason.
async fn finish(tx: idb::Transaction, context: &str) -> Result<(), Error> {
    // Keep a handle: the reason of an abort (`QuotaExceededError` at commit) is on the transaction.
    let raw: web_sys::IdbTransaction = tx.into();
    let result = idb::Transaction::from(raw.clone()).await;
    let reason = || raw.error().map(|e| format!("{}: {}", e.name(), e.message()));
    match result {
        Ok(result) if result.is_committed() => Ok(()),
        Ok(_) => Err(store_error(context, reason().unwrap_or_else(|| "transaction aborted".into()))),
        Err(e) => Err(store_error(context, reason().unwrap_or_else(|| e.to_string()))),
    }
}
