//! The safetensors format: an 8-byte little-endian header length, a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets}` (offsets relative to the data section that follows), and the data.
//!
//! [`SafetensorsHeader::parse`] works on a prefix of the file, so a reader can fetch the first bytes of
//! a download or an IndexedDB chunk, learn where every tensor lies, and then read each tensor's byte
//! range on its own. Every offset, size and shape is validated against the file length before any read:
//! a truncated or malformed file is a [`WeightsError`], never a panic or an out-of-bounds read.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use burn::tensor::bf16;
use serde_json::Value;

/// The header may not be larger than this (the reference implementation's limit).
const MAX_HEADER: u64 = 100 << 20;

/// Errors of reading safetensors data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    /// The file (or the prefix given) ends before what the header says is there.
    #[error("truncated safetensors data: {needed} bytes needed, {available} available")]
    Truncated { needed: u64, available: u64 },
    /// The header length field is implausible.
    #[error("safetensors header of {0} bytes is larger than the 100 MiB limit")]
    HeaderTooLarge(u64),
    /// The header is not the JSON object the format requires.
    #[error("malformed safetensors header: {0}")]
    BadHeader(String),
    /// One tensor's entry is malformed (bad dtype, shape, offsets, or size).
    #[error("tensor {name}: {reason}")]
    BadEntry { name: String, reason: String },
    /// The tensors do not tile the data section exactly (overlaps or holes).
    #[error("safetensors data section is not covered exactly: {0}")]
    BadLayout(String),
    /// A tensor the caller asked for is not in the file.
    #[error("tensor {0} is not in the file")]
    MissingTensor(String),
    /// A tensor has a dtype the caller cannot convert.
    #[error("tensor {name}: dtype {dtype:?} cannot be read as {wanted}")]
    WrongDtype { name: String, dtype: Dtype, wanted: &'static str },
    /// Reading from the byte source failed.
    #[error("reading weights failed: {0}")]
    Io(String),
}

/// Element types of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "I64" => Self::I64,
            "U64" => Self::U64,
            "F64" => Self::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E4M3 | Self::F8E5M2 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Decodes this tensor's bytes to f32 (F16, BF16 and F64 are converted).
    pub fn to_f32(&self, bytes: &[u8]) -> Result<Vec<f32>, WeightsError> {
        self.check_len(bytes)?;
        let mut out = Vec::with_capacity(self.numel());
        self.extend_f32(bytes, &mut out)?;
        Ok(out)
    }

    /// Decodes part of this tensor's bytes (whole elements) to f32, appended to `out`: a tensor read
    /// part by part goes into one vector without a copy of each part.
    pub fn extend_f32(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), WeightsError> {
        let size = self.dtype.size() as usize;
        if !bytes.len().is_multiple_of(size.max(1)) {
            return Err(WeightsError::BadEntry {
                name: self.name.clone(),
                reason: format!("{} bytes are not whole {:?} elements", bytes.len(), self.dtype),
            });
        }
        let chunks = |n: usize| bytes.chunks_exact(n);
        match self.dtype {
            Dtype::F32 => out.extend(chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Dtype::F16 => super::f16_decode::extend_f16_le_to_f32(out, bytes),
            Dtype::BF16 => out.extend(chunks(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            Dtype::F64 => out.extend(chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)),
            dtype => return Err(WeightsError::WrongDtype { name: self.name.clone(), dtype, wanted: "f32" }),
        }
        Ok(())
    }

    /// Decodes this tensor's bytes to i64 (I64, I32).
    pub fn to_i64(&self, bytes: &[u8]) -> Result<Vec<i64>, WeightsError> {
        self.check_len(bytes)?;
        Ok(match self.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            dtype => return Err(WeightsError::WrongDtype { name: self.name.clone(), dtype, wanted: "i64" }),
        })
    }

    fn check_len(&self, bytes: &[u8]) -> Result<(), WeightsError> {
        if bytes.len() as u64 != self.end - self.start {
            return Err(WeightsError::BadEntry {
                name: self.name.clone(),
                reason: format!("{} bytes given, {} expected", bytes.len(), self.end - self.start),
            });
        }
        Ok(())
    }
}

/// A parsed header: every tensor's location, checked against the file length.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
    /// Bytes before the data section (8 + header length).
    data_start: u64,
}

impl SafetensorsHeader {
    /// How many bytes of the file's start [`Self::parse`] needs, from its first 8 bytes.
    pub fn prefix_len(first8: &[u8]) -> Result<u64, WeightsError> {
        let bytes: [u8; 8] = first8
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(WeightsError::Truncated { needed: 8, available: first8.len() as u64 })?;
        let header_len = u64::from_le_bytes(bytes);
        if header_len > MAX_HEADER {
            return Err(WeightsError::HeaderTooLarge(header_len));
        }
        Ok(8 + header_len)
    }

    /// Parses the header from a prefix of the file (at least [`Self::prefix_len`] bytes) and validates
    /// every entry against `file_len`, the full length of the file.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<Self, WeightsError> {
        let data_start = Self::prefix_len(prefix)?;
        if data_start > file_len {
            return Err(WeightsError::Truncated { needed: data_start, available: file_len });
        }
        let json = prefix
            .get(8..data_start as usize)
            .ok_or(WeightsError::Truncated { needed: data_start, available: prefix.len() as u64 })?;
        let header: BTreeMap<String, Value> =
            serde_json::from_slice(json).map_err(|e| WeightsError::BadHeader(e.to_string()))?;
        let data_len = file_len - data_start;

