//! LoRA (low-rank adapters) merged into a model's weights as they load: `W' = W + weight * alpha / rank *
//! up @ down`, for linear layers and convolutions (1x1 and kxk, kohya's LoCon).
//!
//! Two namings, as the files people use are written:
//! - kohya / AUTOMATIC1111: `lora_unet_down_blocks_0_..._to_q.lora_down.weight`, `.lora_up.weight` and
//!   `.alpha` (a scalar), `lora_te_..._q_proj.*` for the text encoder (with or without `text_model_`);
//! - diffusers / PEFT: `unet.down_blocks.0....to_q.lora_A.weight`, `.lora_B.weight`,
//!   `text_encoder.(text_model.)encoder....q_proj.*`; no alpha is stored, so alpha = rank (scale 1), as
//!   diffusers assumes for such files.
//!
//! kohya's names lose the dots, so a layer is found by comparing it with every weight the model has
//! (`down_blocks.0.attentions.0` -> `down_blocks_0_attentions_0`). Every layer of a LoRA must land on a
//! weight of the right shape, or the LoRA is refused before anything is loaded: a LoRA made for another
//! model family would otherwise change nothing, silently.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use burn::module::{Module, ModuleMapper, Param, ParamId};

use burn::tensor::{Device, Tensor, TensorData};

use crate::models::clip::ClipTextModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::weights::{
    ByteSource, IntoTensorSource, KeyMap, SafetensorsHeader, SafetensorsReader, TensorInfo, TensorSource, WeightsError,
    host_data,
};

/// Why a LoRA cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    /// The file is not a readable safetensors file.
    #[error("LoRA {name}: {error}")]
    File { name: String, error: WeightsError },
    /// A tensor name or shape that is not a LoRA's.
    #[error("LoRA {name}: {message}")]
    Invalid { name: String, message: String },
    /// Layers that match no weight of this model (a LoRA for another model family).
    #[error("LoRA {name}: {count} of its layers match no weight of this model's {component} (first: {first})")]
    Unmatched { name: String, component: &'static str, count: usize, first: String },
}

/// Which network a layer adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    fn label(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        }
    }
}

/// One tensor of the file, on the host.
#[derive(Debug, Clone)]
struct HostTensor {
    info: TensorInfo,
    bytes: Vec<u8>,
}

/// One adapted weight.
#[derive(Debug, Clone)]
struct Layer {
    component: Component,
    /// The module as the file names it: dotted (PEFT) or with underscores (kohya).
    module: String,
    kohya: bool,
    /// `[rank, in, (kh, kw)]`
    down: HostTensor,
    /// `[out, rank, (1, 1)]`
    up: HostTensor,
    alpha: Option<f32>,
}

impl Layer {
    fn rank(&self) -> usize {
        self.down.info.shape[0]
    }

    /// `alpha / rank`.
    fn scale(&self) -> f32 {
        self.alpha.map_or(1.0, |a| a / self.rank() as f32)
    }

    /// Whether this layer adapts the weight the model calls `canonical` (`....to_q.weight`).
    fn targets(&self, canonical: &str) -> bool {
        let Some(module) = canonical.strip_suffix(".weight") else { return false };
        if self.kohya {
            let flat = module.replace('.', "_");
            self.module == flat || self.module == format!("text_model_{flat}")
        } else {
            self.module == module || self.module == format!("text_model.{module}")
        }
    }

    /// Whether its matrices fit a weight of `shape` (torch layout: `[out, in, (kh, kw)]`).
    fn fits(&self, shape: &[usize]) -> bool {
        let (down, up) = (&self.down.info.shape, &self.up.info.shape);
        shape.len() == down.len() && up.len() == down.len() && up[0] == shape[0] && down[1..] == shape[1..]
    }
}

