//! The worker slice in a real browser: WebGPU in a dedicated worker, against Flex on the CPU; the
//! engine's request handling (the `_in_wasm` tests need no GPU).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use websd::protocol::Event;

#[wasm_bindgen_test]
async fn webgpu_adapter_is_available_in_a_worker() {
    console_error_panic_hook::set_once();
    let (_, info) = websd::gpu::wgpu_device().await.expect("WebGPU adapter in a dedicated worker");
    console_log!("adapter: {info:?}");
    assert_eq!(info.backend, "BrowserWebGpu");
    // The WebGPU spec's minimum for maxStorageBufferBindingSize is 128 MiB.
    assert!(info.limits.max_storage_buffer_binding_size >= 128 << 20, "{info:?}");
}

#[wasm_bindgen_test]
async fn probe_on_webgpu_matches_flex() {
    let (gpu, _) = websd::gpu::wgpu_device().await.expect("WebGPU adapter");
    let report = websd::probe::self_test(&gpu, js_sys::Date::now).await.expect("probe runs");
    console_log!("self-test: {report:?}");
    assert!(report.max_abs_diff <= 1e-4, "WebGPU vs Flex max abs diff {}", report.max_abs_diff);
    // No kernel may be rejected by the device (autotune candidates once were, and then got picked).
    assert_eq!(report.gpu_errors, 0, "{report:?}");
    assert!(report.passed);
}

/// Sends one request object through the engine as the worker script does and returns the event.
async fn roundtrip(request: &str) -> Event {
    roundtrip_with(request, |_| {}).await
}

/// [`roundtrip`], calling `after_handle` with the engine right after `handle` returns, before the
/// request's future first runs.
async fn roundtrip_with(request: &str, after_handle: impl FnOnce(&websd::web::Engine)) -> Event {
    let events = Rc::new(RefCell::new(Vec::new()));
    let sink = events.clone();
    let post = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| sink.borrow_mut().push(ev));
    let engine = websd::web::Engine::new(post.as_ref().unchecked_ref::<js_sys::Function>().clone());
    let request = js_sys::JSON::parse(request).unwrap();
    let answer = engine.handle(request);
    after_handle(&engine);
    JsFuture::from(answer).await.expect("handle never rejects");
    let events = events.borrow();
    assert_eq!(events.len(), 1, "one event per request");
    serde_wasm_bindgen::from_value(events[0].clone()).expect("event matches the protocol")
}