        let mut metadata = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, entry) in header {
            if name == "__metadata__" {
                let map =
                    entry.as_object().ok_or_else(|| WeightsError::BadHeader("__metadata__ is not an object".into()))?;
                for (k, v) in map {
                    let v = v
                        .as_str()
                        .ok_or_else(|| WeightsError::BadHeader(format!("__metadata__.{k} is not a string")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            let info = Self::entry(&name, &entry, data_start)?;
            if info.end - data_start > data_len {
                return Err(WeightsError::Truncated { needed: info.end, available: file_len });
            }
            tensors.insert(name, info);
        }

        // The tensors must tile the data section: sorted by offset, each starts where the last ended.
        let mut spans: Vec<&TensorInfo> = tensors.values().collect();
        spans.sort_by_key(|t| (t.start, t.end));
        let mut cursor = data_start;
        for t in spans {
            if t.start != cursor {
                let what = if t.start < cursor { "overlaps the previous tensor" } else { "leaves a hole before it" };
                return Err(WeightsError::BadLayout(format!("tensor {} {what}", t.name)));
            }
            cursor = t.end;
        }
        if cursor != file_len {
            return Err(WeightsError::BadLayout(format!("{} bytes after the last tensor", file_len - cursor)));
        }
        Ok(Self { tensors, metadata, data_start })
    }

    fn entry(name: &str, entry: &Value, data_start: u64) -> Result<TensorInfo, WeightsError> {
        let bad = |reason: String| WeightsError::BadEntry { name: name.to_string(), reason };
        let dtype_str = entry["dtype"].as_str().ok_or_else(|| bad("no dtype".into()))?;
        let dtype = Dtype::parse(dtype_str).ok_or_else(|| bad(format!("unknown dtype {dtype_str:?}")))?;
        let shape = entry["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or_else(|| bad(format!("bad dimension {d}"))))
            .collect::<Result<Vec<usize>, _>>()?;
        let offsets =
            entry["data_offsets"].as_array().filter(|o| o.len() == 2).ok_or_else(|| bad("no data_offsets".into()))?;
        let [begin, end] = [0, 1].map(|i| offsets[i].as_u64());
        let (Some(begin), Some(end)) = (begin, end) else { return Err(bad("data_offsets are not integers".into())) };
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size())).ok_or_else(|| bad("shape overflows".into()))?;
        if end - begin != expected {
            return Err(bad(format!("{} bytes for shape {shape:?} of {dtype:?}, which needs {expected}", end - begin)));
        }
        let start = data_start.checked_add(begin).ok_or_else(|| bad("offset overflows".into()))?;
        let end = data_start.checked_add(end).ok_or_else(|| bad("offset overflows".into()))?;
        Ok(TensorInfo { name: name.to_string(), dtype, shape, start, end })
    }

    /// All tensors, by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// One tensor's location.
    pub fn get(&self, name: &str) -> Result<&TensorInfo, WeightsError> {
        self.tensors.get(name).ok_or_else(|| WeightsError::MissingTensor(name.to_string()))
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Bytes before the first tensor.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
}

/// Random-access bytes: a file natively (IndexedDB chunks in the browser implement the same reads).
pub trait ByteSource {
    /// Total length in bytes.
    fn len(&mut self) -> Result<u64, WeightsError>;
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError>;
}

impl<T: Read + Seek> ByteSource for T {
    fn len(&mut self) -> Result<u64, WeightsError> {
        self.seek(SeekFrom::End(0)).map_err(|e| WeightsError::Io(e.to_string()))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
        self.seek(SeekFrom::Start(offset)).map_err(|e| WeightsError::Io(e.to_string()))?;
        self.read_exact(buf).map_err(|e| WeightsError::Io(e.to_string()))
    }
}

/// A safetensors file read tensor by tensor: only the header and one tensor's bytes are in memory.
pub struct SafetensorsReader<S> {
    source: S,
    header: SafetensorsHeader,
}

impl<S: ByteSource> SafetensorsReader<S> {
    /// Reads and validates the header (the first 8 bytes, then the JSON).
    pub fn new(mut source: S) -> Result<Self, WeightsError> {
        let file_len = source.len()?;
        let mut first8 = [0u8; 8];
        if file_len < 8 {
            return Err(WeightsError::Truncated { needed: 8, available: file_len });
        }
        source.read_at(0, &mut first8)?;
        let prefix_len = SafetensorsHeader::prefix_len(&first8)?;
        if prefix_len > file_len {
            return Err(WeightsError::Truncated { needed: prefix_len, available: file_len });
        }
        let mut prefix = vec![0u8; prefix_len as usize];
        source.read_at(0, &mut prefix)?;
        let header = SafetensorsHeader::parse(&prefix, file_len)?;
        Ok(Self { source, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &SafetensorsHeader {
        &self.header
    }

    /// The raw bytes of one tensor.
    pub fn read_bytes(&mut self, name: &str) -> Result<(TensorInfo, Vec<u8>), WeightsError> {
        let info = self.header.get(name)?.clone();
        let mut bytes = vec![0u8; (info.end - info.start) as usize];
        self.source.read_at(info.start, &mut bytes)?;
        Ok((info, bytes))
    }

    /// One tensor as f32 values with its shape.
    pub fn read_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), WeightsError> {
        let (info, bytes) = self.read_bytes(name)?;
        Ok((info.shape.clone(), info.to_f32(&bytes)?))
    }
}

#[cfg(test)]
mod tests;
