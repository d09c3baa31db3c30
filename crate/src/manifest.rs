//! A model as the browser downloads it: the `sd manifest` listing of a diffusers folder (every file's
//! path, size and sha256), plus an optional base URL. Files resolve relative to the manifest's own URL
//! unless `base_url` is set (a Hugging Face `resolve/<revision>/` URL in production).
//!
//! Only the files a pipeline needs are fetched: configs, tokenizer, and one weights variant per
//! component ([`Manifest::select`]).

use serde::{Deserialize, Serialize};

use crate::weights::Variant;

/// One file of a model folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the model folder, `/`-separated (`unet/diffusion_pytorch_model.fp16.safetensors`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// The `sd manifest` output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Where the files live; absent: next to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    pub files: Vec<ManifestFile>,
    /// Settings the model's authors recommend where its configs cannot say (SD-Turbo: 1 step, no
    /// guidance). The one source for the page's and the CLI's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended: Option<Recommended>,
    /// Where the files come from when `base_url` is not the original repository at a commit (SD 2.1's
    /// repositories were deleted from the Hub in November 2025; a mirror serves the same bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A model's recommended generation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recommended {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
}

/// The app's built-in manifests (`www/hub/`), the one source of the page's model picker defaults and
/// of the CLI's, which recognises a local copy of one of these models by its `unet/config.json`.
pub const BUILTIN: [(&str, &str); 6] = [
    ("sd15", include_str!("../../www/hub/sd15.json")),
    ("sd-turbo", include_str!("../../www/hub/sd-turbo.json")),
    ("sd21-base", include_str!("../../www/hub/sd21-base.json")),
    ("sd21", include_str!("../../www/hub/sd21.json")),
    ("sdxl-turbo", include_str!("../../www/hub/sdxl-turbo.json")),
    ("sdxl-base", include_str!("../../www/hub/sdxl-base.json")),
];

/// The built-in model whose `unet/config.json` has this sha256 (a local copy of it), with its manifest.
pub fn builtin_by_unet_config(sha256: &str) -> Option<(&'static str, Manifest)> {
    BUILTIN.iter().find_map(|(name, json)| {
        let manifest = Manifest::from_json(json).ok()?;
        (manifest.file("unet/config.json")?.sha256 == sha256).then_some((*name, manifest))
    })
}

