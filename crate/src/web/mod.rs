//! The worker side of the browser app (wasm32 only): `web/src/worker.ts` creates an [`Engine`] and
//! forwards every message from the page to [`Engine::handle`]; the engine answers through the callback
//! it was given, with [`Event`]s serialised by serde-wasm-bindgen.

use std::rc::Rc;

use js_sys::{Function, Promise};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::Error;
use crate::protocol::{Event, Request};

/// Installs the panic hook once the module is instantiated, so a Rust panic reaches the console with
/// its message (the worker turns the resulting exception into an `Error` event).
#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Converts an [`Event`] to the plain JS object the page receives (maps become objects).
fn to_js(event: &Event) -> JsValue {
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true);
    event.serialize(&serializer).unwrap_or_else(|e| JsValue::from_str(&e.to_string()))
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The engine living in the dedicated worker (`web/src/worker.ts` hands it one request at a time).
#[wasm_bindgen]
pub struct Engine {
    post: Rc<Function>,
}

#[wasm_bindgen]
impl Engine {
    /// `post(event)` is called for every event (the worker passes `self.postMessage`).
    #[wasm_bindgen(constructor)]
    pub fn new(post: Function) -> Engine {
        Engine { post: Rc::new(post) }
    }

    /// Handles one request object (see `web/src/protocol.ts`). Never rejects: failures, including a
    /// malformed request, are posted as `Error` events.
    pub fn handle(&self, request: JsValue) -> Promise {
        let post = self.post.clone();
        future_to_promise(async move {
            let event = match serde_wasm_bindgen::from_value::<Request>(request) {
                Ok(request) => run(request).await.unwrap_or_else(Event::from),
                Err(e) => Error::BadRequest(e.to_string()).into(),
            };
            post.call1(&JsValue::NULL, &to_js(&event))?;
            Ok(JsValue::UNDEFINED)
        })
    }
}

async fn run(request: Request) -> Result<Event, Error> {
    match request {
        Request::Status => {
            let (_, gpu) = crate::gpu::wgpu_device().await?;
            Ok(Event::Status { gpu })
        }
        Request::SelfTest => {
            let (gpu, _) = crate::gpu::wgpu_device().await?;
            Ok(Event::SelfTest { report: crate::probe::self_test(&gpu, now_ms).await? })
        }
    }
}
