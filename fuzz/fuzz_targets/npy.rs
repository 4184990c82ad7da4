//! The binary array readers on arbitrary bytes: .npy, and MAT-files through MPII's ground
//! truth and its PCKh.
#![no_main]

mod limit;

use std::path::Path;

use hrnet::matfile::MatFile;
use hrnet::pose::mpii::{MpiiGroundTruth, evaluate_pckh};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrnet::npy::tensor_from_bytes(data, Path::new("fuzz.npy"));
    let path = Path::new("fuzz.mat");
    if let Ok(mat) = MatFile::parse(data, path)
        && let Ok(gt) = MpiiGroundTruth::from_mat(&mat, path)
    {
        let preds = vec![vec![[100.0, 100.0]; gt.joints.len()]; gt.people];
        let _ = evaluate_pckh(&gt, &preds);
    }
});
