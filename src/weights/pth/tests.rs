//! The `.pth` reader against files torch 2.11 wrote (tests/data/pth, made by
//! scripts/pth_case.py): every layout and dtype read back as torch reads it, and every
//! damaged version of them an error, never a panic.

use std::path::PathBuf;

use safetensors::Dtype;

use super::{RawTensor, read};

/// A file of tests/data/pth (or of `HRNET_TEST_DATA`, for test binaries carried to
/// another machine, as the integration tests read it).
fn data(name: &str) -> Vec<u8> {
    let root = std::env::var_os("HRNET_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let path = root.join("pth").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tensor's elements as f64, as torch's `.double().flatten().tolist()` gives them.
fn values(t: &RawTensor) -> Vec<f64> {
    let b = &t.data;
    match t.dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()).into())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).into())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).into())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("no {other:?} in the edge case"),
    }
}

fn torch_dtype(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        Dtype::I64 => "int64",
        _ => "other",
    }
}

#[test]
fn odd_layouts_read_as_torch_reads_them() {
    let expected: serde_json::Value =
        serde_json::from_slice(&data("edge.json")).expect("edge.json");
    let expected = expected["tensors"].as_object().expect("tensors");
    for file in ["edge.pth", "edge_legacy.pth"] {
        let bytes = data(file);
        let got = read(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[0], "transposed", "{file}: the state_dict's order");
        keys.sort_unstable();
        let want: Vec<&str> = expected.keys().map(String::as_str).collect();
        assert_eq!(keys, want, "{file}: the state_dict's keys");
        for (key, t) in &got {
            let e = &expected[key];
            assert_eq!(torch_dtype(t.dtype), e["dtype"], "{file} {key}");
            let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{file} {key}");
            let want: Vec<f64> = serde_json::from_value(e["values"].clone()).unwrap();
            assert_eq!(values(t), want, "{file} {key}: values");
        }
    }
}

/// Every prefix of a file, and every byte of it changed, is read or refused; nothing
/// panics or allocates beyond the file's size (the fuzzer goes further, in scripts/fuzz).
#[test]
fn damaged_files_are_errors() {
    for file in ["edge.pth", "edge_legacy.pth"] {
        let bytes = data(file);
        for n in 0..bytes.len() {
            assert!(
                read(&bytes[..n]).is_err(),
                "{file} cut to {n} bytes was read"
            );
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                if let Ok(tensors) = read(&b) {
                    let total: usize = tensors.iter().map(|(_, t)| t.data.len()).sum();
                    assert!(total <= 2 * b.len() + (1 << 20), "{file}: {total} bytes");
                }
            }
        }
    }
}

#[test]
fn lying_sizes_are_refused_before_allocating() {
    // The legacy edge file's first storage record: its int64 element count, made huge.
    let mut b = data("edge_legacy.pth");
    let e = read(&b).unwrap();
    assert!(!e.is_empty());
    let first = b
        .windows(8)
        .position(|w| w == 24i64.to_le_bytes())
        .expect("the 24-element storage's record");
    b[first..first + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    let err = read(&b).unwrap_err();
    assert!(err.contains("record holds 1099511627776 elements"), "{err}");
}

/// The official releases were saved from models on the GPU: their storages say
/// `'cuda:0'`, which changes nothing here (the bytes are the same).
#[test]
fn storages_saved_on_the_gpu_read_the_same() {
    let b = data("edge_legacy.pth");
    let cpu = b"X\x03\x00\x00\x00cpu";
    let cuda = b"X\x06\x00\x00\x00cuda:0";
    let mut moved = Vec::with_capacity(b.len() + 64);
    let mut rest = &b[..];
    while let Some(at) = rest.windows(cpu.len()).position(|w| w == cpu) {
        moved.extend_from_slice(&rest[..at]);
        moved.extend_from_slice(cuda);
        rest = &rest[at + cpu.len()..];
    }
    moved.extend_from_slice(rest);
    assert!(moved.len() > b.len(), "the location was replaced");
    assert_eq!(read(&moved).unwrap(), read(&b).unwrap());
}

#[test]
fn what_is_not_a_state_dict_is_named() {
    for (bytes, want) in [
        (&b"PK\x03\x04junk"[..], "zip"),
        (b"\x80\x02}q\x00.", "not a PyTorch checkpoint"),
    ] {
        let e = read(bytes).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
}
