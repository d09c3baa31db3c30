//! `sd`: the native command-line front end (see DESIGN.md, "Contract: the native CLI").
//!
//! Bad input is a one-line error on stderr and exit code 2.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::{IsTerminal, Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::Instant;

    use burn::tensor::Device;
    use clap::{Parser, Subcommand, ValueEnum};
    use sha2::{Digest, Sha256};
    use websd::image::{ExtraNetworks, a1111_parameters, read_png, write_png};
    use websd::lora::{self, Lora};
    use websd::manifest::{Manifest, ManifestFile};
    use websd::pipeline::{GenerateRequest, Progress, StableDiffusion};
    use websd::protocol::SelfTestReport;
    use websd::schedulers::SchedulerKind;
    use websd::textual_inversion::Embedding;
    use websd::weights::Variant;

    #[derive(Parser)]
    #[command(name = "sd", version, about = "Stable Diffusion on burn (CPU or wgpu)")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum VariantArg {
        Fp16,
        Fp32,
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum Backend {
        Cpu,
        Wgpu,
    }

    #[derive(clap::Args)]
    struct GenerateArgs {
        /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// PNG to write; with --batch N > 1, OUT-0.png .. OUT-{N-1}.png.
        #[arg(long)]
        out: PathBuf,
        /// Weight files to read (default: fp16 if present, else fp32).
        #[arg(long, value_enum)]
        variant: Option<VariantArg>,
        /// Negative prompt (default: the empty string's embedding, as diffusers; for SDXL models whose
        /// model_index.json says force_zeros_for_empty_prompt, zeros when both negatives are empty).
        #[arg(long, default_value = "")]
        negative: String,
        /// SDXL: the prompt of the second text encoder (default: --prompt).
        #[arg(long)]
        prompt_2: Option<String>,
        /// SDXL: the negative prompt of the second text encoder (default: --negative).
        #[arg(long)]
        negative_2: Option<String>,
        /// SDXL micro-conditioning: the original image size W,H in pixels (default: the output's size).
        #[arg(long, value_name = "W,H", value_parser = parse_size)]
        original_size: Option<[usize; 2]>,
        /// SDXL micro-conditioning: the crop's top-left corner X,Y in pixels (default 0,0).
        #[arg(long, value_name = "X,Y", value_parser = parse_crop)]
        crop: Option<[usize; 2]>,
        /// SDXL micro-conditioning: the target size W,H in pixels (default: the output's size).
        #[arg(long, value_name = "W,H", value_parser = parse_size)]
        target_size: Option<[usize; 2]>,
        /// Denoising steps (default: the model's recommendation where it is a built-in model with one,
        /// as SD-Turbo's 1, else diffusers' 50).
        #[arg(long)]
        steps: Option<usize>,
        /// Classifier-free guidance scale; <= 1 disables guidance (default: as --steps; diffusers' 7.5).
        #[arg(long, allow_negative_numbers = true)]
        guidance: Option<f32>,
        /// Same seed, same image as diffusers with torch.Generator("cpu").manual_seed(seed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        width: Option<usize>,
        #[arg(long)]
        height: Option<usize>,
        /// Images per prompt (one generator for the whole batch, as diffusers).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// ddpm, ddim, pndm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras or lcm (default: the model's own).
        #[arg(long)]
        scheduler: Option<String>,
        /// img2img / inpainting source image (PNG, the output's size).
        #[arg(long)]
        init_image: Option<PathBuf>,
        /// How much of the schedule runs on the init image (default 1 for inpainting, 0.8 for img2img).
        #[arg(long, allow_negative_numbers = true)]
        strength: Option<f32>,
        /// Inpainting mask (PNG, white = repaint, the init image's size).
        #[arg(long)]
        mask: Option<PathBuf>,
        /// A LoRA to merge into the text encoder and U-Net (kohya or diffusers/PEFT safetensors), with
        /// its weight (default 1); repeatable.
        #[arg(long = "lora", value_name = "FILE[:WEIGHT]")]
        loras: Vec<String>,
        /// A textual-inversion embedding (safetensors: A1111's `emb_params`, or one tensor), used where the
        /// prompt says its file's name (A1111's trigger word); repeatable.
        #[arg(long = "embedding", value_name = "FILE")]
        embeddings: Vec<PathBuf>,
        /// Read prompts as diffusers does (77 tokens, truncated; brackets are text) instead of with
        /// AUTOMATIC1111's weighting: `(word)` x1.1, `[word]` /1.1, `(word:1.3)`, `\(` for a bracket,
        /// `BREAK`, prompts past 75 tokens in chunks. Plain prompts encode the same either way.
        #[arg(long)]
        no_prompt_weighting: bool,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: Backend,
        /// Write every intermediate tensor (f32 safetensors, the fixtures' names).
        #[arg(long)]
        dump: Option<PathBuf>,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Generate images (txt2img, img2img with --init-image, inpainting with --mask).
        Generate(Box<GenerateArgs>),
        /// Print a JSON manifest of a model folder (every file's path, size and sha256) for the web app.
        Manifest {
            /// The diffusers model folder.
            dir: PathBuf,
        },
        /// Print the wgpu adapter, its shader-f16 support and limits as JSON.
        GpuInfo,
        /// Run the conv + group norm + attention probe on the wgpu device and on the CPU and compare.
        SelfTest,
    }

    pub fn main() -> ExitCode {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(err) if !err.use_stderr() => {
                // --help, --version
                print!("{err}");
                return ExitCode::SUCCESS;
            }
            Err(err) => {
                let text = err.to_string();
                let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
                eprintln!("sd: {}", line.trim_start_matches("error: "));
                return ExitCode::from(2);
            }
        };
        let result = match cli.command {
            Command::Generate(args) => generate(*args),
            Command::Manifest { dir } => manifest(&dir).map(|m| json(&m)),
            Command::GpuInfo => websd::gpu::wgpu_device().map(|(_, info)| json(&info)).map_err(|e| e.to_string()),
            Command::SelfTest => self_test().map(|report| json(&report)).map_err(|e| e.to_string()),
        };
        match result {
            Ok(text) if text.is_empty() => ExitCode::SUCCESS,
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sd: {}", err.replace('\n', " "));
                ExitCode::from(2)
            }
        }
    }

    /// Two whole numbers of pixels, `A,B` (or `AxB`).
    fn pixel_pair(text: &str, example: &str) -> Result<(usize, usize), String> {
        let (a, b) = text.split_once([',', 'x']).ok_or(format!("expected two numbers such as {example}"))?;
        let number = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("{v:?} is not a whole number of pixels"));
        Ok((number(a)?, number(b)?))
    }

    /// `W,H` as diffusers' `(height, width)`.
    fn parse_size(text: &str) -> Result<[usize; 2], String> {
        pixel_pair(text, "1024,1024 (W,H)").map(|(w, h)| [h, w])
    }

    /// `X,Y` as diffusers' `crops_coords_top_left` `(top, left)`.
    fn parse_crop(text: &str) -> Result<[usize; 2], String> {
        pixel_pair(text, "0,0 (X,Y)").map(|(x, y)| [y, x])
    }

    fn json(value: &impl serde::Serialize) -> String {
        serde_json::to_string_pretty(value).expect("serialisable")
    }

    fn self_test() -> Result<SelfTestReport, websd::Error> {
        let (gpu, _) = websd::gpu::wgpu_device()?;
        let start = Instant::now();
        pollster::block_on(websd::probe::self_test(&gpu, || start.elapsed().as_secs_f64() * 1e3))
    }

    /// f32 tensors as a safetensors file (header JSON, then the little-endian data).
    fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), String> {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, shape, values) in tensors {
            let end = offset + values.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut text = serde_json::to_string(&header).expect("json");
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        out.write_all(&(text.len() as u64).to_le_bytes()).map_err(err)?;
        out.write_all(text.as_bytes()).map_err(err)?;
        for (_, _, values) in tensors {
            for v in values {
                out.write_all(&v.to_le_bytes()).map_err(err)?;
            }
        }
        out.flush().map_err(err)
    }

    fn sha256_file(path: &Path) -> Result<String, String> {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    fn manifest(dir: &Path) -> Result<Manifest, String> {
        if !dir.join("model_index.json").is_file() {
            return Err(format!("{}: not a diffusers model folder (no model_index.json)", dir.display()));
        }
        let mut paths = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        let files = paths
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(dir).expect("inside dir").to_string_lossy().replace('\\', "/");
                let size = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
                Ok(ManifestFile { path: rel, size, sha256: sha256_file(p)? })
            })
            .collect::<Result<_, String>>()?;
        Ok(Manifest { files, ..Default::default() })
    }

    /// Steps and guidance: the flags, else the recommendation of the built-in model this folder is a copy
    /// of (recognised by its `unet/config.json`; the app's manifests are the one source), else diffusers'.
    fn recommended(model: &Path, steps: Option<usize>, guidance: Option<f32>) -> Result<(usize, f32), String> {
        if let (Some(steps), Some(guidance)) = (steps, guidance) {
            return Ok((steps, guidance));
        }
        let config = model.join("unet/config.json");
        let builtin =
            if config.is_file() { websd::manifest::builtin_by_unet_config(&sha256_file(&config)?) } else { None };
        let (name, manifest) = builtin.unwrap_or(("", Manifest::default()));
        let (default_steps, default_guidance) = manifest.steps_and_guidance();
        if manifest.recommended.is_some() && std::io::stderr().is_terminal() {
            eprintln!("{name}: its recommended {default_steps} steps, guidance {default_guidance} (flags override)");
        }
        Ok((steps.unwrap_or(default_steps), guidance.unwrap_or(default_guidance)))
    }

    /// `FILE[:WEIGHT]`: the LoRA, named by the file's stem, its weight and its A1111 short hash.
    fn read_lora(arg: &str) -> Result<(Lora, f32, String), String> {
        // A suffix that is not a number is part of the path.
        let (path, weight) = match arg.rsplit_once(':').map(|(p, w)| (p, w.parse::<f32>())) {
            Some((path, Ok(w))) if !path.is_empty() => (path, w),
            _ => (arg, 1.0),
        };
        if !weight.is_finite() {
            return Err(format!("--lora {arg}: the weight must be a finite number"));
        }
        let name = Path::new(path).file_stem().map_or(path.into(), |s| s.to_string_lossy());
        let bytes = std::fs::read(path).map_err(|e| format!("--lora {path}: {e}"))?;
        let hash = lora::short_hash(&bytes).unwrap_or_default();
        let lora = Lora::from_source(&name, std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
        Ok((lora, weight, hash))
    }

    fn generate(a: GenerateArgs) -> Result<String, String> {
        let scheduler = a.scheduler.as_deref().map(SchedulerKind::from_name).transpose().map_err(|e| e.to_string())?;
        let init_image = a.init_image.as_deref().map(|p| read_png(p, false)).transpose().map_err(|e| e.to_string())?;
        let mask = a.mask.as_deref().map(|p| read_png(p, true)).transpose().map_err(|e| e.to_string())?;
        if a.strength.is_some() && init_image.is_none() {
            return Err("--strength needs --init-image".into());
        }
        if mask.is_some() && init_image.is_none() {
            return Err("--mask needs --init-image".into());
        }
        let (steps, guidance) = recommended(&a.model, a.steps, a.guidance)?;
        let strength = a.strength.unwrap_or(websd::limits::default_strength(init_image.is_some(), mask.is_some()));
        // A1111's <lora:name:weight> tags name LoRAs given with --lora and set their weights.
        let (prompt, tags) = lora::extract_tags(&a.prompt).map_err(|e| e.to_string())?;
        if !lora::extract_tags(&a.negative).map_err(|e| e.to_string())?.1.is_empty() {
            return Err("<lora:...> tags belong in the prompt, not the negative prompt".into());
        }
        let mut loras = a.loras.iter().map(|arg| read_lora(arg)).collect::<Result<Vec<_>, _>>()?;
        for (name, weight) in tags {
            let lora = loras.iter_mut().find(|l| l.0.name == name).ok_or_else(|| {
                format!("<lora:{name}>: no LoRA of that name was given (--lora FILE; its name is the file's stem)")
            })?;
            lora.1 = weight;
        }
        let request = GenerateRequest {
            prompt,
            negative_prompt: a.negative.clone(),
            steps,
            guidance,
            seed: a.seed,
            width: a.width,
            height: a.height,
            batch: a.batch,
            scheduler,
            init_image,
            mask,
            strength,
            preview_every: 0,
            prompt_weighting: !a.no_prompt_weighting,
            prompt_2: a.prompt_2.clone(),
            negative_prompt_2: a.negative_2.clone(),
            original_size: a.original_size,
            crops_coords_top_left: a.crop.unwrap_or([0, 0]),
            target_size: a.target_size,
        };
        let variant = a.variant.map(|v| match v {
            VariantArg::Fp16 => Variant::Fp16,
            VariantArg::Fp32 => Variant::Fp32,
        });
        let (device, gpu) = match a.backend {
            Backend::Cpu => (Device::flex(), None),
            Backend::Wgpu => websd::gpu::wgpu_device().map(|(d, info)| (d, Some(info))).map_err(|e| e.to_string())?,
        };
        // Kernels this GPU measured in earlier runs (where it measures them: `websd::kernels::tune`).
        use websd::kernels::tune;
        let picks_file =
            gpu.as_ref().filter(|_| tune::recording()).and_then(|g| Some((tune::cache_file()?, g.tuning_key())));
        if let Some((file, key)) = &picks_file {
            tune::import(&tune::load_picks(file, key));
        }
        let mut extra = ExtraNetworks::default();
        let mut weighted = Vec::with_capacity(loras.len());
        for (lora, weight, hash) in loras {
            extra.loras.push((lora.name.clone(), weight, hash));
            weighted.push((lora, weight));
        }
        let mut model =
            StableDiffusion::load_dir_with_loras(&a.model, variant, &weighted, &device).map_err(|e| e.to_string())?;
        for path in &a.embeddings {
            let token = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(path).map_err(|e| format!("--embedding {}: {e}", path.display()))?;
            extra.embeddings.push((token.clone(), Embedding::short_hash(&bytes)));
            let embedding = Embedding::from_source(&token, std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
            model.add_textual_inversion(embedding).map_err(|e| e.to_string())?;
        }
        // Validate before any work, so bad input costs nothing.
        model.validate(&request).map_err(|e| e.to_string())?;
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let output = model
            .generate(&request, a.dump.is_some(), |p| {
                if tty {
                    match p {
                        Progress::Encoded => eprint!("\rencoded ({:.1} s)", start.elapsed().as_secs_f64()),
                        Progress::Step { step, total, .. } => {
                            eprint!("\rstep {step}/{total} ({:.1} s)   ", start.elapsed().as_secs_f64())
                        }
                        Progress::Decoded => eprintln!("\rdone in {:.1} s          ", start.elapsed().as_secs_f64()),
                        Progress::Tune { done, total } => eprint!("\rmeasuring kernels {done}/{total}"),
                        Progress::Preview { .. } | Progress::Denoised => {}
                    }
                }
                true
            })
            .map_err(|e| e.to_string())?;
        if let Some((file, key)) = &picks_file
            && let Err(e) = tune::save_picks(file, key, &tune::export())
        {
            eprintln!("warning: the measured kernels could not be kept in {}: {e}", file.display());
        }
        if let Some(path) = &a.dump {
            write_safetensors(path, &output.dump)?;
        }
        let unet_file = websd::weights::component_weights(&a.model.join("unet"), variant).map_err(|e| e.to_string())?;
        let model_hash = sha256_file(&unet_file)?;
        let model_name = a.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        // The prompt as typed (with its <lora:...> tags).
        let typed = GenerateRequest { prompt: a.prompt.clone(), ..request.clone() };
        let parameters = a1111_parameters(&typed, &output, &model_hash[..10], &model_name, &extra);
        let images = pollster::block_on(output.rgba8_async()).map_err(|e| websd::Error::from(e).to_string())?;
        for (i, rgba) in images.iter().enumerate() {
            let path = if images.len() == 1 {
                a.out.clone()
            } else {
                let stem = a.out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                a.out.with_file_name(format!("{stem}-{i}.png"))
            };
            write_png(&path, output.width, output.height, rgba, &parameters).map_err(|e| e.to_string())?;
        }
        Ok(String::new())
    }
}
