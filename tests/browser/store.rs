//! The weight store in IndexedDB: chunks are written as Blobs (read back with one copy), and chunks
//! that stores written before hold as typed arrays still read.
#![cfg(target_arch = "wasm32")]

use js_sys::{Function, Promise};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use websd::web::store::{FileRecord, Store};

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
    };
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
    let (a, b) = (store.chunk_soon(id, path, 1).unwrap(), store.chunk_soon(id, path, 0).unwrap());
    assert_eq!(b.await.unwrap().to_vec(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(a.await.unwrap().to_vec(), [7, 8, 9, 10]);

    // A missing chunk is a typed error, not a panic or an empty chunk.
    let missing = store.chunk(id, path, 2).await.unwrap_err();
    assert!(matches!(missing, websd::Error::NotStored(_)), "{missing:?}");

    store.delete_model(id).await.unwrap();
    assert!(matches!(store.chunk(id, path, 0).await, Err(websd::Error::NotStored(_))));
}
