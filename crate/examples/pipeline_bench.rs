//! Times whole pipeline runs on the Flex CPU device (model already loaded), to compare with diffusers':
//! `cargo run --release --example pipeline_bench -- MODEL_DIR STEPS SIZE SCHEDULER [REFERENCE.safetensors NAME]`
//! e.g. `tests/fixtures/tiny-sd 8 64 ddim` or `<sd15-random> 2 128 ddim <sd15-random-io> ddim2_128px_image`.
//! With a reference, also prints the max abs diff of the image against it.

use std::time::Instant;

use burn::tensor::Device;
use websd::pipeline::{GenerateRequest, StableDiffusion};
use websd::schedulers::SchedulerKind;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = Device::flex();
    let t = Instant::now();
    let model = StableDiffusion::load_dir(std::path::Path::new(&args[1]), None, &device).unwrap();
    println!("load: {:.2} s", t.elapsed().as_secs_f64());
    let size: usize = args[3].parse().unwrap();
    let request = GenerateRequest {
        prompt: "a photo of an astronaut riding a horse".into(),
        negative_prompt: "blurry".into(),
        steps: args[2].parse().unwrap(),
        seed: 0,
        width: Some(size),
        height: Some(size),
        scheduler: Some(SchedulerKind::from_name(&args[4]).unwrap()),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let t = Instant::now();
        let out = model.generate(&request, false, |_| true).unwrap();
        let pixels: Vec<f32> = out.images.clone().into_data().try_to_vec::<f32>().unwrap();
        times.push(t.elapsed().as_secs_f64());
        last = Some(pixels);
    }
    println!("generate: first {:.3} s, then {:.3?} s", times[0], &times[1..]);
    if let (Some(path), Some(name)) = (args.get(5), args.get(6)) {
        let mut reader = websd::weights::SafetensorsReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let (_, want) = reader.read_f32(name).unwrap();
        let ours = last.unwrap();
        let diff = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("image vs {name}: max abs diff {diff:e}");
    }
}
