//! Hostile and broken inputs (issue 20): a data-driven table of broken model folders (a copy of
//! `tests/fixtures/tiny-sd` with one file altered), broken requests, manifests, protocol messages and
//! `sd generate` command lines. Each case must end in its typed error code (`websd::Error::code()`, via
//! the conversions the worker uses) with a message naming what is wrong, quickly: every check runs
//! before anything is allocated from the broken numbers. After the table, a valid request on the
//! intact model still generates.
//!
//! `WEBSD_BAD_INPUT_TABLE=path` writes the observed table as markdown; `--nocapture` prints it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::fixtures_dir;
use serde_json::{Map, Value, json};
use websd::Error;
use websd::config::{AutoencoderKLConfig, UNet2DConditionConfig, parse};
use websd::manifest::Manifest;
use websd::model_folder::{check_components, check_text_encoders};
use websd::models::clip::ClipTextConfig;
use websd::pipeline::{GenerateRequest, Image, PipelineError, StableDiffusion};
use websd::schedulers::{SchedulerConfig, SchedulerKind};
use websd::tokenizer::{ClipTokenizer, TokenizerFiles};
use websd::weights::Variant;

const UNET: &str = "unet/config.json";
const VAE: &str = "vae/config.json";
const TEXT: &str = "text_encoder/config.json";
const SCHED: &str = "scheduler/scheduler_config.json";
const TOKENIZER_CONFIG: &str = "tokenizer/tokenizer_config.json";
const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";

/// A broken case fails within this, from the call on (the hostile counts used to run for minutes,
/// allocating).
const FAIL_WITHIN: Duration = Duration::from_secs(2);
/// `sd generate` cases: a process start, and for request errors the tiny model's load, then the error.
const CLI_WITHIN: Duration = Duration::from_secs(5);

/// How one file of the tiny model's copy is altered.
enum Edit {
    /// The JSON file, edited.
    Json(Box<dyn Fn(&mut Value)>),
    /// The file's bytes, rewritten.
    Bytes(Box<dyn Fn(Vec<u8>) -> Vec<u8>>),
    /// The file is left out.
    Remove,
}

