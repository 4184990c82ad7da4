//! End-to-end against the official model: heatmaps of `lib/models/pose_hrnet.py` run in
//! float64 on the same checkpoint (see scripts/official_case.py).

mod common;

use std::path::Path;

use common::{compare, compare_values, load_for, official_tiny, test_data};
use hrnet::{Checkpoint, CpuEngine, CpuF64Engine, Nchw, Tensor, npy};

/// The CPU reference's bound against the official model in float64.
const TOLERANCE: f64 = 1e-4;
/// The f64 engine's: f64 rounding (2.7e-14 on the committed case).
const F64_TOLERANCE: f64 = 1e-12;

/// The f64 engine on `weights` against the official float64 heatmaps `reference`:
/// relative L2 and argmax agreement.
fn compare_f64(weights: &Path, x: &Tensor, reference: &Path) -> (f64, f64) {
    let engine = CpuF64Engine::new(&load_for(weights, x));
    let out = engine.forward(x).unwrap();
    let shape = Nchw::batch(x.shape().n, engine.graph().output_shape());
    compare_values(&out, shape, reference)
}

#[test]
fn committed_case_matches_the_official_model_in_float64() {
    let dir = official_tiny();
    let x = npy::read_tensor(dir.join("input.npy")).unwrap();
    for (weights, reference) in [
        ("weights.safetensors", "heatmaps_f64.npy"),
        ("weights_f16.safetensors", "heatmaps_f64_f16.npy"),
        ("weights_bf16.safetensors", "heatmaps_f64_bf16.npy"),
    ] {
        let engine = CpuEngine::new(load_for(&dir.join(weights), &x));
        let out = engine.forward(&x).unwrap();
        let (rel, agree) = compare(&out, &dir.join(reference));
        println!("{weights}: relative L2 {rel:.3e}, argmax agreement {agree}");
        assert!(rel < TOLERANCE, "{weights}: relative L2 {rel:e}");
        assert_eq!(agree, 1.0, "{weights}: argmax differs");
    }
}

/// The f64 engine is the official model in float64, to f64 rounding: for f32, f16 and bf16
/// checkpoints, safetensors and both `.pth` formats.
#[test]
fn f64_engine_is_the_official_model_in_float64() {
    let dir = official_tiny();
    let x = npy::read_tensor(dir.join("input.npy")).unwrap();
    for (weights, reference) in [
        (dir.join("weights.safetensors"), "heatmaps_f64.npy"),
        (dir.join("weights_f16.safetensors"), "heatmaps_f64_f16.npy"),
        (
            dir.join("weights_bf16.safetensors"),
            "heatmaps_f64_bf16.npy",
        ),
        (
            test_data().join("pth/final_state_legacy.pth"),
            "heatmaps_f64.npy",
        ),
        (
            test_data().join("pth/checkpoint_f16.pth"),
            "heatmaps_f64_f16.npy",
        ),
    ] {
        let (rel, agree) = compare_f64(&weights, &x, &dir.join(reference));
        let name = weights.file_name().unwrap().to_string_lossy();
        println!("f64 engine, {name}: relative L2 {rel:.3e}, argmax agreement {agree}");
        assert!(rel < F64_TOLERANCE, "{name}: relative L2 {rel:e}");
        assert_eq!(agree, 1.0, "{name}: argmax differs");
    }
}

/// The official releases are `.pth` files: `torch.save` of the state_dict in PyTorch 1.0's
/// legacy format. Training checkpoints (`tools/train.py`) hold it under `state_dict` with
/// DataParallel's `module.` prefix, beside the optimizer's state, in today's zip format.
/// Both, written by torch itself (tests/data/pth, scripts/pth_case.py), hold exactly the
/// tensors of the safetensors they were made from and give the official heatmaps.
#[test]
fn pytorch_checkpoints_match_the_official_model_in_float64() {
    let dir = official_tiny();
    let x = npy::read_tensor(dir.join("input.npy")).unwrap();
    for (pth, same_as, reference) in [
        (
            "final_state_legacy.pth",
            "weights.safetensors",
            "heatmaps_f64.npy",
        ),
        (
            "checkpoint_f16.pth",
            "weights_f16.safetensors",
            "heatmaps_f64_f16.npy",
        ),
    ] {
        let path = test_data().join("pth").join(pth);
        assert_eq!(
            Checkpoint::load(&path).unwrap(),
            Checkpoint::load(dir.join(same_as)).unwrap(),
            "{pth} and {same_as}"
        );
        let out = CpuEngine::new(load_for(&path, &x)).forward(&x).unwrap();
        let (rel, agree) = compare(&out, &dir.join(reference));
        println!("{pth}: relative L2 {rel:.3e}, argmax agreement {agree}");
        assert!(rel < TOLERANCE, "{pth}: relative L2 {rel:e}");
        assert_eq!(agree, 1.0, "{pth}: argmax differs");
    }
}

/// A full-size case made locally (`scripts/official_case.py --preset ...`, too large to
/// commit) is checked when HRNET_OFFICIAL_CASE names its folder.
#[test]
fn full_size_case_when_provided() {
    let Some(dir) = std::env::var_os("HRNET_OFFICIAL_CASE") else {
        common::skip(
            "full_size_case_when_provided",
            &"set HRNET_OFFICIAL_CASE to a folder made by scripts/official_case.py --preset ...",
        );
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let x = npy::read_tensor(dir.join("input.npy")).unwrap();
    let out = CpuEngine::new(load_for(&dir.join("weights.safetensors"), &x))
        .forward(&x)
        .unwrap();
    let (rel, agree) = compare(&out, &dir.join("heatmaps_f64.npy"));
    println!(
        "{}: relative L2 {rel:.3e}, argmax agreement {agree}",
        dir.display()
    );
    assert!(rel < TOLERANCE && agree == 1.0);
    let (rel, agree) = compare_f64(
        &dir.join("weights.safetensors"),
        &x,
        &dir.join("heatmaps_f64.npy"),
    );
    println!("f64 engine: relative L2 {rel:.3e}, argmax agreement {agree}");
    assert!(rel < F64_TOLERANCE && agree == 1.0);
}
