use std::io::Cursor;

use burn::tensor::f16;

use super::*;

/// Builds a safetensors file from (name, dtype, shape, bytes), tensors laid out in the given order.
fn build(entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    with_header(&serde_json::to_vec(&header).unwrap(), &data)
}

fn with_header(json: &[u8], data: &[u8]) -> Vec<u8> {
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend_from_slice(data);
    file
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample() -> Vec<u8> {
    build(&[
        ("a.weight", "F32", vec![2, 2], f32_bytes(&[1.0, -2.0, 3.5, 0.25])),
        (
            "b.half",
            "F16",
            vec![3],
            [1.0f32, -0.5, 65504.0].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        ),
        ("c.bf", "BF16", vec![2], [2.0f32, -3.0].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()),
        ("position_ids", "I64", vec![1, 3], [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect()),
    ])
}

fn reader(bytes: Vec<u8>) -> Result<SafetensorsReader<Cursor<Vec<u8>>>, WeightsError> {
    SafetensorsReader::new(Cursor::new(bytes))
}

#[test]
fn reads_every_dtype_tensor_by_tensor() {
    let mut r = reader(sample()).unwrap();
    assert_eq!(r.header().metadata()["format"], "pt");
    assert_eq!(r.read_f32("a.weight").unwrap(), (vec![2, 2], vec![1.0, -2.0, 3.5, 0.25]));
    assert_eq!(r.read_f32("b.half").unwrap().1, vec![1.0, -0.5, 65504.0]);
    assert_eq!(r.read_f32("c.bf").unwrap().1, vec![2.0, -3.0]);
    let (info, bytes) = r.read_bytes("position_ids").unwrap();
    assert_eq!(info.to_i64(&bytes).unwrap(), vec![0, 1, 2]);
    assert!(matches!(info.to_f32(&bytes), Err(WeightsError::WrongDtype { .. })));
    assert!(matches!(r.read_f32("nope"), Err(WeightsError::MissingTensor(n)) if n == "nope"));
}

#[test]
fn the_header_parses_from_a_prefix() {
    let file = sample();
    let prefix_len = SafetensorsHeader::prefix_len(&file[..8]).unwrap() as usize;
    let header = SafetensorsHeader::parse(&file[..prefix_len], file.len() as u64).unwrap();
    let a = header.get("a.weight").unwrap();
    assert_eq!(a.to_f32(&file[a.start as usize..a.end as usize]).unwrap()[2], 3.5);
    assert_eq!(header.tensors().count(), 4);
    // Too short a prefix is reported with what is needed, not read past.
    assert_eq!(
        SafetensorsHeader::parse(&file[..prefix_len - 1], file.len() as u64),
        Err(WeightsError::Truncated { needed: prefix_len as u64, available: prefix_len as u64 - 1 })
    );
}

#[test]
fn truncated_files_are_typed_errors() {
    assert_eq!(reader(vec![]).err(), Some(WeightsError::Truncated { needed: 8, available: 0 }));
    assert_eq!(reader(vec![1, 2, 3]).err(), Some(WeightsError::Truncated { needed: 8, available: 3 }));
    let file = sample();
    // Cut inside the header, and inside the data.
    assert!(matches!(reader(file[..20].to_vec()), Err(WeightsError::Truncated { .. })));
    assert!(matches!(reader(file[..file.len() - 1].to_vec()), Err(WeightsError::Truncated { .. })));
    // A header length far beyond any file.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert_eq!(reader(huge).err(), Some(WeightsError::HeaderTooLarge(u64::MAX)));
}

#[test]
fn malformed_headers_are_typed_errors() {
    let bad_json = with_header(b"{not json", &[]);
    assert!(matches!(reader(bad_json), Err(WeightsError::BadHeader(_))));
    let not_object = with_header(b"[1,2]", &[]);
    assert!(matches!(reader(not_object), Err(WeightsError::BadHeader(_))));
    let entry = |json: &str, data: &[u8]| reader(with_header(json.as_bytes(), data)).err().unwrap();
    assert!(matches!(
        entry(r#"{"t":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]),
        WeightsError::BadEntry { .. }
    ));
    assert!(matches!(
        entry(r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 4]),
        WeightsError::BadEntry { .. }
    ));
    assert!(matches!(
        entry(r#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4]),
        WeightsError::BadEntry { .. }
    ));
    assert!(matches!(
        entry(r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, &[0; 4]),
        WeightsError::BadEntry { .. }
    ));
    assert!(matches!(entry(r#"{"t":{"dtype":"F32","shape":[1]}}"#, &[0; 4]), WeightsError::BadEntry { .. }));
    let overflow = r#"{"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    assert!(matches!(entry(overflow, &[0; 8]), WeightsError::BadEntry { .. }));
    // Offsets past the end of the file.
    assert!(matches!(
        entry(r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 4]),
        WeightsError::Truncated { .. }
    ));
    // Overlapping tensors, a hole, trailing bytes.
    let two = |a: [u64; 2], b: [u64; 2]| {
        format!(
            r#"{{"x":{{"dtype":"F32","shape":[1],"data_offsets":{a:?}}},"y":{{"dtype":"F32","shape":[1],"data_offsets":{b:?}}}}}"#
        )
    };
    assert!(matches!(entry(&two([0, 4], [0, 4]), &[0; 8]), WeightsError::BadLayout(_)));
    assert!(matches!(entry(&two([0, 4], [8, 12]), &[0; 12]), WeightsError::BadLayout(_)));
    assert!(matches!(entry(&two([0, 4], [4, 8]), &[0; 9]), WeightsError::BadLayout(_)));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Corrupt every byte position of a valid file in turn, and feed random garbage.
    let file = sample();
    for i in 0..file.len() {
        for delta in [1u8, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[i] = bad[i].wrapping_add(delta);
            if let Ok(mut r) = reader(bad) {
                let names: Vec<String> = r.header().tensors().map(|t| t.name.clone()).collect();
                for name in names {
                    let _ = r.read_f32(&name);
                }
            }
        }
    }
    let mut rng = crate::rng::TorchRng::new(5);
    for len in 0..200 {
        let garbage: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
        let _ = reader(garbage);
    }
}

#[test]
fn fixture_files_fp16_and_fp32_agree_and_position_ids_are_int64() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let open = |path: &str| SafetensorsReader::new(std::fs::File::open(dir.join(path)).unwrap()).unwrap();
    let mut full = open("tiny-sd/text_encoder/model.safetensors");
    let mut half = open("tiny-sd/text_encoder/model.fp16.safetensors");
    let names: Vec<String> = full.header().tensors().map(|t| t.name.clone()).collect();
    assert_eq!(names.len(), 84);
    for name in &names {
        let (shape, a) = full.read_f32(name).unwrap();
        let (shape16, b) = half.read_f32(name).unwrap();
        assert_eq!(shape, shape16, "{name}");
        // The fp16 file is the fp32 file rounded to f16, and reads back exactly as such.
        let rounded: Vec<f32> = a.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        assert_eq!(rounded, b, "{name}: fp16 file is not the f16 rounding of the fp32 file");
    }
    let mut legacy = open("tiny-sd-legacykeys/text_encoder/model.fp16.safetensors");
    let (info, bytes) = legacy.read_bytes("text_model.embeddings.position_ids").unwrap();
    assert_eq!(info.dtype, Dtype::I64);
    assert_eq!(info.to_i64(&bytes).unwrap(), (0..77).collect::<Vec<i64>>());
}

#[test]
fn a_tensor_decodes_in_parts_as_whole() {
    let mut r = reader(sample()).unwrap();
    for name in ["a.weight", "b.half", "c.bf"] {
        let (info, bytes) = r.read_bytes(name).unwrap();
        let size = info.dtype.size() as usize;
        // One element at a time, after what the vector holds already.
        let mut parts = vec![9.0];
        for element in bytes.chunks(size) {
            info.extend_f32(element, &mut parts).unwrap();
        }
        assert_eq!(parts[1..], info.to_f32(&bytes).unwrap()[..], "{name}");
        // A part that is not whole elements is refused, and leaves the vector as it was.
        let before = parts.clone();
        assert!(matches!(info.extend_f32(&bytes[..size + 1], &mut parts), Err(WeightsError::BadEntry { .. })));
        assert_eq!(parts, before);
    }
}