/// A LoRA file, read and checked.
#[derive(Debug, Clone)]
pub struct Lora {
    /// What errors and the PNG's parameters call it (the file's stem).
    pub name: String,
    layers: Vec<Layer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// `(component, module, kohya, role)` of a tensor name; `None` for a name that is not a LoRA's.
fn classify(name: &str) -> Option<(Component, &str, bool, Role)> {
    for (prefix, component) in
        [("lora_unet_", Component::Unet), ("lora_te_", Component::TextEncoder), ("lora_te1_", Component::TextEncoder)]
    {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (module, suffix) = rest.split_once('.')?;
            let role = match suffix {
                "lora_down.weight" => Role::Down,
                "lora_up.weight" => Role::Up,
                "alpha" => Role::Alpha,
                _ => return None,
            };
            return Some((component, module, true, role));
        }
    }
    for (prefix, component) in [("unet.", Component::Unet), ("text_encoder.", Component::TextEncoder)] {
        if let Some(rest) = name.strip_prefix(prefix) {
            for (suffix, role) in [
                (".lora_A.weight", Role::Down),
                (".lora_B.weight", Role::Up),
                (".lora.down.weight", Role::Down),
                (".lora.up.weight", Role::Up),
            ] {
                if let Some(module) = rest.strip_suffix(suffix) {
                    return Some((component, module, false, role));
                }
            }
        }
    }
    None
}

/// A scalar tensor's value (kohya's `alpha`), in any float dtype.
fn scalar(t: &HostTensor) -> Option<f32> {
    t.info.to_f32(&t.bytes).ok().filter(|v| v.len() == 1).map(|v| v[0])
}

impl Lora {
    /// Reads a LoRA safetensors file (either naming) and checks that every layer has its two matrices
    /// of consistent shapes.
    pub fn from_source<B: ByteSource>(name: &str, source: B) -> Result<Self, LoraError> {
        let invalid = |message: String| LoraError::Invalid { name: name.to_string(), message };
        let mut reader =
            SafetensorsReader::new(source).map_err(|error| LoraError::File { name: name.to_string(), error })?;
        let infos: Vec<TensorInfo> = reader.header().tensors().cloned().collect();
        let mut parts: BTreeMap<(Component, String, bool), BTreeMap<Role, HostTensor>> = BTreeMap::new();
        for info in infos {
            let (component, module, kohya, role) = classify(&info.name)
                .ok_or_else(|| invalid(format!("{:?} is not a LoRA tensor (kohya or PEFT naming)", info.name)))?;
            let key = (component, module.to_string(), kohya);
            let (info, bytes) =
                reader.read_bytes(&info.name).map_err(|error| LoraError::File { name: name.to_string(), error })?;
            parts.entry(key).or_default().insert(role, HostTensor { info, bytes });
        }
        let mut layers = Vec::with_capacity(parts.len());
        for ((component, module, kohya), mut roles) in parts {
            let (Some(down), Some(up)) = (roles.remove(&Role::Down), roles.remove(&Role::Up)) else {
                return Err(invalid(format!("{module}: needs both its down and up matrices")));
            };
            let alpha = match roles.remove(&Role::Alpha) {
                Some(a) => Some(scalar(&a).ok_or_else(|| invalid(format!("{module}: alpha is not a scalar")))?),
                None => None,
            };
            let (d, u) = (&down.info.shape, &up.info.shape);
            let consistent = (d.len() == 2 || d.len() == 4)
                && u.len() == d.len()
                && d[0] > 0
                && u[1] == d[0]
                && u[2..].iter().all(|&s| s == 1);
            if !consistent {
                return Err(invalid(format!("{module}: down {d:?} and up {u:?} are not a low-rank pair")));
            }
            if alpha.is_some_and(|a| !a.is_finite()) {
                return Err(invalid(format!("{module}: alpha is not finite")));
            }
            layers.push(Layer { component, module, kohya, down, up, alpha });
        }
        if layers.is_empty() {
            return Err(invalid("no LoRA layers in the file".into()));
        }
        Ok(Self { name: name.to_string(), layers })
    }

    /// Layers per component.
    pub fn layer_count(&self, component: Component) -> usize {
        self.layers.iter().filter(|l| l.component == component).count()
    }
}