impl Manifest {
    /// Steps and guidance: the manifest's recommendation, else diffusers' defaults.
    pub fn steps_and_guidance(&self) -> (usize, f32) {
        let r = self.recommended.unwrap_or(Recommended { steps: None, guidance: None });
        (r.steps.unwrap_or(crate::limits::DEFAULT_STEPS), r.guidance.unwrap_or(crate::limits::DEFAULT_GUIDANCE))
    }
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("manifest entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("the model lacks {0} (not in the manifest)")]
    Missing(String),
}

/// Largest size a manifest may give a file, or all its files together: JavaScript's largest exact
/// integer (2^53 - 1). Sizes cross to the page as JS numbers; past this they round, and byte counts
/// and `Range` offsets computed from them would be wrong.
pub const MAX_MANIFEST_BYTES_TOTAL: u64 = (1 << 53) - 1;

/// Most files a manifest may list (a diffusers model has ~20; SDXL with every variant ~40).
pub const MAX_MANIFEST_FILES: usize = 10_000;

/// Origins model files may come from besides the app's own: the Hub and its CDN hosts, exactly the
/// production Content-Security-Policy's `connect-src` (`www/index.html`; a test keeps the two equal).
/// `*.` is CSP's host wildcard: any subdomain (the Hub's `resolve` URLs redirect to CDN hosts).
pub const DEFAULT_ALLOWED_ORIGINS: [&str; 3] =
    ["https://huggingface.co", "https://*.huggingface.co", "https://*.hf.co"];

/// Added to [`DEFAULT_ALLOWED_ORIGINS`] only when the app itself is served from this machine
/// (development, tests, a model server the user runs beside it): a deployed app's `?model=` link must
/// not reach into the user's machine. An entry without a port allows every port of its host.
pub const LOOPBACK_ORIGINS: [&str; 2] = ["http://localhost", "http://127.0.0.1"];

/// Whether `host` is this machine.
pub fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

/// Whether an origin (`scheme` without its colon, `host`, `port` as the URL gives it: empty for the
/// scheme's default) matches an allow-list `entry`: `scheme://host[:port]` (no port: any port) or
/// `scheme://*.domain` (any subdomain of `domain`, as in CSP).
pub fn origin_matches(entry: &str, scheme: &str, host: &str, port: &str) -> bool {
    let Some((entry_scheme, rest)) = entry.split_once("://") else { return false };
    let rest = rest.trim_end_matches('/');
    let (entry_host, entry_port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (rest, None),
    };
    let host = host.to_ascii_lowercase();
    let host_ok = match entry_host.strip_prefix("*.") {
        Some(domain) => {
            host.strip_suffix(&domain.to_ascii_lowercase()).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        }
        None => host == entry_host.to_ascii_lowercase(),
    };
    entry_scheme.eq_ignore_ascii_case(scheme) && host_ok && entry_port.is_none_or(|p| p == port)
}

/// The components whose weights a pipeline loads.
pub const WEIGHT_COMPONENTS: [&str; 3] = ["text_encoder", "unet", "vae"];

impl Manifest {
    /// Parses and checks a manifest: safe relative paths, hex hashes, no duplicates.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        if manifest.files.len() > MAX_MANIFEST_FILES {
            return Err(ManifestError::Json(format!(
                "{} files listed, at most {MAX_MANIFEST_FILES}",
                manifest.files.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut total: u64 = 0;
        for f in &manifest.files {
            let bad = |reason: &str| Err(ManifestError::BadEntry { path: f.path.clone(), reason: reason.into() });
            let safe = !f.path.is_empty()
                && !f.path.starts_with('/')
                && !f.path.contains('\\')
                && f.path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
            if !safe {
                return bad("not a relative path inside the model folder");
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return bad("sha256 must be 64 lower-case hex digits");
            }
            if !seen.insert(f.path.as_str()) {
                return bad("listed twice");
            }
            total = match total.checked_add(f.size) {
                Some(t) if t <= MAX_MANIFEST_BYTES_TOTAL => t,
                _ => return bad("the sizes add up to more than 2^53 - 1 bytes (JavaScript's exact integers)"),
            };
        }
        Ok(manifest)
    }

    /// The entry for `path`.
    pub fn file(&self, path: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Every component's weights file for `variant` ([`Self::weight_components`], [`Self::weights`]), as the
    /// memory estimate counts them.
    pub fn weights_files(&self, variant: Option<Variant>) -> Result<Vec<crate::memory::WeightsFile>, ManifestError> {
        self.weight_components()
            .into_iter()
            .map(|c| {
                let f = self.weights(c, variant)?;
                Ok(crate::memory::WeightsFile { bytes: f.size, f16: f.path.ends_with(".fp16.safetensors") })
            })
            .collect()
    }

    /// The weights file of `component` for `variant` (`None`: fp16 when listed, half the download).
    pub fn weights(&self, component: &str, variant: Option<Variant>) -> Result<&ManifestFile, ManifestError> {
        let candidates = |stem: &str| {
            let fp16 = self.file(&format!("{component}/{stem}.fp16.safetensors"));
            let fp32 = self.file(&format!("{component}/{stem}.safetensors"));
            match variant {
                Some(Variant::Fp16) => fp16,
                Some(Variant::Fp32) => fp32,
                None => fp16.or(fp32),
            }
        };
        candidates("diffusion_pytorch_model").or_else(|| candidates("model")).ok_or_else(|| {
            let which = match variant {
                Some(Variant::Fp16) => "fp16 ",
                Some(Variant::Fp32) => "fp32 ",
                None => "",
            };
            ManifestError::Missing(format!("{which}safetensors weights for {component}"))
        })
    }

    /// Every file the pipeline reads for `variant`: `model_index.json`, the component configs, the
    /// scheduler config, the tokenizer (vocab + merges when present, the smaller pair; else
    /// `tokenizer.json`) and one weights file per component. Other files (`.bin`, `.ckpt`, the other
    /// variant, safety checker...) are never fetched.
    pub fn select(&self, variant: Option<Variant>) -> Result<Vec<&ManifestFile>, ManifestError> {
        let need = |path: &str| self.file(path).ok_or_else(|| ManifestError::Missing(path.to_string()));
        // model_index.json only names the components, whose own configs the pipeline reads: fetched
        // when listed, not required (a pinned Hub manifest may lack a verified copy of it).
        let mut files: Vec<&ManifestFile> = self.file("model_index.json").into_iter().collect();
        files.push(need("scheduler/scheduler_config.json")?);
        for component in self.weight_components() {
            files.push(need(&format!("{component}/config.json"))?);
            files.push(self.weights(component, variant)?);
        }
        let mut tokenizers = vec!["tokenizer"];
        if self.is_sdxl() {
            tokenizers.push("tokenizer_2");
        }
        for folder in tokenizers {
            match (self.file(&format!("{folder}/vocab.json")), self.file(&format!("{folder}/merges.txt"))) {
                (Some(vocab), Some(merges)) => files.extend([vocab, merges]),
                _ => files.push(need(&format!("{folder}/tokenizer.json"))?),
            }
            files.extend(
                ["tokenizer_config.json", "special_tokens_map.json"]
                    .iter()
                    .filter_map(|name| self.file(&format!("{folder}/{name}"))),
            );
        }
        Ok(files)
    }

    /// Whether the model has SDXL's second text encoder (`text_encoder_2/config.json` is listed).
    pub fn is_sdxl(&self) -> bool {
        self.file("text_encoder_2/config.json").is_some()
    }

    /// The components with weights files: [`WEIGHT_COMPONENTS`], and SDXL's `text_encoder_2`.
    pub fn weight_components(&self) -> Vec<&'static str> {
        let mut components = WEIGHT_COMPONENTS.to_vec();
        if self.is_sdxl() {
            components.insert(1, "text_encoder_2");
        }
        components
    }

    /// Total bytes of `files`.
    pub fn total(files: &[&ManifestFile]) -> u64 {
        files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> ManifestFile {
        ManifestFile { path: path.into(), size, sha256: "0".repeat(64) }
    }

    fn tiny() -> Manifest {
        let paths = [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "tokenizer/tokenizer.json",
            "tokenizer/tokenizer_config.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ];
        Manifest { files: paths.iter().map(|p| entry(p, 10)).collect(), ..Default::default() }
    }

    #[test]
    fn select_picks_one_variant_and_the_small_tokenizer_files() {
        let m = tiny();
        let paths = |v| m.select(v).unwrap().iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        let fp16 = paths(None);
        assert!(fp16.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(fp16.contains(&"text_encoder/model.fp16.safetensors".to_string()));
        // vae has no fp16 file: the default falls back to fp32 per component.
        assert!(fp16.contains(&"vae/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!fp16.iter().any(|p| p.ends_with(".bin") || p == "tokenizer/tokenizer.json"));
        let fp32 = paths(Some(Variant::Fp32));
        assert!(fp32.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!fp32.iter().any(|p| p.contains("fp16")));
        // An explicit fp16 request fails where a component has none.
        assert_eq!(
            m.select(Some(Variant::Fp16)).unwrap_err(),
            ManifestError::Missing("fp16 safetensors weights for vae".into())
        );
    }

    /// SDXL: the second text encoder's config and weights and the second tokenizer's files are selected
    /// too (its `tokenizer.json` only when it lacks vocab + merges), in load order.
    #[test]
    fn select_takes_sdxls_second_text_encoder_and_tokenizer() {
        let mut m = tiny();
        assert!(!m.is_sdxl());
        for path in ["text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors", "tokenizer_2/vocab.json"] {
            m.files.push(entry(path, 10));
        }
        m.files.extend([entry("tokenizer_2/merges.txt", 10), entry("tokenizer_2/special_tokens_map.json", 10)]);
        assert!(m.is_sdxl());
        assert_eq!(m.weight_components(), ["text_encoder", "text_encoder_2", "unet", "vae"]);
        let paths: Vec<String> = m.select(None).unwrap().iter().map(|f| f.path.clone()).collect();
        for path in ["text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors", "tokenizer_2/vocab.json"] {
            assert!(paths.contains(&path.to_string()), "{path} in {paths:?}");
        }
        assert!(paths.contains(&"tokenizer_2/special_tokens_map.json".to_string()));
        // Without its weights, an SDXL manifest is incomplete.
        m.files.retain(|f| f.path != "text_encoder_2/model.fp16.safetensors");
        assert_eq!(
            m.select(None).unwrap_err(),
            ManifestError::Missing("safetensors weights for text_encoder_2".into())
        );
    }

    #[test]
    fn allow_list_entries_match_as_csp_sources_do() {
        let ok = |entry, scheme, host, port| origin_matches(entry, scheme, host, port);
        assert!(ok("https://huggingface.co", "https", "huggingface.co", ""));
        assert!(!ok("https://huggingface.co", "http", "huggingface.co", ""));
        assert!(!ok("https://huggingface.co", "https", "evil-huggingface.co", ""));
        assert!(!ok("https://huggingface.co", "https", "cdn-lfs.huggingface.co", ""));
        // `*.`: any subdomain, not the bare domain, not a look-alike.
        assert!(ok("https://*.hf.co", "https", "cas-bridge.xethub.hf.co", ""));
        assert!(ok("https://*.huggingface.co", "https", "cdn-lfs-us-1.HuggingFace.co", ""));
        assert!(!ok("https://*.hf.co", "https", "hf.co", ""));
        assert!(!ok("https://*.hf.co", "https", "evilhf.co", ""));
        assert!(!ok("https://*.hf.co", "https", "hf.co.evil.com", ""));
        // A port: only that one; none: any.
        assert!(ok("http://127.0.0.1", "http", "127.0.0.1", "9000"));
        assert!(ok("http://127.0.0.1:9000", "http", "127.0.0.1", "9000"));
        assert!(!ok("http://127.0.0.1:9000", "http", "127.0.0.1", "9001"));
        assert!(!ok("http://127.0.0.1:9000", "http", "localhost", "9000"));
        assert!(!ok("not an origin", "http", "localhost", ""));
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && !is_loopback("127.0.0.1.example.com"));
    }

    /// The engine's default allow-list is the production policy's `connect-src` (besides `'self'`):
    /// what the worker may fetch and what the engine accepts are one list.
    #[test]
    fn the_default_allow_list_is_the_production_connect_src() {
        let html = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../www/index.html")).unwrap();
        let csp = html.split("http-equiv=\"Content-Security-Policy\"").nth(1).unwrap();
        let content = csp.split("content=\"").nth(1).unwrap().split('"').next().unwrap();
        let connect: Vec<&str> = content
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("connect-src "))
            .unwrap()
            .split_whitespace()
            .filter(|s| *s != "'self'")
            .collect();
        assert_eq!(connect, DEFAULT_ALLOWED_ORIGINS, "www/index.html's connect-src");
    }

    #[test]
    fn bad_manifests_are_refused() {
        let bad = |json: &str| Manifest::from_json(json).unwrap_err();
        assert!(matches!(bad("{"), ManifestError::Json(_)));
        let one = |path: &str, sha: &str| format!(r#"{{"files":[{{"path":"{path}","size":1,"sha256":"{sha}"}}]}}"#);
        let ok_sha = "a".repeat(64);
        assert!(Manifest::from_json(&one("unet/config.json", &ok_sha)).is_ok());
        // Sizes JavaScript cannot count exactly, alone or added up, are refused.
        let sized = |sizes: &[u64]| {
            let files: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| format!(r#"{{"path":"f{i}","size":{n},"sha256":"{ok_sha}"}}"#))
                .collect();
            Manifest::from_json(&format!(r#"{{"files":[{}]}}"#, files.join(",")))
        };
        assert!(sized(&[(1 << 53) - 1]).is_ok());
        assert!(matches!(sized(&[1 << 53]), Err(ManifestError::BadEntry { .. })));
        assert!(matches!(sized(&[1 << 52, 1 << 52]), Err(ManifestError::BadEntry { .. })));
        assert!(matches!(sized(&[u64::MAX, 2]), Err(ManifestError::BadEntry { .. })));
        for path in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
            assert!(matches!(bad(&one(path, &ok_sha)), ManifestError::BadEntry { .. }), "{path}");
        }
        assert!(matches!(bad(&one("x", "XYZ")), ManifestError::BadEntry { .. }));
        let twice = format!(
            r#"{{"files":[{{"path":"a","size":1,"sha256":"{ok_sha}"}},{{"path":"a","size":1,"sha256":"{ok_sha}"}}]}}"#
        );
        assert!(matches!(bad(&twice), ManifestError::BadEntry { .. }));
        let m = Manifest { files: vec![entry("model_index.json", 1)], ..Default::default() };
        assert!(matches!(m.select(None), Err(ManifestError::Missing(p)) if p == "scheduler/scheduler_config.json"));
    }

    /// The app's built-in manifests (www/hub/) are valid, pinned to a Hub commit, and complete for
    /// the fp16 pipeline.
    #[test]
    fn builtin_manifests_are_pinned_and_complete() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../www/hub");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            count += 1;
            let m = Manifest::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let base = m.base_url.as_deref().unwrap();
            let rev = base.trim_end_matches('/').rsplit('/').next().unwrap();
            assert!(base.starts_with("https://huggingface.co/") && base.contains("/resolve/"), "{base}");
            let commit = |rev: &str| rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
            // Pinned to a commit, or (a mirror of a deleted repository) naming the original commit; the
            // bytes are pinned by sha256 either way.
            let origin_commit =
                m.origin.as_deref().is_some_and(|o| o.split(|c: char| !c.is_ascii_alphanumeric()).any(commit));
            assert!(commit(rev) || origin_commit, "{}: revision {rev}, origin {:?}", path.display(), m.origin);
            let selected = m.select(None).unwrap();
            assert!(
                selected.iter().all(|f| !f.path.ends_with(".safetensors") || f.path.ends_with(".fp16.safetensors"))
            );
            assert_eq!(selected.len(), m.files.len(), "{}: every listed file is used", path.display());
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert!(BUILTIN.iter().any(|(n, json)| *n == name && Manifest::from_json(json).unwrap() == m), "{name}");
        }
        assert_eq!(count, BUILTIN.len());
    }
}
