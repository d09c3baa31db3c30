//! The weight store in IndexedDB: chunks are written as Blobs (read back with one copy), and chunks
//! that stores written before hold as typed arrays still read.
#![cfg(target_arch = "wasm32")]

use js_sys::{Function, Promise};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use websd::web::store::{FileRecord, ModelRecord, Store};

/// Runs `body` (an async JS function body over `id` and `path`) against the store's database directly.
async fn raw(body: &str, id: &str, path: &str) -> JsValue {
    let open = "const db = await new Promise((ok, err) => { const r = indexedDB.open('websd-weights'); \
                r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });
                const req = (r) => new Promise((ok, err) => { r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });";
    let f = Function::new_with_args(
        "id, path",
        &format!("return (async () => {{ {open} try {{ {body} }} finally {{ db.close(); }} }})();"),
    );
    let promise: Promise = f.call2(&JsValue::NULL, &id.into(), &path.into()).expect("the snippet runs").into();
    JsFuture::from(promise).await.expect("the snippet succeeds")
}

#[wasm_bindgen_test]
async fn chunks_are_stored_as_blobs_and_old_typed_array_chunks_still_read_in_wasm() {
    let (id, path) = ("test://store/manifest.json", "unet/model.safetensors");
    let store = Store::open().await.unwrap();
    let record = FileRecord {
        id: id.into(),
        path: path.into(),
        size: 10,
        sha256: String::new(),
        chunk_bytes: 6,
        stored: 6,
        complete: false,
        chunk_sha256: Vec::new(),
        repair: Vec::new(),
    };
    store.put_model(&ModelRecord { id: id.into(), manifest: "{}".into() }).await.unwrap();
    store.put_file(&FileRecord { stored: 0, ..record.clone() }).await.unwrap();
    store.put_chunk(&record, 0, &[1, 2, 3, 4, 5, 6]).await.unwrap();
    let kind = raw(
        "const v = await req(db.transaction('chunks').objectStore('chunks').get([id, path, 0]));
         return Object.prototype.toString.call(v);",
        id,
        path,
    )
    .await;
    assert_eq!(kind.as_string().as_deref(), Some("[object Blob]"));
    assert_eq!(store.chunk(id, path, 0).await.unwrap(), [1, 2, 3, 4, 5, 6]);

    // A chunk as the store wrote them before: a Uint8Array value.
    raw(
        "await req(db.transaction('chunks', 'readwrite').objectStore('chunks').put(new Uint8Array([7, 8, 9, 10]), [id, path, 1]));",
        id,
        path,
    )
    .await;
    assert_eq!(store.chunk(id, path, 1).await.unwrap(), [7, 8, 9, 10]);

    // Reads issued together come back in order, each its own chunk, whatever the value's kind.
    let (a, b) = (store.chunk_soon(id, path, 1, None).unwrap(), store.chunk_soon(id, path, 0, None).unwrap());
    assert_eq!(b.await.unwrap().to_vec(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(a.await.unwrap().to_vec(), [7, 8, 9, 10]);

    // A missing chunk is a typed error, not a panic or an empty chunk.
    let missing = store.chunk(id, path, 2).await.unwrap_err();
    assert!(matches!(missing, websd::Error::NotStored(_)), "{missing:?}");

    store.delete_model(id).await.unwrap();
    assert!(matches!(store.chunk(id, path, 0).await, Err(websd::Error::NotStored(_))));
}

/// The store's own hashing (crypto.subtle), checked against a known digest first.
async fn sha256_hex(bytes: &[u8]) -> String {
    websd::web::store::sha256_hex(&js_sys::Uint8Array::from(bytes)).await.unwrap()
}

/// A verified file's chunk read with its check: a chunk that went missing, came back short or has a
/// flipped byte is `Damaged` (never a wrong or short read), `mark_damaged` queues it for repair, and
/// a write for a model deleted meanwhile is refused (nothing written).
#[wasm_bindgen_test]
async fn damaged_chunks_are_caught_and_writes_after_a_delete_are_refused_in_wasm() {
    let (id, path) = ("test://damaged/manifest.json", "unet/model.safetensors");
    assert_eq!(sha256_hex(b"abc").await, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let store = Store::open().await.unwrap();
    let chunks: [&[u8]; 2] = [&[1, 2, 3, 4], &[5, 6, 7]];
    let mut record = FileRecord {
        id: id.into(),
        path: path.into(),
        size: 7,
        sha256: String::new(),
        chunk_bytes: 4,
        stored: 0,
        complete: false,
        chunk_sha256: Vec::new(),
        repair: Vec::new(),
    };
    store.put_model(&ModelRecord { id: id.into(), manifest: "{}".into() }).await.unwrap();
    store.put_file(&record).await.unwrap();
    for (index, bytes) in chunks.iter().enumerate() {
        record.stored += bytes.len() as u64;
        record.chunk_sha256.push(sha256_hex(bytes).await);
        store.put_chunk(&record, index as u64, bytes).await.unwrap();
    }
    record.complete = true;
    store.update_file(&record).await.unwrap();
    assert!(record.chunks_verifiable());
    let read = |index: u64| store.chunk_soon(id, path, index, record.chunk_check(index)).unwrap();
    assert_eq!(read(0).await.unwrap().to_vec(), [1, 2, 3, 4]);
    assert_eq!(read(1).await.unwrap().to_vec(), [5, 6, 7]);

    // A flipped byte, a short chunk, a missing chunk.
    let damage = [
        "await req(db.transaction('chunks', 'readwrite').objectStore('chunks').put(new Blob([new Uint8Array([1, 2, 3, 5])]), [id, path, 0]));",
        "await req(db.transaction('chunks', 'readwrite').objectStore('chunks').put(new Blob([new Uint8Array([1, 2, 3])]), [id, path, 0]));",
        "await req(db.transaction('chunks', 'readwrite').objectStore('chunks').delete([id, path, 0]));",
    ];
    for (snippet, expected) in damage.iter().zip(["has sha256", "has 3 bytes, 4 expected", "is missing"]) {
        raw(snippet, id, path).await;
        let err = read(0).await.unwrap_err();
        assert!(matches!(&err, websd::Error::Damaged(m) if m.contains(expected)), "{err:?}");
        assert_eq!(err.code(), "damaged");
    }
    store.mark_damaged(id, path, 0).await.unwrap();
    store.mark_damaged(id, path, 0).await.unwrap();
    let marked = store.file(id, path).await.unwrap().unwrap();
    assert_eq!((marked.complete, marked.repair.clone(), marked.stored), (false, vec![0], 7));

    // Deleted (as from another tab): the download's next writes are refused and write nothing.
    store.delete_model(id).await.unwrap();
    let err = store.put_chunk(&record, 0, chunks[0]).await.unwrap_err();
    assert!(matches!(&err, websd::Error::NotStored(m) if m.contains("deleted")), "{err:?}");
    assert!(matches!(store.update_file(&record).await, Err(websd::Error::NotStored(_))));
    assert!(matches!(store.put_file(&record).await, Err(websd::Error::NotStored(_))), "no record re-created");
    assert!(matches!(store.reset_file(&record).await, Err(websd::Error::NotStored(_))));
    assert!(store.file(id, path).await.unwrap().is_none());
    assert!(matches!(store.chunk(id, path, 0).await, Err(websd::Error::NotStored(_))));
}

/// What an adapter measured ([`websd::kernels::tune`]) survives the worker: stored per adapter, read
/// back whole; an adapter with nothing stored reads as none.
#[wasm_bindgen_test]
async fn kernel_picks_are_stored_per_adapter_in_wasm() {
    use websd::kernels::conv2d::{Block, Tiling};
    use websd::kernels::norm::Layout;
    use websd::kernels::tune::{AttentionPick, AttentionShape, ConvPick, ConvShape, Picks};
    use websd::kernels::tune::{GegluPick, GegluShape, LinearPick, LinearShape, NormPick, NormShape};
    let store = Store::open().await.unwrap();
    let shape = |c_out| ConvShape {
        batch: 2,
        c_in: 320,
        height: 64,
        width: 64,
        c_out,
        kernel: [3, 3],
        stride: 1,
        padding: [1; 4],
        f16: true,
    };
    let attention = AttentionShape {
        batch: 2,
        heads: 8,
        queries: 4096,
        keys: 77,
        head_dim: 40,
        value_dim: 40,
        f16: true,
        upcast: false,
    };
    let picks = Picks {
        conv: vec![
            (shape(320), ConvPick::Tiled(Tiling { bm: 128, bn: 128, ..Tiling::SMALL })),
            (shape(640), ConvPick::Lanes(Block { ch: 8, rows: 4, cols: 8, lanes: 8 })),
            (shape(4), ConvPick::Burn),
        ],
        attention: vec![(attention, AttentionPick::Matmul)],
        linear: vec![
            (LinearShape { rows: 8192, d_in: 320, d_out: 2560, f16: true }, LinearPick::Lanes { rows: 8, cols: 32 }),
            (LinearShape { rows: 2, d_in: 320, d_out: 1280, f16: true }, LinearPick::Burn),
        ],
        norm: vec![
            (
                NormShape::Group { batch: 2, channels: 320, pixels: 4096, groups: 32, silu: true, f16: true },
                NormPick::Ours(Layout::Workgroup),
            ),
            (NormShape::Layer { rows: 8192, features: 320, f16: true }, NormPick::Burn),
        ],
        geglu: vec![(GegluShape { rows: 8192, inner: 1280, f16: true }, GegluPick::Ours)],
    };
    store.put_kernel_picks("test adapter | Vulkan | 1.0", &picks).await.unwrap();
    assert_eq!(store.kernel_picks("test adapter | Vulkan | 1.0").await.unwrap(), picks);
    assert_eq!(store.kernel_picks("another adapter").await.unwrap(), Picks::default());
}
