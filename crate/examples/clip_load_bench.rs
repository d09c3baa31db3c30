//! Measures loading and running a full-size CLIP-L text encoder (SD 1.5's: 123M parameters) on the
//! Flex CPU device: peak resident memory while loading the fp16 file tensor by tensor, against the
//! file size and the largest tensor, and the forward time for a 2x77 batch.
//!
//! `cargo run --release --example clip_load_bench` (writes a synthetic weight file to the temp dir).

use std::io::Write;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData, f16};
use websd::models::clip::ClipTextConfig;
use websd::rng::TorchRng;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let config = ClipTextConfig {
        vocab_size: 49408,
        hidden_size: 768,
        intermediate_size: 3072,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        max_position_embeddings: 77,
        hidden_act: "quick_gelu".into(),
        layer_norm_eps: 1e-5,
        eos_token_id: 49407,
        projection_dim: 768,
    };
    let (d, ff) = (768usize, 3072usize);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.token_embedding.weight".into(), vec![49408, d]),
        ("embeddings.position_embedding.weight".into(), vec![77, d]),
        ("final_layer_norm.weight".into(), vec![d]),
        ("final_layer_norm.bias".into(), vec![d]),
    ];
    for i in 0..12 {
        let p = format!("encoder.layers.{i}");
        for n in ["layer_norm1", "layer_norm2"] {
            tensors.push((format!("{p}.{n}.weight"), vec![d]));
            tensors.push((format!("{p}.{n}.bias"), vec![d]));
        }
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            tensors.push((format!("{p}.self_attn.{n}.weight"), vec![d, d]));
            tensors.push((format!("{p}.self_attn.{n}.bias"), vec![d]));
        }
        tensors.extend([
            (format!("{p}.mlp.fc1.weight"), vec![ff, d]),
            (format!("{p}.mlp.fc1.bias"), vec![ff]),
            (format!("{p}.mlp.fc2.weight"), vec![d, ff]),
            (format!("{p}.mlp.fc2.bias"), vec![d]),
        ]);
    }

    // Write an fp16 safetensors file tensor by tensor (small values keep the activations sane).
    let path = std::env::temp_dir().join("websd-clip-l-synthetic.fp16.safetensors");
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&header).unwrap();
    let mut rng = TorchRng::new(0);
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let scale = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.starts_with("final_layer_norm.weight")
        {
            0.0
        } else {
            0.02
        };
        let offset = if scale == 0.0 { 1.0 } else { 0.0 };
        let bytes: Vec<u8> =
            rng.randn(n).into_iter().flat_map(|x| f16::from_f32(offset + scale * x).to_le_bytes()).collect();
        file.write_all(&bytes).unwrap();
    }
    drop(file);
    let file_len = std::fs::metadata(&path).unwrap().len();
    let largest = 49408 * 768 * 2;

    // Reset the peak-RSS counter (Linux: clear_refs 5), then load.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let device = Device::flex();
    let base = rss_kib("VmRSS:");
    let t0 = Instant::now();
    let model = config.load(std::fs::File::open(&path).unwrap(), &device).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    let peak = rss_kib("VmHWM:");
    let after = rss_kib("VmRSS:");
    println!(
        "file {:.1} MiB (fp16), largest tensor {:.1} MiB fp16 / {:.1} MiB f32; load {load_s:.2} s",
        file_len as f64 / 1048576.0,
        largest as f64 / 1048576.0,
        largest as f64 * 2.0 / 1048576.0
    );
    println!(
        "RSS before {:.0} MiB, peak during load {:.0} MiB, after {:.0} MiB: peak extra {:.0} MiB, of which the f32 weights themselves are {:.0} MiB",
        base as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        (peak - base) as f64 / 1024.0,
        file_len as f64 * 2.0 / 1048576.0
    );

    let ids: Vec<i64> = (0..2 * 77).map(|i| if i % 77 == 10 { 49407 } else { (i * 37 % 49000) as i64 }).collect();
    let input = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 77]), &device);
    let _ = model.forward(input()).last_hidden_state.into_data();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = model.forward(input()).last_hidden_state.into_data();
        times.push(t.elapsed().as_secs_f64());
        assert!(out.try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
    times.sort_by(f64::total_cmp);
    println!("CLIP-L forward, batch 2 x 77 tokens, Flex CPU: median {:.3} s (min {:.3} s)", times[2], times[0]);
    let _ = std::fs::remove_file(path);
}