/// AUTOMATIC1111's `<lora:name:weight>` tags (weight 1 when left out): the prompt without them, and the
/// tags in order. Other `<kind:...>` tags stay text.
pub fn extract_tags(prompt: &str) -> Result<(String, Vec<(String, f32)>), LoraError> {
    let (mut text, mut tags, mut rest) = (String::new(), Vec::new(), prompt);
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else { break };
        let args = &rest[start + "<lora:".len()..start + len];
        let (name, weight) = match args.split(':').collect::<Vec<_>>().as_slice() {
            [name] => (*name, 1.0),
            [name, weight, ..] => {
                let w = weight.trim().parse::<f32>().ok().filter(|w| w.is_finite());
                let w = w.ok_or_else(|| LoraError::Invalid {
                    name: name.to_string(),
                    message: format!("the weight in <lora:{args}> is not a number"),
                })?;
                (*name, w)
            }
            [] => unreachable!("split yields at least one piece"),
        };
        if name.is_empty() {
            return Err(LoraError::Invalid { name: String::new(), message: format!("<lora:{args}> names no LoRA") });
        }
        text.push_str(&rest[..start]);
        tags.push((name.to_string(), weight));
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

/// A1111's short hash of a LoRA file (its "addnet" hash): the sha256 of the data after the safetensors
/// header, 12 hex digits; `None` if the file is too short to have a header.
pub fn short_hash(file: &[u8]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let data_start = SafetensorsHeader::prefix_len(file).ok()?;
    let data = file.get(usize::try_from(data_start).ok()?..)?;
    Some(format!("{:x}", Sha256::digest(data))[..12].to_string())
}

/// Where each layer of `loras` (with its weight) lands among `weights` (the file's tensors with the
/// model's names for them): the file name of a weight -> the layers merged into it (with their
/// weights and their LoRA's name), in order. Every layer of `component` must find its weight.
fn plan<'a>(
    loras: impl IntoIterator<Item = (&'a Lora, f32)>,
    weights: &[(TensorInfo, String)],
    component: Component,
) -> Result<HashMap<String, Vec<Merge<'a>>>, LoraError> {
    let mut merges: HashMap<String, Vec<Merge<'a>>> = HashMap::new();
    for (lora, weight) in loras {
        let mut unmatched = Vec::new();
        for layer in lora.layers.iter().filter(|l| l.component == component) {
            match weights.iter().find(|(info, canonical)| layer.targets(canonical) && layer.fits(&info.shape)) {
                Some((info, _)) => merges.entry(info.name.clone()).or_default().push((layer, weight, &lora.name)),
                None => unmatched.push(layer.module.clone()),
            }
        }
        if let Some(first) = unmatched.first() {
            return Err(LoraError::Unmatched {
                name: lora.name.clone(),
                component: component.label(),
                count: unmatched.len(),
                first: first.clone(),
            });
        }
    }
    Ok(merges)
}

/// A layer to merge into a weight: the layer, its weight and its LoRA's name.
type Merge<'a> = (&'a Layer, f32, &'a str);

/// A tensor source that adds the LoRAs' deltas to the weights they adapt as the model reads them, and
/// (when [`Self::recording`]) notes every parameter loaded from it as a [`Target`]: what [`Merged`]
/// needs to find a weight again in the built model.
pub struct WithLoras<'a, S> {
    inner: S,
    /// File name of a weight -> the layers merged into it.
    merges: HashMap<String, Vec<Merge<'a>>>,
    /// The component the source holds, the model's names for its tensors, and where targets go.
    record: Option<(Component, KeyMap, TargetSink)>,
}

impl<'a, S: TensorSource> WithLoras<'a, S> {
    /// `inner` with `loras` (each with its weight) merged into `component`'s weights; `key_map` gives the
    /// model's names for the file's. Every layer of `component` must find its weight.
    pub fn new(inner: S, key_map: KeyMap, component: Component, loras: &'a [(Lora, f32)]) -> Result<Self, LoraError> {
        let weights: Vec<(TensorInfo, String)> =
            inner.infos().into_iter().filter_map(|i| key_map(&i.name).map(|canonical| (i, canonical))).collect();
        let merges = plan(loras.iter().map(|(l, w)| (l, *w)), &weights, component)?;
        Ok(Self { inner, merges, record: None })
    }

    /// `inner` as it is (a component no LoRA adapts).
    pub fn plain(inner: S) -> Self {
        Self { inner, merges: HashMap::new(), record: None }
    }

