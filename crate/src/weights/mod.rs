//! Reading model weights: the safetensors format, streamed tensor by tensor from any byte source, so a
//! weight file is never in memory as a whole (a 1.7 GB UNet in a browser tab would not fit).

mod loader;
mod safetensors;

pub use loader::{KeyMap, LoadError, TensorLoader};

pub use safetensors::{ByteSource, Dtype, SafetensorsHeader, SafetensorsReader, TensorInfo, WeightsError};
