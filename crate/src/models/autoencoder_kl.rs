//! diffusers' `AutoencoderKL`. So far: the key mapping of its weight files (the model itself is
//! built with the U-Net, see the issue tracker).

/// Key mapping for VAE files: the Hub's SD 1.x repos store the mid-block attention as
/// `query`/`key`/`value`/`proj_attn`, diffusers 0.42 writes `to_q`/`to_k`/`to_v`/`to_out.0`.
pub fn vae_key_map(name: &str) -> Option<String> {
    let Some((head, tail)) = name.split_once(".attentions.") else { return Some(name.to_string()) };
    // tail = "<index>.<projection>.<weight|bias>"
    let mut parts = tail.splitn(3, '.');
    let (Some(index), Some(projection), Some(param)) = (parts.next(), parts.next(), parts.next()) else {
        return Some(name.to_string());
    };
    let projection = match projection {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        other => other,
    };
    Some(format!("{head}.attentions.{index}.{projection}.{param}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::weights::SafetensorsReader;

    fn canonical_tensors(path: &str) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut reader = SafetensorsReader::new(std::fs::File::open(root.join(path)).unwrap()).unwrap();
        let names: Vec<String> = reader.header().tensors().map(|t| t.name.clone()).collect();
        names
            .into_iter()
            .map(|name| {
                let (info, bytes) = reader.read_bytes(&name).unwrap();
                (vae_key_map(&name).unwrap(), (info.shape, bytes))
            })
            .collect()
    }

    #[test]
    fn both_naming_schemes_give_the_same_tensors() {
        let new = canonical_tensors("tiny-sd/vae/diffusion_pytorch_model.fp16.safetensors");
        let legacy = canonical_tensors("tiny-sd-legacykeys/vae/diffusion_pytorch_model.fp16.safetensors");
        assert!(new.contains_key("encoder.mid_block.attentions.0.to_out.0.weight"));
        assert_eq!(new.len(), legacy.len());
        assert!(new == legacy, "the mapped legacy file must hold the same tensors under the same names");
    }

    #[test]
    fn only_attention_projections_are_renamed() {
        assert_eq!(
            vae_key_map("decoder.mid_block.attentions.0.query.weight").unwrap(),
            "decoder.mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            vae_key_map("encoder.mid_block.attentions.0.proj_attn.bias").unwrap(),
            "encoder.mid_block.attentions.0.to_out.0.bias"
        );
        assert_eq!(
            vae_key_map("encoder.mid_block.attentions.0.group_norm.weight").unwrap(),
            "encoder.mid_block.attentions.0.group_norm.weight"
        );
        assert_eq!(
            vae_key_map("decoder.up_blocks.0.resnets.0.conv1.weight").unwrap(),
            "decoder.up_blocks.0.resnets.0.conv1.weight"
        );
    }
}