    /// Also notes each parameter loaded from the source into `sink`: `adapted` is the component it holds
    /// and the model's names for its tensors (`model_folder::Part::lora_adapted`); `None` (a component
    /// no LoRA adapts) notes nothing.
    pub fn recording(mut self, adapted: Option<(Component, KeyMap)>, sink: TargetSink) -> Self {
        self.record = adapted.map(|(component, key_map)| (component, key_map, sink));
        self
    }
}

/// `t`'s values as a `[rows, rest]` matrix on the host.
fn matrix_data(t: &HostTensor, device: &Device) -> Result<TensorData, WeightsError> {
    let rows = t.info.shape[0];
    let info = TensorInfo { shape: vec![rows, t.info.shape[1..].iter().product()], ..t.info.clone() };
    host_data(&info, &t.bytes, false, device)
}

/// One layer's delta, ready to add: its matrices on the host and its factor (`weight * alpha / rank`).
struct Delta {
    up: TensorData,
    down: TensorData,
    factor: f32,
}

impl Delta {
    fn new(layer: &Layer, weight: f32, device: &Device) -> Result<Self, WeightsError> {
        Ok(Self {
            up: matrix_data(&layer.up, device)?,
            down: matrix_data(&layer.down, device)?,
            factor: layer.scale() * weight,
        })
    }

    /// `weight + factor * up @ down`, in the weight's layout (transposed where the model asked): one
    /// function for the load-time merge and the browser's re-merge, so both give the same values.
    fn add_to<const D: usize>(&self, weight: Tensor<D>, transpose: bool, device: &Device) -> Tensor<D> {
        let up = Tensor::<2>::from_data(self.up.clone(), device);
        let down = Tensor::<2>::from_data(self.down.clone(), device);
        // [out, rank] x [rank, in * kh * kw]
        let delta = up.matmul(down) * self.factor;
        let delta = if transpose { delta.transpose() } else { delta };
        let dims = weight.dims();
        weight + delta.reshape(dims)
    }
}

impl<S: TensorSource> TensorSource for WithLoras<'_, S> {
    fn infos(&self) -> Vec<TensorInfo> {
        self.inner.infos()
    }

    fn fetch<const D: usize>(
        &mut self,
        info: &TensorInfo,
        transpose: bool,
        device: &Device,
    ) -> Result<Tensor<D>, WeightsError> {
        let mut weight: Tensor<D> = self.inner.fetch(info, transpose, device)?;
        let Some(layers) = self.merges.get(&info.name) else { return Ok(weight) };
        for (layer, w, _) in layers {
            weight = Delta::new(layer, *w, device)?.add_to(weight, transpose, device);
        }
        Ok(weight)
    }

    fn fetch_rows(
        &mut self,
        info: &TensorInfo,
        max_rows: usize,
        device: &Device,
    ) -> Result<Vec<Tensor<2>>, WeightsError> {
        // Only embedding tables are read in row blocks, and no LoRA naming adapts one.
        if self.merges.contains_key(&info.name) {
            return Err(WeightsError::BadEntry {
                name: info.name.clone(),
                reason: "a LoRA on an embedding table is not supported".into(),
            });
        }
        self.inner.fetch_rows(info, max_rows, device)
    }

    fn loaded_param(&mut self, info: &TensorInfo, transpose: bool, param: ParamId) {
        if let Some((component, key_map, sink)) = &self.record
            && let Some(canonical) = key_map(&info.name)
        {
            let target = Target { component: *component, info: info.clone(), canonical, transpose, param };
            sink.borrow_mut().push(target);
        }
        self.inner.loaded_param(info, transpose, param)
    }
}

impl<S: TensorSource> IntoTensorSource for WithLoras<'_, S> {
    type Source = Self;
    fn into_tensor_source(self) -> Result<Self::Source, WeightsError> {
        Ok(self)
    }
}

/// A weight a LoRA may adapt, as the model loaded it: the tensor in the file, the model's name for it,
/// whether it was transposed, and the parameter that holds it.
#[derive(Debug, Clone)]
pub struct Target {
    pub component: Component,
    pub info: TensorInfo,
    pub canonical: String,
    pub transpose: bool,
    pub param: ParamId,
}

