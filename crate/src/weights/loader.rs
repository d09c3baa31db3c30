//! Building burn modules from a safetensors file, tensor by tensor, under the model's own key names.
//!
//! A key mapping turns each name in the file into the canonical name the model asks for (diffusers
//! 0.42 / transformers 5 write one scheme, the Hub's SD repos another), so both load identically.
//! Every tensor the model asks for must exist with the expected shape, and every tensor in the file
//! must be used (or be declared ignorable by the mapping): anything else is an error naming the tensors.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, FloatDType, Tensor, TensorData, f16};

use super::{ByteSource, Dtype, SafetensorsReader, TensorInfo, WeightsError};

/// Errors of loading a model's weights.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Tensors the model needs are not in the file.
    #[error("missing tensors: {}", .0.join(", "))]
    Missing(Vec<String>),
    /// Tensors in the file that the model does not use.
    #[error("unexpected tensors: {}", .0.join(", "))]
    Unexpected(Vec<String>),
    /// The config asks for an architecture this crate does not implement (yet).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The config is out of bounds or inconsistent (checked before anything is built from it).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A tensor has another shape than the config implies.
    #[error("tensor {name} has shape {actual:?}, the config implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, actual: Vec<usize> },
}

/// How a file's tensor names map to the model's canonical names: `None` drops a tensor the model does
/// not need (such as a stored `position_ids` buffer).
pub type KeyMap = fn(&str) -> Option<String>;

/// Where a loader's tensors come from: a safetensors file read tensor by tensor on the host (native,
/// tests), or tensors already uploaded to the device (the browser streams them from IndexedDB, see
/// [`DeviceTensors`]).
pub trait TensorSource {
    /// Every tensor the source holds, under its name in the file.
    fn infos(&self) -> Vec<TensorInfo>;
    /// The tensor `info` on `device` in the device's float dtype, with its shape (2-D: transposed when
    /// asked).
    fn fetch<const D: usize>(
        &mut self,
        info: &TensorInfo,
        transpose: bool,
        device: &Device,
    ) -> Result<Tensor<D>, WeightsError>;
    /// The 2-D tensor `info` in row blocks of at most `max_rows` rows, each its own device buffer (a
    /// table too large for one GPU binding, see [`TensorLoader::row_blocks`]).
    fn fetch_rows(
        &mut self,
        info: &TensorInfo,
        max_rows: usize,
        device: &Device,
    ) -> Result<Vec<Tensor<2>>, WeightsError>;
    /// Told of every parameter the loader made from the tensor `info` (fetched transposed or not):
    /// what a source keeps to find a weight again once the model is built (LoRAs in the browser,
    /// [`crate::lora::WithLoras::recording`]). Nothing by default.
    fn loaded_param(&mut self, _info: &TensorInfo, _transpose: bool, _param: ParamId) {}
}

/// What a model's `load` accepts: any [`ByteSource`] holding a safetensors file, or [`DeviceTensors`].
pub trait IntoTensorSource {
    type Source: TensorSource;
    fn into_tensor_source(self) -> Result<Self::Source, WeightsError>;
}

impl<B: ByteSource> IntoTensorSource for B {
    type Source = SafetensorsReader<B>;
    fn into_tensor_source(self) -> Result<Self::Source, WeightsError> {
        SafetensorsReader::new(self)
    }
}

impl<B: ByteSource> TensorSource for SafetensorsReader<B> {
    fn infos(&self) -> Vec<TensorInfo> {
        self.header().tensors().cloned().collect()
    }

    fn fetch<const D: usize>(
        &mut self,
        info: &TensorInfo,
        transpose: bool,
        device: &Device,
    ) -> Result<Tensor<D>, WeightsError> {
        let (info, bytes) = self.read_bytes(&info.name)?;
        Ok(Tensor::from_data(host_data(&info, &bytes, transpose, device)?, device))
    }

    fn fetch_rows(
        &mut self,
        info: &TensorInfo,
        max_rows: usize,
        device: &Device,
    ) -> Result<Vec<Tensor<2>>, WeightsError> {
        let (info, bytes) = self.read_bytes(&info.name)?;
        let [rows, cols] = two_d(&info)?;
        let row_bytes = cols * info.dtype.size() as usize;
        (0..rows)
            .step_by(max_rows.max(1))
            .map(|first| {
                let last = (first + max_rows.max(1)).min(rows);
                let start = info.start + (first * row_bytes) as u64;
                let end = info.start + (last * row_bytes) as u64;
                let block = TensorInfo { shape: vec![last - first, cols], start, end, ..info.clone() };
                let data = host_data(&block, &bytes[first * row_bytes..last * row_bytes], false, device)?;
                Ok(Tensor::from_data(data, device))
            })
            .collect()
    }
}

