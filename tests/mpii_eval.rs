//! MPII's PCKh against the official `MPIIDataset.evaluate` (tests/data/mpii-eval, made by
//! scripts/mpii_eval_case.py): its nine figures to the bit, from `hrnet pose`'s results and
//! from the official `pred.mat`; `hrnet evaluate` on the ground-truth .mat; and what it
//! refuses.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{scratch, test_data};
use hrnet::matfile::{MatArray, MatFile};
use hrnet::pose::mpii::{
    MpiiGroundTruth, PCKH_NAMES, evaluate_pckh, load_results, predictions, predictions_from_mat,
};
use serde_json::Value;

fn data() -> PathBuf {
    test_data().join("mpii-eval")
}

/// The official figures by name; NaN where the official code gave NaN (written as null).
fn expected() -> Vec<f64> {
    let text = std::fs::read_to_string(data().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    PCKH_NAMES
        .iter()
        .map(|n| v["figures"][n].as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn assert_bitwise(ours: &[f64], official: &[f64]) {
    for ((name, a), b) in PCKH_NAMES.iter().zip(ours).zip(official) {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{name}: {a} against the official {b}"
        );
    }
}

#[test]
fn figures_equal_the_official_evaluation_from_results_and_from_pred_mat() {
    let gt = MpiiGroundTruth::load(data().join("gt_valid.mat")).unwrap();
    assert_eq!(gt.people, 80);
    assert_eq!(gt.joints[9], "head");
    let ours = predictions(&load_results(data().join("results.json")).unwrap());
    let e = evaluate_pckh(&gt, &ours).unwrap();
    assert_bitwise(&e.figures, &expected());
    // The pelvis is missing for everyone: no figure for it, and the means leave it out.
    assert!(e.per_joint[6].is_nan());
    assert!(e.figures.iter().all(|f| f.is_finite()));
    // The official pred.mat (float32, 1-based) holds the same predictions.
    let official = predictions_from_mat(data().join("pred.mat")).unwrap();
    assert_eq!(official, ours);
    assert_bitwise(&evaluate_pckh(&gt, &official).unwrap().figures, &expected());
    println!("PCKh: {}", e.table("results"));
}

#[test]
fn cli_prints_the_official_table_and_writes_the_figures() {
    let out = scratch("mpii-eval-cli").join("figures.json");
    let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
        .args(["evaluate", "--annotations"])
        .arg(data().join("gt_valid.mat"))
        .arg("--results")
        .arg(data().join("pred.mat"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "| Arch | Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Mean | Mean@0.1 |"
    );
    assert_eq!(lines[1], "|---".repeat(10) + "|");
    let head = format!("| pred | {:.3} |", expected()[0]);
    assert!(lines[2].starts_with(&head), "{}", lines[2]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let figures: Vec<f64> = PCKH_NAMES
        .iter()
        .map(|n| written[n].as_f64().unwrap())
        .collect();
    assert_bitwise(&figures, &expected());
}

#[test]
fn predictions_and_ground_truth_that_do_not_fit_are_refused() {
    let gt = MpiiGroundTruth::load(data().join("gt_valid.mat")).unwrap();
    let mut preds = predictions(&load_results(data().join("results.json")).unwrap());
    preds.pop();
    let e = evaluate_pckh(&gt, &preds).unwrap_err().to_string();
    assert!(e.contains("79 predictions for the 80 people"), "{e}");
    preds.push(vec![[1.0, 1.0]; 17]);
    let e = evaluate_pckh(&gt, &preds).unwrap_err().to_string();
    assert!(
        e.contains("prediction 79 has 17 joints, the ground truth 16"),
        "{e}"
    );

    // A ground truth without head boxes, or with them of the wrong size.
    let path = data().join("gt_valid.mat");
    let mut mat = MatFile::load(&path).unwrap();
    let boxes = mat.arrays.remove("headboxes_src").unwrap();
    let e = MpiiGroundTruth::from_mat(&mat, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no array 'headboxes_src'"), "{e}");
    let MatArray::Numeric { mut dims, data } = boxes else {
        panic!("numeric head boxes")
    };
    dims[2] -= 1;
    mat.arrays
        .insert("headboxes_src".into(), MatArray::Numeric { dims, data });
    let e = MpiiGroundTruth::from_mat(&mat, &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'headboxes_src' should be a numeric array of dimensions 2×2×80"),
        "{e}"
    );
    // A .mat that is not one.
    let e = MatFile::parse(b"MATLAB 5.0 MAT-file, truncated", &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shorter than the 128-byte header"), "{e}");
}