#[wasm_bindgen_test]
async fn engine_reports_status_and_typed_errors() {
    match roundtrip(r#"{"type":"status"}"#).await {
        Event::Status { gpu } => assert!(gpu.limits.max_buffer_size > 0),
        other => panic!("expected status, got {other:?}"),
    }
    match roundtrip(r#"{"type":"selfTest"}"#).await {
        Event::SelfTest { report } => assert!(report.passed, "{report:?}"),
        other => panic!("expected selfTest, got {other:?}"),
    }
    match roundtrip(r#"{"type":"generateEverything"}"#).await {
        Event::Error { code, .. } => assert_eq!(code, "bad-request"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// worker.ts resumes a request queued while the wasm loaded, then the cancel that waited on the same
/// load: the cancel comes after `handle` but before the request's future first runs, and must stop it.
#[wasm_bindgen_test]
async fn a_cancel_right_after_handle_stops_that_request_in_wasm() {
    let location = js_sys::Reflect::get(&js_sys::global(), &"location".into()).unwrap();
    let origin = js_sys::Reflect::get(&location, &"origin".into()).unwrap().as_string().unwrap();
    // The test server's own page as the manifest: it answers 200 with a body that is no manifest, so
    // the request fails with bad-request unless it is cancelled (checked at every read of the body).
    let request = format!(r#"{{"type":"ensureModel","manifestUrl":"{origin}/","allowedOrigins":["{origin}"]}}"#);
    match roundtrip(&request).await {
        Event::Error { code, .. } => assert_eq!(code, "bad-request"),
        other => panic!("expected bad-request without a cancel, got {other:?}"),
    }
    match roundtrip_with(&request, |engine| engine.cancel()).await {
        Event::Cancelled { .. } => {}
        other => panic!("expected cancelled, got {other:?}"),
    }
}

/// Our GroupNorm + SiLU and LayerNorm kernels in both layouts on the browser's WebGPU against burn's
/// ops on Flex: the workgroup layout's barriers must pass Chromium's shader checks (uniform control
/// flow), and a CPU device uses it for blocks too long for one lane.
#[wasm_bindgen_test]
async fn norm_kernels_on_webgpu_match_flex() {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution, Tensor};
    use websd::kernels::norm::{Layout, group_norm, layer_norm};
    let (gpu, _) = websd::gpu::wgpu_device().await.expect("WebGPU adapter");
    let cpu = Device::flex();
    let x = Tensor::<4>::random([2, 64, 9, 7], Distribution::Normal(2.0, 3.0), &cpu);
    let mut norm = burn::nn::GroupNormConfig::new(32, 64).init(&cpu);
    let gamma = Tensor::<1>::random([64], Distribution::Normal(1.0, 0.5), &cpu);
    let beta = Tensor::<1>::random([64], Distribution::Normal(0.0, 0.5), &cpu);
    norm.gamma = Some(burn::module::Param::from_tensor(gamma.clone()));
    norm.beta = Some(burn::module::Param::from_tensor(beta.clone()));
    let expected = silu(norm.forward(x.clone())).into_data().try_to_vec::<f32>().unwrap();
    let tokens = x.clone().reshape([2, 63, 64]);
    let ln_expected = burn::tensor::module::layer_norm(tokens.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let on_gpu1 = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &gpu);
    let (gamma, beta) = (on_gpu1(&gamma), on_gpu1(&beta));
    let x_gpu = Tensor::<4>::from_data(x.to_data(), &gpu);
    let tokens_gpu = Tensor::<3>::from_data(tokens.to_data(), &gpu);
    let max_diff = |a: Vec<f32>, b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    for layout in [Layout::Workgroup, Layout::Lane] {
        let ours = group_norm(&x_gpu, 32, Some((&gamma, &beta)), 1e-5, true, layout).expect("a WebGPU tensor");
        let diff = max_diff(ours.into_data_async().await.unwrap().try_to_vec::<f32>().unwrap(), &expected);
        console_log!("group norm + silu {layout:?}: max abs diff {diff:e}");
        assert!(diff <= 1e-4, "group norm {layout:?}: {diff}");
        let ours = layer_norm(&tokens_gpu, Some((&gamma, &beta)), 1e-5, layout).expect("a WebGPU tensor");
        let diff = max_diff(ours.into_data_async().await.unwrap().try_to_vec::<f32>().unwrap(), &ln_expected);
        console_log!("layer norm {layout:?}: max abs diff {diff:e}");
        assert!(diff <= 1e-4, "layer norm {layout:?}: {diff}");
    }
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "WebGPU validation errors");
}

/// The tuner ([`websd::kernels::tune`]) in the browser's worker: each convolution candidate checked
/// against burn's output and timed with the worker's clock through asynchronous readbacks, the fastest
/// picked; the models' convolution then runs the pick, with burn's numerics; the attention's three
/// ways measured the same way.
#[wasm_bindgen_test]
async fn tuned_convolution_on_webgpu_matches_flex() {
    use burn::tensor::{Device, Distribution, Tensor};
    use websd::kernels::conv2d::Add;
    use websd::kernels::tune::{self, ConvShape};
    let (gpu, _) = websd::gpu::wgpu_device().await.expect("WebGPU adapter");
    let cpu = Device::flex();
    // 67 channels (126 pixels): a tile of 128 x 128, so the candidates include the vectorized kernel,
    // read ahead or not, compiled by Chromium's WGSL compiler as a browser on a GPU compiles them.
    let (b, c_in, c_out, h, w) = (2, 13, 67, 9, 7);
    let shape = ConvShape {
        batch: b,
        c_in,
        height: h,
        width: w,
        c_out,
        kernel: [3, 3],
        stride: 1,
        padding: [1; 4],
        f16: false,
    };
    let found = tune::measure_conv(shape, &gpu, websd::gpu::uncaptured_errors).await.expect("read back");
    console_log!("{shape:?}: {:?} at {:.2} GFLOP/s, {:?}", found.pick, found.gflops, found.times_ms);
    assert_eq!(found.times_ms.len(), tune::candidates(&shape).len());
    let times: Vec<f64> = found.times_ms.iter().map(|(_, t)| t.expect("checked and timed")).collect();
    assert!(times.iter().all(|t| t.is_finite() && *t > 0.0), "{times:?}");
    let fastest = times.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(found.times_ms.iter().find(|(_, t)| *t == Some(fastest)).unwrap().0, found.pick);

    let x = Tensor::<4>::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), &cpu);
    let weight = Tensor::<4>::random([c_out, c_in, 3, 3], Distribution::Normal(0.0, 0.2), &cpu);
    let options = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let expected = burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options);
    let expected = expected.into_data().try_to_vec::<f32>().unwrap();
    tune::set_conv_pick(shape, found.pick);
    let (x, weight) = (Tensor::<4>::from_data(x.to_data(), &gpu), Tensor::<4>::from_data(weight.to_data(), &gpu));
    let ours = websd::models::conv2d_with(x, &weight, None, 1, [1; 4], Add::NONE);
    let ours = ours.into_data_async().await.unwrap().try_to_vec::<f32>().unwrap();
    let diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    console_log!("the pick {:?}: max abs diff {diff:e}", found.pick);
    assert!(diff <= 1e-4, "{diff}");

    // Attention the same way: burn's op (its browser fallback in query blocks), ours, matmul + softmax.
    use websd::kernels::tune::AttentionShape;
    let shape = AttentionShape {
        batch: 2,
        heads: 3,
        queries: 45,
        keys: 45,
        head_dim: 8,
        value_dim: 8,
        f16: false,
        upcast: false,
    };
    let found = websd::models::attention::measure_attention(shape, &gpu, websd::gpu::uncaptured_errors)
        .await
        .expect("read back");
    console_log!("{shape:?}: {:?} at {:.2} GFLOP/s, {:?}", found.pick, found.gflops, found.times_ms);
    let times: Vec<f64> = found.times_ms.iter().map(|(_, t)| t.expect("checked and timed")).collect();
    assert_eq!(times.len(), 3);
    let fastest = times.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(found.times_ms.iter().find(|(_, t)| *t == Some(fastest)).unwrap().0, found.pick);
    assert_eq!(websd::gpu::uncaptured_errors(), 0, "WebGPU validation errors");
}