fn two_d(info: &TensorInfo) -> Result<[usize; 2], WeightsError> {
    info.shape.clone().try_into().map_err(|_| WeightsError::BadEntry {
        name: info.name.clone(),
        reason: format!("{}-D, 2-D expected", info.shape.len()),
    })
}

/// One tensor's bytes as [`TensorData`] in the device's float dtype: fp16 stays f16 on a device computing
/// in f16 (WebGPU with shader-f16), everything else becomes f32 (Flex, WebGPU without shader-f16).
/// 2-D tensors can be transposed on the way (in cache-friendly tiles).
pub fn host_data(
    info: &TensorInfo,
    bytes: &[u8],
    transpose: bool,
    device: &Device,
) -> Result<TensorData, WeightsError> {
    let shape = &info.shape;
    let out_shape: Vec<usize> = if transpose { vec![shape[1], shape[0]] } else { shape.clone() };
    Ok(if info.dtype == Dtype::F16 && device.settings().float_dtype == FloatDType::F16 {
        let halves: Vec<f16> = bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        TensorData::new(arrange(halves, shape, transpose), out_shape)
    } else {
        TensorData::new(arrange(info.to_f32(bytes)?, shape, transpose), out_shape)
    })
}

/// Tensors of one safetensors file already on the device, flat, by name in the file. Cloning is cheap
/// (tensors are shared handles): the VAE's encoder and decoder each take their half of one upload.
#[derive(Clone, Default)]
pub struct DeviceTensors {
    /// Each tensor as flat pieces in order: one, or (a tensor too large for one GPU buffer) the pieces it
    /// was uploaded in, joined or kept in row blocks when the model takes it.
    tensors: BTreeMap<String, (TensorInfo, Vec<Tensor<1>>)>,
}