/// Where [`WithLoras::recording`] leaves its targets (one sink for every component of a model).
pub type TargetSink = Rc<RefCell<Vec<Target>>>;

/// A LoRA merged into a model now: its name, its file's sha256 (what tells two files of one name
/// apart) and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub name: String,
    pub sha256: String,
    pub weight: f32,
}

/// LoRAs merged into a built model's text encoder and U-Net, changed without loading the model again.
///
/// Each weight a LoRA changes is rebuilt from its original, kept (on the device) while any LoRA adapts
/// it: a LoRA's weight can change any number of times without drift, the deltas add as the native load
/// adds them (the same values, see `Delta::add_to`), and a removal puts back the very tensor that was
/// loaded. The cost is one copy of each adapted weight while adapted ([`Self::kept_bytes`]); merging
/// (instead of a low-rank side path) keeps every step's cost exactly what it is without LoRAs.
pub struct Merged {
    targets: Vec<Target>,
    /// The loaded tensor (a `Tensor<D>`) of each adapted parameter, and its size in bytes.
    originals: HashMap<ParamId, (Box<dyn Any>, u64)>,
    applied: Vec<Applied>,
}

impl Merged {
    /// Nothing merged into a model whose adaptable weights are `targets`.
    pub fn new(targets: Vec<Target>) -> Self {
        Self { targets, originals: HashMap::new(), applied: Vec::new() }
    }

    /// The LoRAs merged now, in order.
    pub fn applied(&self) -> &[Applied] {
        &self.applied
    }

    /// Weights adapted now.
    pub fn adapted_weights(&self) -> usize {
        self.originals.len()
    }

    /// Device bytes held by the kept originals.
    pub fn kept_bytes(&self) -> u64 {
        self.originals.values().map(|(_, bytes)| bytes).sum()
    }

    /// Merges `loras` (each with its weight and file sha256), in place of what was merged before, into
    /// `text_encoder` and `unet` (the modules this was made for). Every layer must land on a weight of
    /// the model, and every matrix must be readable, before anything changes: on an error the modules
    /// are not touched.
    pub fn apply(
        &mut self,
        loras: &[(&Lora, String, f32)],
        text_encoder: ClipTextModel,
        unet: UNet2DConditionModel,
        device: &Device,
    ) -> Result<(ClipTextModel, UNet2DConditionModel), LoraError> {
        let mut planned: HashMap<ParamId, (bool, Vec<Delta>)> = HashMap::new();
        for component in [Component::TextEncoder, Component::Unet] {
            let weights: Vec<(TensorInfo, String)> = self
                .targets
                .iter()
                .filter(|t| t.component == component)
                .map(|t| (t.info.clone(), t.canonical.clone()))
                .collect();
            let merges = plan(loras.iter().map(|(l, _, w)| (*l, *w)), &weights, component)?;
            for target in self.targets.iter().filter(|t| t.component == component) {
                let Some(layers) = merges.get(&target.info.name) else { continue };
                let mut deltas = Vec::with_capacity(layers.len());
                for (layer, weight, name) in layers {
                    let delta = Delta::new(layer, *weight, device)
                        .map_err(|error| LoraError::File { name: name.to_string(), error })?;
                    deltas.push(delta);
                }
                planned.insert(target.param, (target.transpose, deltas));
            }
        }
        let mut mapper = Remerge { planned, originals: &mut self.originals, device };
        let text_encoder = text_encoder.map(&mut mapper);
        let unet = unet.map(&mut mapper);
        self.applied = loras
            .iter()
            .map(|(l, sha256, weight)| Applied { name: l.name.clone(), sha256: sha256.clone(), weight: *weight })
            .collect();
        Ok((text_encoder, unet))
    }
}

/// The module mapper of [`Merged::apply`]: every planned parameter becomes its original plus its
/// deltas; an adapted one no longer planned gets its original back.
struct Remerge<'a> {
    planned: HashMap<ParamId, (bool, Vec<Delta>)>,
    originals: &'a mut HashMap<ParamId, (Box<dyn Any>, u64)>,
    device: &'a Device,
}

