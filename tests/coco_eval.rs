//! COCO keypoint evaluation against pycocotools (tests/data/coco-eval, made by
//! scripts/coco_eval_case.py): the ten figures, every interpolated precision and recall,
//! and the lines `summarize` prints, on a synthetic annotation file made to reach the
//! rules' corners and on the COCO sample photographs' annotations; and `hrnet evaluate`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{sample_or_skip, scratch, test_data};
use hrnet::pose::coco_eval::{
    GroundTruth, KeypointEvaluation, STAT_NAMES, evaluate_keypoints, load_keypoint_results,
    oks_thresholds, recall_thresholds,
};
use serde_json::Value;

fn data() -> PathBuf {
    test_data().join("coco-eval")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(data().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The annotation file a case names: the synthetic one, or the COCO sample's (None and a
/// skip line when ../shared/data/coco-sample is absent).
fn annotations(name: &str, test: &str) -> Option<PathBuf> {
    match name {
        "synthetic" => Some(data().join("synthetic_annotations.json")),
        "sample" => sample_or_skip(test).map(|dir| dir.join("test_coco.json")),
        other => panic!("unknown annotation file {other}"),
    }
}

/// A results file a case names (relative to the repository).
fn results(case: &Value) -> PathBuf {
    let rel = case["results"].as_str().unwrap();
    let name = Path::new(rel).file_name().unwrap();
    let folder = Path::new(rel).parent().unwrap().file_name().unwrap();
    test_data().join(folder).join(name)
}

/// The largest difference between two lists, which must have the same length.
fn worst(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn evaluation(case: &Value, ann: &Path) -> KeypointEvaluation {
    let gt = GroundTruth::load(ann).unwrap();
    let results = load_keypoint_results(results(case)).unwrap();
    evaluate_keypoints(&gt, &results).unwrap()
}

#[test]
fn thresholds_are_pycocotools_own() {
    let e = expected();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&oks_thresholds()), bits(&floats(&e["oks_thresholds"])));
    assert_eq!(
        bits(&recall_thresholds()),
        bits(&floats(&e["recall_thresholds"]))
    );
}

#[test]
fn figures_precision_and_recall_equal_pycocotools() {
    let e = expected();
    for case in e["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let Some(ann) = annotations(
            case["annotations"].as_str().unwrap(),
            &format!("figures_precision_and_recall_equal_pycocotools ({name})"),
        ) else {
            continue;
        };
        let ours = evaluation(case, &ann);
        let k = ours.categories.len();
        let precision: Vec<f64> = (0..10)
            .flat_map(|t| (0..101).map(move |r| (t, r)))
            .flat_map(|(t, r)| (0..k).flat_map(move |c| (0..3).map(move |a| (t, r, c, a))))
            .map(|(t, r, c, a)| ours.precision(t, r, c, a))
            .collect();
        let recall: Vec<f64> = (0..10)
            .flat_map(|t| (0..k).flat_map(move |c| (0..3).map(move |a| (t, c, a))))
            .map(|(t, c, a)| ours.recall(t, c, a))
            .collect();
        let stats = floats(&case["stats"]);
        let (dp, dr, ds) = (
            worst(&precision, &floats(&case["precision"])),
            worst(&recall, &floats(&case["recall"])),
            worst(&ours.stats, &stats),
        );
        println!(
            "{name}: AP {:.4} AR {:.4}; largest difference from pycocotools: precision {dp:.1e}, \
             recall {dr:.1e}, figures {ds:.1e}",
            ours.stats[0], ours.stats[5]
        );
        assert!(dp <= 1e-12 && dr <= 1e-12 && ds <= 1e-12, "{name}");
        let lines: Vec<String> = case["summary"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ours.summary(), lines, "{name}: summarize's lines");
    }
}

#[test]
fn cli_prints_summarize_and_writes_the_figures() {
    let e = expected();
    let case = &e["cases"][0];
    assert_eq!(case["annotations"], "synthetic");
    let out = scratch("evaluate-cli").join("figures.json");
    let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
        .args(["evaluate", "--annotations"])
        .arg(data().join("synthetic_annotations.json"))
        .arg("--results")
        .arg(results(case))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    let summary: Vec<&str> = case["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(printed, summary);
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for (name, want) in STAT_NAMES.iter().zip(floats(&case["stats"])) {
        assert!(
            (figures[name].as_f64().unwrap() - want).abs() <= 1e-12,
            "{name}"
        );
    }
}

#[test]
fn perfect_results_score_one_and_no_results_zero() {
    let ann = data().join("synthetic_annotations.json");
    let gt = GroundTruth::load(&ann).unwrap();
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&ann).unwrap()).unwrap();
    // Every counted person found exactly: AP and AR 1 in every range that has people.
    let perfect: Vec<_> = file["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["num_keypoints"].as_u64().unwrap() > 0 && a["iscrowd"] == 0)
        .map(|a| hrnet::pose::coco_eval::KeypointResult {
            image_id: a["image_id"].as_u64().unwrap(),
            category_id: 1,
            keypoints: floats(&a["keypoints"]),
            score: 1.0,
        })
        .collect();
    let e = evaluate_keypoints(&gt, &perfect).unwrap();
    // The person with id 0 cannot be told from "no match" (pycocotools' rule), so it
    // counts as missed and its result as a false positive: just under 1.
    assert!(
        e.stats.iter().all(|&s| s > 0.9 && s <= 1.0),
        "{:?}",
        e.stats
    );
    let none = evaluate_keypoints(&gt, &[]).unwrap();
    assert_eq!(none.stats, [0.0; 10]);
}