impl DeviceTensors {
    /// Adds one tensor, uploaded flat (`numel` elements, as stored: not transposed) in one or more
    /// pieces. A 2-D tensor's pieces must hold whole rows, so that it can be taken in row blocks (a
    /// piece is never split: one piece gives one block, whatever its size).
    pub fn insert(&mut self, info: TensorInfo, pieces: Vec<Tensor<1>>) {
        self.tensors.insert(info.name.clone(), (info, pieces));
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl IntoTensorSource for DeviceTensors {
    type Source = DeviceTensors;
    fn into_tensor_source(self) -> Result<Self, WeightsError> {
        Ok(self)
    }
}

impl TensorSource for DeviceTensors {
    fn infos(&self) -> Vec<TensorInfo> {
        self.tensors.values().map(|(info, _)| info.clone()).collect()
    }

    fn fetch<const D: usize>(
        &mut self,
        info: &TensorInfo,
        transpose: bool,
        _device: &Device,
    ) -> Result<Tensor<D>, WeightsError> {
        let flat = join(self.take(info)?);
        let shape: [usize; D] = info.shape.clone().try_into().map_err(|_| WeightsError::BadEntry {
            name: info.name.clone(),
            reason: format!("{}-D, {D}-D expected", info.shape.len()),
        })?;
        let tensor = flat.reshape(shape);
        // On the GPU a transposed view costs nothing: the matmul reads either layout.
        Ok(if transpose { tensor.transpose() } else { tensor })
    }

    fn fetch_rows(
        &mut self,
        info: &TensorInfo,
        max_rows: usize,
        _device: &Device,
    ) -> Result<Vec<Tensor<2>>, WeightsError> {
        let [_, cols] = two_d(info)?;
        let bad = |reason: String| WeightsError::BadEntry { name: info.name.clone(), reason };
        // Consecutive upload pieces joined while they fit in `max_rows` (a piece is never split).
        let mut blocks = Vec::new();
        let mut group: Vec<Tensor<1>> = Vec::new();
        let mut group_rows = 0;
        let mut close = |group: &mut Vec<Tensor<1>>, rows: usize| {
            if !group.is_empty() {
                blocks.push(join(std::mem::take(group)).reshape([rows, cols]));
            }
        };
        for piece in self.take(info)? {
            let n = piece.dims()[0];
            if n % cols != 0 {
                return Err(bad(format!("an uploaded piece of {n} values is not whole rows of {cols}")));
            }
            if group_rows > 0 && group_rows + n / cols > max_rows {
                close(&mut group, group_rows);
                group_rows = 0;
            }
            group.push(piece);
            group_rows += n / cols;
        }
        close(&mut group, group_rows);
        Ok(blocks)
    }
}

/// Flat pieces as one tensor (a single piece as it is, without a copy).
fn join(mut pieces: Vec<Tensor<1>>) -> Tensor<1> {
    if pieces.len() == 1 { pieces.pop().expect("one piece") } else { Tensor::cat(pieces, 0) }
}

impl DeviceTensors {
    fn take(&mut self, info: &TensorInfo) -> Result<Vec<Tensor<1>>, WeightsError> {
        let (_, pieces) = self
            .tensors
            .remove(&info.name)
            .ok_or_else(|| WeightsError::BadEntry { name: info.name.clone(), reason: "already taken".into() })?;
        Ok(pieces)
    }
}

/// Loads tensors by canonical name onto a device, in the device's float dtype (fp16 stays f16 on an f16 device).
pub struct TensorLoader<S> {
    source: S,
    device: Device,
    /// Canonical name -> the tensor in the file.
    names: BTreeMap<String, TensorInfo>,
    used: BTreeSet<String>,
    missing: Vec<String>,
}

impl<S: TensorSource> TensorLoader<S> {
    /// Reads the file's header and applies `key_map` to its names.
    pub fn new<I: IntoTensorSource<Source = S>>(
        source: I,
        key_map: KeyMap,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let source = source.into_tensor_source()?;
        let names = source.infos().into_iter().filter_map(|t| Some((key_map(&t.name)?, t))).collect();
        Ok(Self { source, device: device.clone(), names, used: BTreeSet::new(), missing: Vec::new() })
    }

    /// The tensor `name` with the given shape. A missing tensor is recorded and reported by
    /// [`Self::finish`] together with the others, so one run names everything that is wrong; until
    /// then it is a one-element placeholder, so a model must not be used before `finish` succeeds.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, LoadError> {
        self.fetch(name, shape, false)
    }

    /// The file's tensor for `name` once its shape is checked, or `None` for a missing tensor (recorded
    /// for `finish`; the caller returns a placeholder).
    fn lookup(&mut self, name: &str, shape: &[usize]) -> Result<Option<TensorInfo>, LoadError> {
        let Some(info) = self.names.get(name) else {
            self.missing.push(name.to_string());
            return Ok(None);
        };
        if info.shape != shape {
            return Err(LoadError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        self.used.insert(name.to_string());
        Ok(Some(info.clone()))
    }

    /// The tensor on the device (transposed if asked, 2-D only), or the one-element placeholder of a
    /// missing tensor (recorded for `finish`).
    fn fetch<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        transpose: bool,
    ) -> Result<Tensor<D>, LoadError> {
        match self.lookup(name, &shape)? {
            Some(info) => Ok(self.source.fetch(&info, transpose, &self.device)?),
            None => Ok(Tensor::zeros([1; D], &self.device)),
        }
    }

    /// [`Self::fetch`] as a parameter, which the source is told of.
    fn fetch_param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        transpose: bool,
    ) -> Result<Param<Tensor<D>>, LoadError> {
        match self.lookup(name, &shape)? {
            Some(info) => {
                let param = Param::from_tensor(self.source.fetch(&info, transpose, &self.device)?);
                self.source.loaded_param(&info, transpose, param.id);
                Ok(param)
            }
            None => Ok(Param::from_tensor(Tensor::zeros([1; D], &self.device))),
        }
    }

    /// The 2-D tensor `name` (`[rows, cols]`) in row blocks of at most `max_rows` rows, each its own
    /// device buffer: a table larger than one GPU binding may hold (CLIP's token embedding is 145 MiB as
    /// f32, WebGPU guarantees 128 MiB) is never joined into one buffer. A missing tensor is recorded as
    /// in [`Self::tensor`].
    pub fn row_blocks(&mut self, name: &str, shape: [usize; 2], max_rows: usize) -> Result<Vec<Tensor<2>>, LoadError> {
        match self.lookup(name, &shape)? {
            Some(info) => Ok(self.source.fetch_rows(&info, max_rows, &self.device)?),
            None => Ok(vec![Tensor::zeros([1, 1], &self.device)]),
        }
    }

    /// A parameter of the model (a tensor a LoRA may patch).
    pub fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>, LoadError> {
        self.fetch_param(name, shape, false)
    }

    /// A torch `nn.Linear` (`weight [out, in]`, optional `bias [out]`).
    pub fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear, LoadError> {
        let mut linear = LinearConfig::new(d_in, d_out).with_bias(bias).init(&self.device);
        // burn multiplies by [in, out]. A transposed view of torch's [out, in] would need no copy, but
        // the CPU matmul is 1.8x slower on it, so the weight is transposed on the host while loading.
        linear.weight = self.fetch_param(&format!("{prefix}.weight"), [d_out, d_in], true)?;
        if bias {
            linear.bias = Some(self.param(&format!("{prefix}.bias"), [d_out])?);
        }
        Ok(linear)
    }

    /// A torch `nn.GroupNorm`.
    pub fn group_norm(
        &mut self,
        prefix: &str,
        groups: usize,
        channels: usize,
        epsilon: f64,
    ) -> Result<GroupNorm, LoadError> {
        let mut norm = GroupNormConfig::new(groups, channels).with_epsilon(epsilon).init(&self.device);
        norm.gamma = Some(self.param(&format!("{prefix}.weight"), [channels])?);
        norm.beta = Some(self.param(&format!("{prefix}.bias"), [channels])?);
        Ok(norm)
    }

    /// A torch `nn.Conv2d` with a square kernel, `stride` and symmetric `padding`.
    pub fn conv2d(
        &mut self,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d, LoadError> {
        let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .init(&self.device);
        conv.weight = self.param(&format!("{prefix}.weight"), [c_out, c_in, kernel, kernel])?;
        conv.bias = Some(self.param(&format!("{prefix}.bias"), [c_out])?);
        Ok(conv)
    }

    /// A torch `nn.Embedding` (`weight [n, d]`).
    pub fn embedding(&mut self, name: &str, n: usize, d: usize) -> Result<Embedding, LoadError> {
        let mut embedding = EmbeddingConfig::new(n, d).init(&self.device);
        embedding.weight = self.param(name, [n, d])?;
        Ok(embedding)
    }

    /// Checks that nothing was missing and that every tensor of the file was used.
    pub fn finish(self) -> Result<(), LoadError> {
        if !self.missing.is_empty() {
            return Err(LoadError::Missing(self.missing));
        }
        let unused: Vec<String> = self
            .names
            .into_iter()
            .filter(|(canonical, _)| !self.used.contains(canonical))
            .map(|(_, f)| f.name)
            .collect();
        if !unused.is_empty() {
            return Err(LoadError::Unexpected(unused));
        }
        Ok(())
    }
}

/// The values as stored, or (2-D `[rows, cols]` row-major) transposed to `[cols, rows]`, in 32x32
/// tiles so that both sides stay in cache (a 1280x10240 weight takes 3x longer element by element).
fn arrange<T: Copy + Default>(values: Vec<T>, shape: &[usize], transpose: bool) -> Vec<T> {
    if !transpose {
        return values;
    }
    const TILE: usize = 32;
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = vec![T::default(); values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn device_tensors_give_row_blocks_without_joining_past_the_limit() {
        let device = Device::flex();
        let table: Vec<f32> = (0..30).map(|v| v as f32).collect();
        let info = TensorInfo { name: "t".into(), dtype: Dtype::F32, shape: vec![10, 3], start: 0, end: 120 };
        // Uploaded as 4 + 4 + 2 rows.
        let pieces = |bounds: &[(usize, usize)]| {
            bounds.iter().map(|&(a, b)| Tensor::<1>::from_floats(&table[a * 3..b * 3], &device)).collect::<Vec<_>>()
        };
        let uploaded = pieces(&[(0, 4), (4, 8), (8, 10)]);
        for (max_rows, rows) in [(8, vec![8, 2]), (5, vec![4, 4, 2]), (10, vec![10]), (1, vec![4, 4, 2])] {
            let mut tensors = DeviceTensors::default();
            tensors.insert(info.clone(), uploaded.clone());
            let blocks = tensors.fetch_rows(&info, max_rows, &device).unwrap();
            assert_eq!(
                blocks.iter().map(|b| b.dims()).collect::<Vec<_>>(),
                rows.iter().map(|&r| [r, 3]).collect::<Vec<_>>()
            );
            let joined: Vec<f32> = blocks.into_iter().flat_map(values).collect();
            assert_eq!(joined, table, "max_rows {max_rows}");
        }
        // A piece that splits a row cannot make row blocks.
        let mut tensors = DeviceTensors::default();
        tensors.insert(
            info.clone(),
            vec![Tensor::<1>::from_floats(&table[..16], &device), Tensor::from_floats(&table[16..], &device)],
        );
        assert!(tensors.fetch_rows(&info, 4, &device).is_err());
    }

    #[test]
    fn a_file_gives_row_blocks_of_at_most_max_rows() {
        let device = Device::flex();
        // A safetensors file with one f16 [5, 2] tensor.
        let values: Vec<f32> = (0..10).map(|v| v as f32 * 0.5).collect();
        let header = br#"{"t":{"dtype":"F16","shape":[5,2],"data_offsets":[0,20]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()));
        let mut w = TensorLoader::new(std::io::Cursor::new(file), |n| Some(n.to_string()), &device).unwrap();
        let blocks = w.row_blocks("t", [5, 2], 2).unwrap();
        w.finish().unwrap();
        assert_eq!(blocks.iter().map(|b| b.dims()[0]).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(blocks.into_iter().flat_map(super::tests::values).collect::<Vec<_>>(), values);
    }
}