impl ModuleMapper for Remerge<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let planned = self.planned.remove(&id);
        let original = self.originals.get(&id).and_then(|(t, _)| t.downcast_ref::<Tensor<D>>()).cloned();
        if planned.is_none() && original.is_none() {
            return param;
        }
        let base = original.unwrap_or_else(|| param.val());
        let Some((transpose, deltas)) = planned else {
            self.originals.remove(&id);
            return Param::initialized(id, base);
        };
        self.originals.entry(id).or_insert_with(|| {
            let bytes = base.shape().num_elements() as u64 * base.dtype().size() as u64;
            (Box::new(base.clone()), bytes)
        });
        let merged = deltas.iter().fold(base, |w, delta| delta.add_to(w, transpose, self.device));
        Param::initialized(id, merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tags_are_taken_out() {
        let (text, tags) = extract_tags("a cat <lora:style:0.8>, <lora:detail> on a mat").unwrap();
        assert_eq!(text, "a cat ,  on a mat");
        assert_eq!(tags, vec![("style".to_string(), 0.8), ("detail".to_string(), 1.0)]);
        // A1111's third argument (the U-Net's own weight) is not taken apart: the first weight counts.
        assert_eq!(extract_tags("<lora:x:0.5:0.7>").unwrap().1, vec![("x".to_string(), 0.5)]);
        assert_eq!(extract_tags("<hypernet:x:1> <lora:unclosed").unwrap().1, vec![]);
        assert!(extract_tags("<lora:x:heavy>").is_err());
        assert!(extract_tags("<lora::1>").is_err());
        assert!(extract_tags("<lora:x:inf>").is_err());
    }

    #[test]
    fn the_short_hash_skips_the_header() {
        let mut file = 2u64.to_le_bytes().to_vec();
        file.extend(b"{}abc");
        // sha256("abc")
        assert_eq!(short_hash(&file).unwrap(), "ba7816bf8f01");
        assert_eq!(short_hash(b"short"), None);
    }

    #[test]
    fn names_of_both_namings_are_classified() {
        let kohya = classify("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight");
        assert_eq!(
            kohya.map(|(c, m, k, _)| (c, m, k)),
            Some((Component::Unet, "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", true))
        );
        assert!(
            classify("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha").is_some_and(|c| c.3 == Role::Alpha)
        );
        let peft = classify("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight");
        assert_eq!(
            peft.map(|(c, m, k, r)| (c, m, k, r)),
            Some((Component::TextEncoder, "text_model.encoder.layers.0.self_attn.q_proj", false, Role::Up))
        );
        assert!(classify("unet.conv_in.weight").is_none());
        assert!(classify("lora_unet_x.hada_w1_a").is_none());
    }

    fn layer(module: &str, kohya: bool) -> Layer {
        let t = |shape: Vec<usize>| HostTensor {
            info: TensorInfo { name: String::new(), dtype: crate::weights::Dtype::F32, shape, start: 0, end: 0 },
            bytes: vec![],
        };
        Layer {
            component: Component::TextEncoder,
            module: module.into(),
            kohya,
            down: t(vec![4, 32]),
            up: t(vec![64, 4]),
            alpha: Some(2.0),
        }
    }

    #[test]
    fn kohya_and_peft_modules_find_their_weights() {
        let target = "encoder.layers.0.self_attn.q_proj.weight";
        assert!(layer("encoder_layers_0_self_attn_q_proj", true).targets(target));
        assert!(layer("text_model_encoder_layers_0_self_attn_q_proj", true).targets(target));
        assert!(layer("encoder.layers.0.self_attn.q_proj", false).targets(target));
        assert!(layer("text_model.encoder.layers.0.self_attn.q_proj", false).targets(target));
        assert!(!layer("encoder_layers_0_self_attn_k_proj", true).targets(target));
        assert!(!layer("encoder_layers_0_self_attn_q_proj", true).targets("encoder.layers.0.self_attn.q_proj.bias"));
        // [out 64, in 32] fits; a 3x3 kernel or another width does not.
        let l = layer("m", true);
        assert!(l.fits(&[64, 32]));
        assert!(!l.fits(&[64, 16]));
        assert!(!l.fits(&[64, 32, 3, 3]));
        assert_eq!(l.scale(), 0.5);
    }
}