/// What a case breaks.
enum Mutation {
    /// A copy of tiny-sd with these files altered, loaded by `StableDiffusion::load_dir`.
    Model(Vec<(&'static str, Edit)>),
    /// `sd generate` on a copy of tiny-sd altered so, with these extra arguments.
    Cli(Vec<(&'static str, Edit)>, Vec<String>),
    /// A request on the intact model: validated, and generated when valid.
    Request(Box<dyn Fn(&mut GenerateRequest)>),
    /// A `--scheduler` / `settings.scheduler` name.
    SchedulerName(&'static str),
    /// An init image or mask as the worker receives it (width, height, RGBA bytes).
    Rgba(usize, usize, usize),
    /// A worker protocol message (JSON).
    Protocol(&'static str),
    /// A model manifest (JSON), read as `EnsureModel` reads a fetched one, then selected as a load does.
    Manifest(String),
}

struct Case {
    name: &'static str,
    category: &'static str,
    mutation: Mutation,
    /// `Error::code()`, `ok` for inputs that must work, `exit 2` for `sd generate`.
    code: &'static str,
    /// A fragment of the message (of stderr for `sd generate`).
    message: &'static str,
}

fn case(
    name: &'static str,
    category: &'static str,
    mutation: Mutation,
    code: &'static str,
    message: &'static str,
) -> Case {
    Case { name, category, mutation, code, message }
}

/// `file`'s `key` set to `value`.
fn set(file: &'static str, key: &'static str, value: Value) -> Mutation {
    Mutation::Model(vec![(file, Edit::Json(Box::new(move |v: &mut Value| v[key] = value.clone())))])
}

/// `file`'s `key` removed.
fn unset(file: &'static str, key: &'static str) -> Mutation {
    Mutation::Model(vec![(
        file,
        Edit::Json(Box::new(move |v: &mut Value| {
            v.as_object_mut().unwrap().remove(key);
        })),
    )])
}

/// `files` left out.
fn remove(files: &[&'static str]) -> Mutation {
    Mutation::Model(files.iter().map(|&f| (f, Edit::Remove)).collect())
}

/// `file` replaced by `bytes`.
fn replace(file: &'static str, bytes: &'static [u8]) -> Mutation {
    Mutation::Model(vec![(file, Edit::Bytes(Box::new(move |_: Vec<u8>| bytes.to_vec())))])
}

/// `file`'s text with `from` replaced by `to`.
fn text(file: &'static str, from: &'static str, to: &'static str) -> Mutation {
    Mutation::Model(vec![(
        file,
        Edit::Bytes(Box::new(move |b: Vec<u8>| {
            let s = String::from_utf8(b).unwrap();
            assert!(s.contains(from), "{file} has no {from:?}");
            s.replace(from, to).into_bytes()
        })),
    )])
}

/// The tokenizer as `vocab.json` + `merges.txt` (no `tokenizer.json`), with `file` replaced by `bytes`
/// (`None`: left out).
fn bpe_files(file: &'static str, bytes: Option<&'static [u8]>) -> Mutation {
    let edit = match bytes {
        Some(bytes) => Edit::Bytes(Box::new(move |_: Vec<u8>| bytes.to_vec())),
        None => Edit::Remove,
    };
    Mutation::Model(vec![("tokenizer/tokenizer.json", Edit::Remove), (file, edit)])
}

/// The fp32 U-Net file with its bytes rewritten.
fn weights_bytes(f: impl Fn(Vec<u8>) -> Vec<u8> + 'static) -> Mutation {
    Mutation::Model(vec![(UNET_WEIGHTS, Edit::Bytes(Box::new(f)))])
}

/// The fp32 U-Net file with its header edited (the data section kept).
fn weights_header(f: impl Fn(&mut Map<String, Value>) + 'static) -> Mutation {
    weights_bytes(move |bytes| {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        f(&mut header);
        let json = serde_json::to_vec(&header).unwrap();
        [&(json.len() as u64).to_le_bytes()[..], &json, &bytes[8 + n..]].concat()
    })
}

/// `sd generate` on the model altered by `m` (a [`Mutation::Model`]) with `args`.
fn cli(m: Mutation, args: &[&str]) -> Mutation {
    let Mutation::Model(edits) = m else { panic!("cli() takes a model mutation") };
    Mutation::Cli(edits, args.iter().map(|s| s.to_string()).collect())
}

fn request(f: impl Fn(&mut GenerateRequest) + 'static) -> Mutation {
    Mutation::Request(Box::new(f))
}

fn rgb(width: usize, height: usize) -> Image {
    Image { width, height, channels: 3, data: vec![0.5; width * height * 3] }
}

fn gray(width: usize, height: usize) -> Image {
    Image { width, height, channels: 1, data: vec![1.0; width * height] }
}

/// The tiny model's manifest with `f` applied to its JSON.
fn manifest(f: impl Fn(&mut Value)) -> Mutation {
    let sha = "0".repeat(64);
    let files = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    .map(|p| json!({"path": p, "size": 10, "sha256": sha}));
    let mut m = json!({ "files": files });
    f(&mut m);
    Mutation::Manifest(m.to_string())
}

/// The table. Adding a case is one line (kept so by `rustfmt::skip`).
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Mutation::{Protocol, Rgba, SchedulerName};
    let many = |n: usize| json!(vec![0.01; n]);
    vec![
        // U-Net config.
        case("norm_num_groups 7", "unet config", set(UNET, "norm_num_groups", json!(7)), "model", "unet/config.json: norm_num_groups 7 does not divide block_out_channels[0] 32"),
        case("norm_num_groups 0", "unet config", set(UNET, "norm_num_groups", json!(0)), "model", "unet/config.json: norm_num_groups 0 is out of range"),
        case("layers_per_block 1e7", "unet config", set(UNET, "layers_per_block", json!(10_000_000)), "model", "unet/config.json: layers_per_block 10000000 is out of range"),
        case("layers_per_block list too short", "unet config", set(UNET, "layers_per_block", json!([2])), "model", "layers_per_block has 1 entries for 2 blocks"),
        case("layers_per_block 0", "unet config", set(UNET, "layers_per_block", json!(0)), "model", "layers_per_block 0 is out of range"),
        case("transformer_layers_per_block 1e6", "unet config", set(UNET, "transformer_layers_per_block", json!(1_000_000)), "model", "transformer_layers_per_block 1000000 is out of range"),
        case("sample_size 1e9", "unet config", set(UNET, "sample_size", json!(1_000_000_000)), "model", "unet/config.json: sample_size 1000000000 is out of range"),
        case("sample_size x VAE factor > 4096 px", "unet config", set(UNET, "sample_size", json!(4000)), "model", "sample_size 4000 x the VAE's scale factor 2 is 8000 px"),
        case("block_out_channels empty", "unet config", set(UNET, "block_out_channels", json!([])), "model", "the number of block_out_channels 0 is out of range"),
        case("block_out_channels huge", "unet config", set(UNET, "block_out_channels", json!([32, 1_000_000_000u64])), "model", "block_out_channels[1] 1000000000 is out of range"),
        case("block_out_channels zero", "unet config", set(UNET, "block_out_channels", json!([0, 64])), "model", "block_out_channels[0] 0 is out of range"),
        case("block_out_channels 100 levels", "unet config", set(UNET, "block_out_channels", json!(vec![32; 100])), "model", "the number of block_out_channels 100 is out of range"),
        case("down_block_types count mismatch", "unet config", set(UNET, "down_block_types", json!(["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])), "model", "3 down_block_types and 2 up_block_types for 2 block_out_channels"),
        case("heads not dividing channels", "unet config", set(UNET, "attention_head_dim", json!(7)), "model", "attention_head_dim 7 (heads) does not divide block_out_channels[1] 64"),
        case("num_attention_heads 0", "unet config", set(UNET, "num_attention_heads", json!(0)), "model", "num_attention_heads 0 is out of range"),
        case("cross_attention_dim 0", "unet config", set(UNET, "cross_attention_dim", json!(0)), "model", "cross_attention_dim 0 is out of range"),
        case("cross_attention_dim huge", "unet config", set(UNET, "cross_attention_dim", json!(1u64 << 40)), "model", "cross_attention_dim 1099511627776 is out of range"),
        case("cross_attention_dim != text hidden_size", "unet config", set(UNET, "cross_attention_dim", json!(64)), "model", "unet/config.json: cross_attention_dim 64 differs from text_encoder/config.json's hidden_size 32"),
        case("in_channels 0", "unet config", set(UNET, "in_channels", json!(0)), "model", "in_channels 0 is out of range"),
        case("out_channels != latent_channels", "unet config", set(UNET, "out_channels", json!(3)), "model", "out_channels 3 differs from vae/config.json's latent_channels 4"),
        case("norm_eps negative", "unet config", set(UNET, "norm_eps", json!(-1.0)), "model", "norm_eps -1 is out of range"),
        case("freq_shift past half the width", "unet config", set(UNET, "freq_shift", json!(16)), "model", "freq_shift 16 is out of range"),
        case("downsample_padding 5", "unet config", set(UNET, "downsample_padding", json!(5)), "model", "downsample_padding 5 is out of range"),
        case("cross_attention_dim missing", "unet config", unset(UNET, "cross_attention_dim"), "model", "unet/config.json: missing field `cross_attention_dim`"),
        case("block_out_channels not a list", "unet config", set(UNET, "block_out_channels", json!("wide")), "model", "unet/config.json: invalid type"),
        case("not JSON", "unet config", replace(UNET, b"{\"sample_size\": 32,"), "model", "unet/config.json: EOF while parsing"),
        case("SDXL conditioning without its widths", "unet config", set(UNET, "addition_embed_type", json!("text_time")), "model", "addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim"),
        case("image conditioning (Kandinsky)", "unet config", set(UNET, "addition_embed_type", json!("image")), "unsupported", "addition_embed_type \"image\""),
        // VAE config.
        case("latent_channels 0", "vae config", set(VAE, "latent_channels", json!(0)), "model", "vae/config.json: latent_channels 0 is out of range"),
        case("scaling_factor 0", "vae config", set(VAE, "scaling_factor", json!(0.0)), "model", "vae/config.json: scaling_factor 0 is out of range"),
        case("scaling_factor 1e-300", "vae config", set(VAE, "scaling_factor", json!(1e-300)), "model", "vae/config.json: scaling_factor 1e-300 is out of range"),
        case("scaling_factor negative", "vae config", set(VAE, "scaling_factor", json!(-0.18215)), "model", "scaling_factor -0.18215 is out of range"),
        case("norm_num_groups 7", "vae config", set(VAE, "norm_num_groups", json!(7)), "model", "vae/config.json: norm_num_groups 7 does not divide block_out_channels[0] 32"),
        case("layers_per_block 1e7", "vae config", set(VAE, "layers_per_block", json!(10_000_000)), "model", "vae/config.json: layers_per_block 10000000 is out of range"),
        case("20 levels", "vae config", set(VAE, "block_out_channels", json!(vec![32; 20])), "model", "the number of block_out_channels 20 is out of range"),
        case("4-channel images", "vae config", set(VAE, "out_channels", json!(4)), "model", "vae/config.json: out_channels 4 is out of range (expected 3 to 3)"),
        // Text encoder config.
        case("num_hidden_layers 1e7", "text encoder config", set(TEXT, "num_hidden_layers", json!(10_000_000)), "model", "text_encoder/config.json: num_hidden_layers 10000000 is out of range"),
        case("hidden_size 0", "text encoder config", set(TEXT, "hidden_size", json!(0)), "model", "hidden_size 0 is out of range"),
        case("heads not dividing hidden_size", "text encoder config", set(TEXT, "num_attention_heads", json!(5)), "model", "num_attention_heads 5 does not divide hidden_size 32"),
        case("num_attention_heads 0", "text encoder config", set(TEXT, "num_attention_heads", json!(0)), "model", "num_attention_heads 0 is out of range"),
        case("intermediate_size 0", "text encoder config", set(TEXT, "intermediate_size", json!(0)), "model", "intermediate_size 0 is out of range"),
        case("intermediate_size 1e9", "text encoder config", set(TEXT, "intermediate_size", json!(1_000_000_000)), "model", "intermediate_size 1000000000 is out of range"),
        case("vocab smaller than the tokenizer's ids", "text encoder config", Mutation::Model(vec![(TEXT, Edit::Json(Box::new(|v: &mut Value| { v["vocab_size"] = json!(1000); v["eos_token_id"] = json!(2); })))]), "model", "vocab_size 1000 is smaller than the tokenizer's 49408 token ids"),
        case("eos_token_id past the vocab", "text encoder config", set(TEXT, "eos_token_id", json!(1_000_000)), "model", "eos_token_id 1000000 is not below vocab_size 49408"),
        case("max_position_embeddings < model_max_length", "text encoder config", set(TEXT, "max_position_embeddings", json!(50)), "model", "model_max_length 77 is more than text_encoder/config.json's max_position_embeddings 50"),
        case("max_position_embeddings 1e9", "text encoder config", set(TEXT, "max_position_embeddings", json!(1_000_000_000)), "model", "max_position_embeddings 1000000000 is out of range"),
        case("hidden_act relu", "text encoder config", set(TEXT, "hidden_act", json!("relu")), "model", "hidden_act \"relu\" is not supported"),
        case("layer_norm_eps 0", "text encoder config", set(TEXT, "layer_norm_eps", json!(0.0)), "model", "layer_norm_eps 0 is out of range"),
        case("vocab_size missing", "text encoder config", unset(TEXT, "vocab_size"), "model", "text_encoder/config.json: missing field `vocab_size`"),
        // Scheduler config.
        case("num_train_timesteps 0", "scheduler config", set(SCHED, "num_train_timesteps", json!(0)), "model", "scheduler/scheduler_config.json: num_train_timesteps 0 is out of range (expected 1 to 100000)"),
        case("num_train_timesteps 4e9", "scheduler config", set(SCHED, "num_train_timesteps", json!(4_000_000_000u64)), "model", "num_train_timesteps 4000000000 is out of range"),
        case("num_train_timesteps not a number", "scheduler config", set(SCHED, "num_train_timesteps", json!("many")), "model", "field num_train_timesteps must be a non-negative integer"),
        case("beta_start > beta_end", "scheduler config", set(SCHED, "beta_start", json!(0.02)), "model", "beta_start 0.02 is above beta_end 0.012"),
        case("negative beta_start", "scheduler config", set(SCHED, "beta_start", json!(-0.1)), "model", "beta_start -0.1 is out of range"),
        case("beta_end 1.5", "scheduler config", set(SCHED, "beta_end", json!(1.5)), "model", "beta_end 1.5 is out of range"),
        case("NaN beta_start", "scheduler config", text(SCHED, "\"beta_start\": 0.00085", "\"beta_start\": NaN"), "model", "beta_start NaN is out of range"),
        case("trained_betas too few", "scheduler config", set(SCHED, "trained_betas", json!([0.1, 0.2])), "model", "trained_betas has 2 betas for 1000 training timesteps"),
        case("trained_betas entry 1.5", "scheduler config", Mutation::Model(vec![(SCHED, Edit::Json(Box::new(move |v: &mut Value| { v["trained_betas"] = many(1000); v["trained_betas"][5] = json!(1.5); })))]), "model", "trained_betas 1.5 (entry 5) is out of range"),
        case("steps_offset 1e12", "scheduler config", set(SCHED, "steps_offset", json!(1_000_000_000_000u64)), "model", "steps_offset 1000000000000 is not below num_train_timesteps 1000"),
        case("clip_sample_range 0", "scheduler config", set(SCHED, "clip_sample_range", json!(0.0)), "model", "clip_sample_range 0 must be a positive number"),
        case("not JSON", "scheduler config", replace(SCHED, b"[1, 2"), "model", "scheduler/scheduler_config.json: "),
        // Tokenizer files.
        case("vocab.json garbage", "tokenizer", bpe_files("tokenizer/vocab.json", Some(b"\x00\xffnot json")), "model", "tokenizer: vocab.json is invalid"),
        case("vocab.json empty", "tokenizer", bpe_files("tokenizer/vocab.json", Some(b"")), "model", "tokenizer: vocab.json is invalid"),
        case("vocab.json without the special tokens", "tokenizer", bpe_files("tokenizer/vocab.json", Some(b"{\"a</w>\": 0}")), "model", "tokenizer: vocab.json/merges.txt is invalid"),
        case("merges.txt garbage", "tokenizer", bpe_files("tokenizer/merges.txt", Some(b"#version: 0.2\nzq\xc3\x28 qz\n")), "model", "tokenizer: merges.txt is invalid"),
        case("merges.txt missing", "tokenizer", bpe_files("tokenizer/merges.txt", None), "model", "neither tokenizer.json nor vocab.json + merges.txt"),
        case("tokenizer.json garbage", "tokenizer", replace("tokenizer/tokenizer.json", b"{\"model\": 7}"), "model", "tokenizer: tokenizer.json is invalid"),
        case("no tokenizer files", "tokenizer", remove(&["tokenizer/tokenizer.json", "tokenizer/vocab.json", "tokenizer/merges.txt"]), "model", "neither tokenizer.json nor vocab.json + merges.txt"),
        case("tokenizer_config.json not JSON", "tokenizer", replace(TOKENIZER_CONFIG, b"model_max_length=77"), "model", "tokenizer: tokenizer_config.json is invalid"),
        case("pad token not in the vocab", "tokenizer", set("tokenizer/special_tokens_map.json", "pad_token", json!("<|nope|>")), "model", "the pad token \"<|nope|>\" is not in the vocabulary"),
        case("model_max_length past the positions", "tokenizer", set(TOKENIZER_CONFIG, "model_max_length", json!(100)), "model", "tokenizer/tokenizer_config.json: model_max_length 100 is more than text_encoder/config.json's max_position_embeddings 77"),
        // The U-Net's safetensors file.
        case("truncated", "weights", weights_bytes(|b| b[..b.len() / 2].to_vec()), "model", "unet: truncated safetensors data"),
        case("empty file", "weights", weights_bytes(|_| Vec::new()), "model", "unet: truncated safetensors data: 8 bytes needed, 0 available"),
        case("header length huge", "weights", weights_bytes(|mut b| { b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes()); b }), "model", "larger than the 100 MiB limit"),
        case("header not JSON", "weights", weights_bytes(|mut b| { b[8..16].copy_from_slice(b"not json"); b }), "model", "malformed safetensors header"),
        case("offsets overlapping", "weights", weights_header(|h| h["conv_in.bias"]["data_offsets"] = json!([128, 256])), "model", "not covered exactly"),
        case("offsets out of range", "weights", weights_header(|h| h["conv_in.weight"]["data_offsets"] = json!([128, 1u64 << 40])), "model", "tensor conv_in.weight"),
        case("offsets reversed", "weights", weights_header(|h| h["conv_in.bias"]["data_offsets"] = json!([128, 0])), "model", "tensor conv_in.bias"),
        case("size not matching the shape", "weights", weights_header(|h| h["conv_in.weight"]["shape"] = json!([32, 4, 3, 4])), "model", "tensor conv_in.weight"),
        case("integer dtype", "weights", weights_header(|h| h["conv_in.bias"]["dtype"] = json!("I32")), "model", "tensor conv_in.bias: dtype I32 cannot be read as f32"),
        case("unknown dtype", "weights", weights_header(|h| h["conv_in.bias"]["dtype"] = json!("Q4")), "model", "tensor conv_in.bias"),
        case("wrong shape for the config", "weights", weights_header(|h| h["conv_in.weight"]["shape"] = json!([32, 4, 9, 1])), "model", "tensor conv_in.weight has shape [32, 4, 9, 1], the config implies [32, 4, 3, 3]"),
        case("a tensor renamed", "weights", weights_header(|h| { let t = h.remove("conv_in.bias").unwrap(); h.insert("conv_in.bias_x".into(), t); }), "model", "missing tensors: conv_in.bias"),
        case("weights file missing", "weights", remove(&[UNET_WEIGHTS]), "model", "no fp32 safetensors weights"),
        // Requests on the intact model.
        case("steps 0", "request", request(|r| r.steps = 0), "invalid", "steps must be between 1 and 1000, got 0"),
        case("steps 1e6", "request", request(|r| r.steps = 1_000_000), "invalid", "steps must be between 1 and 1000"),
        case("guidance NaN", "request", request(|r| r.guidance = f32::NAN), "invalid", "guidance must be a number from 0 to 50, got NaN"),
        case("guidance negative", "request", request(|r| r.guidance = -3.0), "invalid", "guidance must be a number from 0 to 50, got -3"),
        case("guidance infinite", "request", request(|r| r.guidance = f32::INFINITY), "invalid", "guidance must be a number from 0 to 50, got inf"),
        case("guidance above the limit", "request", request(|r| r.guidance = 51.0), "invalid", "guidance must be a number from 0 to 50, got 51"),
        case("width not a multiple of 8", "request", request(|r| r.width = Some(12)), "invalid", "positive multiples of 8, got 12x64"),
        case("width 0", "request", request(|r| r.width = Some(0)), "invalid", "positive multiples of 8"),
        case("huge size", "request", request(|r| (r.width, r.height) = (Some(1 << 20), Some(1 << 20))), "invalid", "larger than the 4096 px this app supports"),
        case("largest size, batch 16", "request", request(|r| { (r.width, r.height, r.batch) = (Some(4096), Some(4096), 16); }), "too-large", "lower the"),
        case("batch 0", "request", request(|r| r.batch = 0), "invalid", "batch must be between 1 and 16, got 0"),
        case("batch 1e6", "request", request(|r| r.batch = 1_000_000), "invalid", "batch must be between 1 and 16"),
        case("strength 1.5", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.strength = 1.5; }), "invalid", "strength must be in [0, 1], got 1.5"),
        case("strength NaN", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.strength = f32::NAN; }), "invalid", "strength must be in [0, 1], got NaN"),
        case("strength leaving no step", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.strength = 0.01; }), "invalid", "leaves no denoising step"),
        case("strength without an image", "request", request(|r| r.strength = 0.5), "invalid", "strength below 1 needs an init image"),
        case("mask without an image", "request", request(|r| r.mask = Some(gray(64, 64))), "invalid", "a mask needs an init image"),
        case("image of another size", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.width = Some(128); }), "invalid", "the init image is 64x64, the requested size 128x64"),
        case("mask of another size", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.mask = Some(gray(32, 32)); }), "invalid", "the mask is 32x32, the init image 64x64"),
        case("mask on a plain model", "request", request(|r| { r.init_image = Some(rgb(64, 64)); r.mask = Some(gray(64, 64)); }), "unsupported", "inpainting needs a 9-channel inpainting U-Net, this one takes 4"),
        case("image bytes not w x h x 4", "request", Rgba(64, 64, 100), "invalid", "100 bytes is not a 64x64 RGBA image"),
        case("image 0x0", "request", Rgba(0, 0, 0), "invalid", "is not a 0x0 RGBA image"),
        case("unknown scheduler", "request", SchedulerName("bogus"), "invalid", "unknown scheduler \"bogus\""),
        case("empty prompt", "request", request(|r| r.prompt.clear()), "ok", ""),
        // A1111 weighting (the default) reads a long prompt in chunks of 75 tokens, at most 16.
        case("prompt of 20000 words", "request", request(|r| r.prompt = "castle ".repeat(20_000)), "invalid", "the prompt needs 267 chunks of 75 tokens; at most 16"),
        case("prompt of 20000 words, no weighting (truncated as diffusers)", "request", request(|r| { r.prompt = "castle ".repeat(20_000); r.prompt_weighting = false }), "ok", ""),
        case("prompt weight not a number", "request", request(|r| r.prompt = "(castle:1.2.3)".into()), "invalid", "\"1.2.3\" in \"(text:1.2.3)\" is not a number"),
        case("odd prompt (NUL, RTL, emoji, controls)", "request", request(|r| r.prompt = "nul\0 \u{202e}עברית \u{1F600}\u{fffd}\t\r\n".repeat(50)), "ok", ""),
        case("negative prompt of 5000 emoji", "request", request(|r| r.negative_prompt = "\u{1F600}".repeat(5000)), "invalid", "needs 67 chunks"),
        case("negative prompt of 5000 emoji, no weighting", "request", request(|r| { r.negative_prompt = "\u{1F600}".repeat(5000); r.prompt_weighting = false }), "ok", ""),
        // Worker protocol messages.
        case("negative steps", "protocol", Protocol(r#"{"type":"generate","model":"m","settings":{"prompt":"a","steps":-1}}"#), "bad-request", "invalid value: integer `-1`"),
        case("no prompt", "protocol", Protocol(r#"{"type":"generate","model":"m","settings":{}}"#), "bad-request", "missing field `prompt`"),
        case("unknown request type", "protocol", Protocol(r#"{"type":"format-disk"}"#), "bad-request", "unknown variant `format-disk`"),
        case("not an object", "protocol", Protocol("42"), "bad-request", "invalid type"),
        // Manifests.
        case("not JSON", "manifest", Mutation::Manifest("{\"files\": [".into()), "bad-request", "the manifest is not valid JSON"),
        case("path escaping the folder", "manifest", manifest(|m| m["files"][0]["path"] = json!("../../etc/passwd")), "bad-request", "not a relative path inside the model folder"),
        case("absolute path", "manifest", manifest(|m| m["files"][0]["path"] = json!("/etc/passwd")), "bad-request", "not a relative path inside the model folder"),
        case("sha256 not hex", "manifest", manifest(|m| m["files"][0]["sha256"] = json!("xyz")), "bad-request", "sha256 must be 64 lower-case hex digits"),
        case("file listed twice", "manifest", manifest(|m| { let f = m["files"][1].clone(); m["files"].as_array_mut().unwrap().push(f); }), "bad-request", "listed twice"),
        case("size negative", "manifest", manifest(|m| m["files"][0]["size"] = json!(-1)), "bad-request", "the manifest is not valid JSON of the expected shape"),
        case("size 2^53 (past JavaScript's exact integers)", "manifest", manifest(|m| m["files"][0]["size"] = json!(1u64 << 53)), "bad-request", "more than 2^53 - 1 bytes"),
        case("sizes adding up past 2^53", "manifest", manifest(|m| { m["files"][0]["size"] = json!(1u64 << 52); m["files"][1]["size"] = json!(1u64 << 52); }), "bad-request", "more than 2^53 - 1 bytes"),
        case("no U-Net weights", "manifest", manifest(|m| m["files"].as_array_mut().unwrap().retain(|f| f["path"] != UNET_WEIGHTS)), "model", "the model lacks fp32 safetensors weights for unet"),
        case("no tokenizer", "manifest", manifest(|m| m["files"].as_array_mut().unwrap().retain(|f| f["path"] != "tokenizer/tokenizer.json")), "model", "the model lacks tokenizer/tokenizer.json"),
        // `sd generate`: exit code 2 and the message, quickly.
        case("norm_num_groups 7", "cli", cli(set(UNET, "norm_num_groups", json!(7)), &[]), "exit 2", "unet/config.json: norm_num_groups 7 does not divide block_out_channels[0] 32"),
        case("norm_num_groups 0", "cli", cli(set(UNET, "norm_num_groups", json!(0)), &[]), "exit 2", "unet/config.json: norm_num_groups 0 is out of range"),
        case("num_train_timesteps 0", "cli", cli(set(SCHED, "num_train_timesteps", json!(0)), &[]), "exit 2", "scheduler/scheduler_config.json: num_train_timesteps 0 is out of range"),
        case("num_train_timesteps 4e9", "cli", cli(set(SCHED, "num_train_timesteps", json!(4_000_000_000u64)), &[]), "exit 2", "num_train_timesteps 4000000000 is out of range"),
        case("layers_per_block 1e7", "cli", cli(set(UNET, "layers_per_block", json!(10_000_000)), &[]), "exit 2", "unet/config.json: layers_per_block 10000000 is out of range"),
        case("num_hidden_layers 1e7", "cli", cli(set(TEXT, "num_hidden_layers", json!(10_000_000)), &[]), "exit 2", "text_encoder/config.json: num_hidden_layers 10000000 is out of range"),
        case("truncated U-Net weights", "cli", cli(weights_bytes(|b| b[..1000].to_vec()), &["--variant", "fp32"]), "exit 2", "unet: truncated safetensors data"),
        case("unknown scheduler", "cli", cli(Mutation::Model(vec![]), &["--scheduler", "bogus"]), "exit 2", "unknown scheduler \"bogus\""),
        case("steps 0", "cli", cli(Mutation::Model(vec![]), &["--steps", "0"]), "exit 2", "steps must be between 1 and 1000, got 0"),
        case("guidance NaN", "cli", cli(Mutation::Model(vec![]), &["--guidance", "NaN"]), "exit 2", "guidance must be a number from 0 to 50, got NaN"),
        case("width 12", "cli", cli(Mutation::Model(vec![]), &["--width", "12"]), "exit 2", "positive multiples of 8, got 12x64"),
        case("mask without an image", "cli", cli(Mutation::Model(vec![]), &["--mask", "{dir}/mask.png"]), "exit 2", "--mask needs --init-image"),
    ]
}

/// A copy of tiny-sd in `dir` (files linked, the edited ones written).
fn broken_model(dir: &Path, edits: &[(&'static str, Edit)]) {
    let src = fixtures_dir().join("tiny-sd");
    for path in walk(&src) {
        let rel = path.strip_prefix(&src).unwrap().to_str().unwrap().replace('\\', "/");
        let dest = dir.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        match edits.iter().find(|(file, _)| *file == rel).map(|(_, edit)| edit) {
            None => std::os::unix::fs::symlink(std::fs::canonicalize(&path).unwrap(), &dest).unwrap(),
            Some(Edit::Remove) => {}
            Some(Edit::Bytes(f)) => std::fs::write(&dest, f(std::fs::read(&path).unwrap())).unwrap(),
            Some(Edit::Json(f)) => {
                let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                f(&mut value);
                std::fs::write(&dest, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
            }
        }
    }
    for (file, _) in edits {
        assert!(src.join(file).is_file(), "tiny-sd has no {file}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out.sort();
    out
}

/// What a case ended in: (code, message).
fn outcome(result: Result<(), Error>) -> (String, String) {
    match result {
        Ok(()) => ("ok".into(), String::new()),
        Err(e) => (e.code().to_string(), e.to_string()),
    }
}

fn base_request() -> GenerateRequest {
    GenerateRequest { prompt: "a photo of an astronaut".into(), steps: 2, guidance: 7.5, ..Default::default() }
}

/// Writes what a case reads into `dir`: its broken copy of the model (and for the CLI an image for
/// the arguments that name one, `{dir}/mask.png`). Before the clock starts: writing a 5.5 MB weights
/// file beside the end-to-end suite took up to 2 s in CI, where the refusal itself takes ~0.1 s.
fn prepare(mutation: &Mutation, dir: &Path) {
    match mutation {
        Mutation::Model(edits) => broken_model(dir, edits),
        Mutation::Cli(edits, _) => {
            broken_model(dir, edits);
            let white = vec![255u8; 64 * 64 * 4];
            websd::image::write_png(&dir.join("mask.png"), 64, 64, &white, "").unwrap();
        }
        _ => {}
    }
}

/// Runs one case on what [`prepare`] wrote; returns (code, message).
fn run(mutation: &Mutation, model: &StableDiffusion, dir: &Path) -> (String, String) {
    match mutation {
        Mutation::Model(_) => {
            outcome(StableDiffusion::load_dir(dir, Some(Variant::Fp32), &Device::flex()).map(drop).map_err(Error::from))
        }
        Mutation::Cli(_, args) => {
            let args = args.iter().map(|a| a.replace("{dir}", dir.to_str().unwrap()));
            let out = Command::new(env!("CARGO_BIN_EXE_sd"))
                .args(["generate", "--model", dir.to_str().unwrap(), "--prompt", "a cat"])
                .args(["--out", dir.join("out.png").to_str().unwrap()])
                .args(args)
                .output()
                .expect("sd runs");
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let code = match out.status.code() {
                Some(2) => "exit 2".to_string(),
                other => format!("exit {other:?}"),
            };
            (code, stderr)
        }
        Mutation::Request(f) => {
            let mut r = base_request();
            f(&mut r);
            let result = model.validate(&r).and_then(|_| {
                let output = model.generate(&r, false, |_| true)?;
                let images = output.rgba8();
                assert_eq!(images.len(), r.batch);
                assert!(images.iter().all(|i| i.len() == output.width * output.height * 4));
                Ok(())
            });
            outcome(result.map_err(Error::from))
        }
        Mutation::SchedulerName(name) => {
            outcome(SchedulerKind::from_name(name).map(drop).map_err(|e| Error::from(PipelineError::from(e))))
        }
        // As the worker's `pipeline_request`.
        Mutation::Rgba(w, h, len) => outcome(
            websd::image::image_from_rgba(*w, *h, &vec![0; *len], false)
                .map(drop)
                .map_err(|e| Error::Invalid(format!("init image: {e}"))),
        ),
        // As the worker's `handle`.
        Mutation::Protocol(json) => outcome(
            serde_json::from_str::<websd::protocol::Request>(json)
                .map(drop)
                .map_err(|e| Error::BadRequest(e.to_string())),
        ),
        // As `EnsureModel` reads a fetched manifest, then as `load_model` selects its files.
        Mutation::Manifest(json) => outcome(
            Manifest::from_json(json)
                .map_err(|e| Error::BadRequest(format!("manifest.json: {e}")))
                .and_then(|m| m.select(Some(Variant::Fp32)).map(drop).map_err(|e| Error::Model(e.to_string()))),
        ),
    }
}

/// The message on one line, the case's folder written `DIR`, for the markdown table.
fn excerpt(message: &str, dir: &Path) -> String {
    let one_line = message.replace(dir.to_str().unwrap(), "DIR").replace('\n', " ").replace('|', "\\|");
    let mut out: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The whole table, then a valid generation on the intact model.
#[test]
fn bad_input_table() {
    let device = Device::flex();
    let model = StableDiffusion::load_dir(&fixtures_dir().join("tiny-sd"), Some(Variant::Fp32), &device).unwrap();
    let root = std::env::temp_dir().join(format!("websd-bad-inputs-{}", std::process::id()));
    let cases = cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    let mut failures = Vec::new();
    let mut table = format!(
        "# Bad-input table\n\nGenerated by `crate/tests/native/bad_inputs.rs` (`bad_input_table`): every outcome \
         below was observed. `DIR` is the case's broken copy of `tests/fixtures/tiny-sd`; `exit 2` is \
         `sd generate`'s exit code (its stderr is the message); `ok` inputs generated an image.\n\n{} cases.\n\n\
         | # | case | category | error code | message excerpt | time |\n|---|---|---|---|---|---|\n",
        cases.len()
    );
    for (i, c) in cases.iter().enumerate() {
        let dir = root.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&c.mutation, &dir);
        let start = Instant::now();
        let (code, message) = run(&c.mutation, &model, &dir);
        let elapsed = start.elapsed();
        let limit = match (&c.mutation, c.code) {
            (_, "ok") => Duration::MAX,
            (Mutation::Cli(..), _) => CLI_WITHIN,
            _ => FAIL_WITHIN,
        };
        let mut wrong = Vec::new();
        if code != c.code {
            wrong.push(format!("code {code}, expected {}", c.code));
        }
        if !message.contains(c.message) {
            wrong.push(format!("message lacks {:?}", c.message));
        }
        if elapsed > limit {
            wrong.push(format!("took {elapsed:?}, more than {limit:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!("{} / {}: {}\n    message: {message}", c.category, c.name, wrong.join("; ")));
        }
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} ms |\n",
            i + 1,
            c.name.replace('|', "\\|"),
            c.category,
            code,
            excerpt(&message, &dir),
            elapsed.as_secs_f64() * 1e3
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("{table}");
    if let Ok(path) = std::env::var("WEBSD_BAD_INPUT_TABLE") {
        std::fs::write(&path, &table).unwrap();
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // After all that, a valid request on the intact model still works.
    let r = GenerateRequest { negative_prompt: "blurry".into(), seed: 7, ..base_request() };
    let output = model.generate(&r, false, |_| true).unwrap();
    assert_eq!((output.width, output.height), (64, 64));
    let image = &output.rgba8()[0];
    assert_eq!(image.len(), 64 * 64 * 4);
    let distinct = image.chunks(4).map(|p| [p[0], p[1], p[2]]).collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct > 100, "a generated image, not a flat one: {distinct} colours");
}

/// Every model folder of the fixtures and the Hub's real configs pass the checks (the bounds are not
/// tighter than any real model).
#[test]
fn every_fixture_and_hub_config_passes_the_checks() {
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    let mut checked = Vec::new();
    let folders = walk_dirs(&fixtures_dir()).into_iter().chain(walk_dirs(&fixtures_dir().join("hub-configs")));
    for dir in folders.filter(|d| d.join(UNET).is_file()) {
        let unet: UNet2DConditionConfig = parse(UNET, &read(&dir, UNET)).unwrap();
        let vae: AutoencoderKLConfig = parse(VAE, &read(&dir, VAE)).unwrap();
        let scheduler = SchedulerConfig::from_json(&read(&dir, SCHED)).unwrap();
        let text = ClipTextConfig::from_json(&read(&dir, TEXT)).unwrap();
        check_components(&unet, &vae, &scheduler).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // The Hub copies keep the tokenizer's configs; their vocabulary is CLIP's (`fixtures/tokenizer`).
        let tokenizer = |folder: &str| {
            let file = |name: &str| {
                std::fs::read(dir.join(folder).join(name))
                    .or_else(|_| std::fs::read(fixtures_dir().join("tokenizer").join(name)))
                    .ok()
            };
            let has_json = dir.join(folder).join("tokenizer.json").is_file();
            let (json, vocab, merges) = if has_json {
                (file("tokenizer.json"), None, None)
            } else {
                (None, file("vocab.json"), file("merges.txt"))
            };
            let (config, special) = (file("tokenizer_config.json"), file("special_tokens_map.json"));
            ClipTokenizer::from_files(TokenizerFiles {
                tokenizer_json: json.as_deref(),
                vocab_json: vocab.as_deref(),
                merges_txt: merges.as_deref(),
                tokenizer_config_json: config.as_deref(),
                special_tokens_map_json: special.as_deref(),
            })
            .unwrap()
        };
        let first = tokenizer("tokenizer");
        if dir.join("text_encoder_2").is_dir() {
            let second = tokenizer("tokenizer_2");
            let text_2 = ClipTextConfig::from_json(&read(&dir, "text_encoder_2/config.json")).unwrap();
            let encoders =
                [("text_encoder", "tokenizer", &text, &first), ("text_encoder_2", "tokenizer_2", &text_2, &second)];
            check_text_encoders(&unet, &encoders).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        } else {
            check_text_encoders(&unet, &[("text_encoder", "tokenizer", &text, &first)])
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        checked.push(dir.file_name().unwrap().to_string_lossy().to_string());
    }
    checked.sort();
    for expected in [
        "tiny-sd",
        "tiny-sd-inpaint",
        "tiny-sd2",
        "tiny-sd-turbo",
        "sd15",
        "sd21",
        "sd21-base",
        "sd-turbo",
        "tiny-sdxl",
    ] {
        assert!(checked.iter().any(|c| c == expected), "{expected} not checked: {checked:?}");
    }
    // The recorded scheduler configs too.
    for dir in walk_dirs(&fixtures_dir().join("scheduler_configs")) {
        let config = SchedulerConfig::from_json(&read(&dir, "scheduler_config.json")).unwrap();
        config.check().unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    out.sort();
    out
}
