//! The pose pipeline against the official one (scripts/official_pose_case.py: the official
//! box handling, crop, flip test and decoding, the model in float64) on the COCO sample
//! photographs and their detections; and its handling of bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{official_tiny, sample_or_skip, scratch};
use hrnet::Model;
use hrnet::pose::affine::Crop;
use hrnet::pose::io::{
    CocoResult, OFFICIAL_MIN_DETECTION_SCORE, load_detections, load_image, load_results,
};
use hrnet::pose::mpii::{MpiiResult, predictions, predictions_from_mat};
use hrnet::pose::nms::{OFFICIAL_OKS_THRESHOLD, oks_nms};
use hrnet::pose::{Device, Keypoint, PersonBox, Pose, PoseEstimator};
use hrnet::weights::Checkpoint;

/// In f32 (the library's `Device::Cpu`, `--precision f32`) the official pipeline's
/// keypoints must be reproduced within half a pixel, and keypoint and person scores within
/// this (relative).
const PIXELS: f32 = 0.5;
const SCORES: f64 = 1e-3;
/// In f64 (`hrnet pose` on the CPU by default, `Device::CpuF64`): to the rounding of the
/// official float32 results (1 ulp of a coordinate below 2048 is at most 1.2e-4), scores
/// likewise.
const EXACT_PIXELS: f32 = 1.25e-4;
const EXACT_SCORES: f64 = 1e-6;

/// `hrnet pose` with the official tiny checkpoint on the sample folder, `args` choosing
/// the boxes; the results it wrote to `results`.
fn pose_cli(sample: &Path, args: &[&std::ffi::OsStr], results: &Path) -> Vec<CocoResult> {
    let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
        .args(["pose", "--weights"])
        .arg(official_tiny().join("weights.safetensors"))
        .arg("--image")
        .arg(sample)
        .args(args)
        .arg("--output")
        .arg(results)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    load_results(results).unwrap()
}

fn expected(name: &str) -> Vec<CocoResult> {
    load_results(common::test_data().join("official-pose").join(name)).unwrap()
}

/// Largest keypoint distance (max over x and y) between two result lists in the same order,
/// scores checked to [`SCORES`].
fn worst(ours: &[CocoResult], official: &[CocoResult]) -> f32 {
    worst_within(ours, official, SCORES)
}

/// [`worst`] with scores checked to `scores` (relative).
fn worst_within(ours: &[CocoResult], official: &[CocoResult], scores: f64) -> f32 {
    assert_eq!(ours.len(), official.len(), "one result per detection");
    for (o, r) in ours.iter().zip(official) {
        assert_eq!(o.image_id, r.image_id);
    }
    worst_of(
        ours.iter().map(|o| (o.keypoints.as_slice(), o.score)),
        official.iter().map(|r| (r.keypoints.as_slice(), r.score)),
        scores,
    )
}

/// [`worst`] over `(keypoints, person score)` pairs, scores checked to `scores` relative.
fn worst_of<'a>(
    ours: impl Iterator<Item = (&'a [f32], f64)>,
    official: impl Iterator<Item = (&'a [f32], f64)>,
    scores: f64,
) -> f32 {
    let mut worst = 0.0f32;
    for ((o, os), (r, rs)) in ours.zip(official) {
        assert_eq!(o.len(), r.len(), "joints");
        for (a, b) in o.chunks(3).zip(r.chunks(3)) {
            worst = worst.max((a[0] - b[0]).abs()).max((a[1] - b[1]).abs());
            assert!(
                f64::from((a[2] - b[2]).abs()) <= scores * f64::from(b[2].abs().max(1.0)),
                "keypoint score {} vs {}",
                a[2],
                b[2]
            );
        }
        assert!(
            (os - rs).abs() <= scores * rs.abs().max(1.0),
            "person score {os} vs {rs}"
        );
    }
    worst
}

/// Results as poses (what OKS suppression reads: keypoints, crop, score).
fn to_poses(results: &[CocoResult]) -> Vec<Pose> {
    results
        .iter()
        .map(|r| Pose {
            keypoints: r
                .keypoints
                .chunks(3)
                .map(|k| Keypoint {
                    x: k[0],
                    y: k[1],
                    score: k[2],
                })
                .collect(),
            bbox: PersonBox::new(0.0, 0.0, 1.0, 1.0, 1.0),
            crop: Crop::F32 {
                center: r.center.expect("center"),
                scale: r.scale.expect("scale"),
            },
            score: r.score,
        })
        .collect()
}

/// Per-box results through OKS suppression, image by image in their order, each image's
/// kept people best first: what the official evaluate writes.
fn suppressed(results: &[CocoResult]) -> Vec<CocoResult> {
    let mut out = Vec::new();
    for image in results.chunk_by(|a, b| a.image_id == b.image_id) {
        let keep = oks_nms(&to_poses(image), OFFICIAL_OKS_THRESHOLD).unwrap();
        out.extend(keep.into_iter().map(|i| image[i].clone()));
    }
    out
}

/// `hrnet pose` (on the CPU in f64 by default) on all 118 detections of the COCO sample,
/// flip test on: every keypoint and score is the official one to float32 rounding, and OKS
/// suppression keeps the official people in the official order.
#[test]
fn cli_reproduces_the_official_pipeline_on_coco_photographs() {
    let Some(sample) = sample_or_skip("cli_reproduces_the_official_pipeline_on_coco_photographs")
    else {
        return;
    };
    let out = scratch("pose-cli");
    let det = sample.join("test_coco_det_AP_H_56.json");
    let drawn = out.join("drawn");
    let ours = pose_cli(
        &sample,
        &[
            "--detections".as_ref(),
            det.as_ref(),
            "--draw".as_ref(),
            drawn.as_ref(),
        ],
        &out.join("poses.json"),
    );
    let w = worst_within(&ours, &expected("expected_flip.json"), EXACT_SCORES);
    println!("flip test on, f64: largest keypoint difference {w:.2e} px");
    assert!(w <= EXACT_PIXELS, "{w} px");
    let kept = suppressed(&ours);
    let official = expected("expected_flip_oks_nms.json");
    let w = worst_within(&kept, &official, EXACT_SCORES);
    println!(
        "OKS NMS: {} of {} people kept, as the official evaluate keeps them; largest keypoint \
         difference {w:.2e} px",
        kept.len(),
        ours.len()
    );
    assert!(w <= EXACT_PIXELS, "{w} px");
    assert!(kept.len() < ours.len(), "the case suppresses someone");
    for (o, r) in kept.iter().zip(&official) {
        assert_eq!((o.center, o.scale), (r.center, r.scale), "the same person");
    }
    let picture = load_image(drawn.join("000000000785.png")).unwrap();
    assert_eq!(
        picture.dimensions(),
        load_image(sample.join("000000000785.jpg"))
            .unwrap()
            .dimensions()
    );
}

/// `--precision f32` on the two photographs that hold the f32 near-tie (196141) and the
/// person OKS suppression removes (197388), 70 detections: within half a pixel. One
/// keypoint lands 0.34 px away: two neighbouring cells of its flip-merged heatmap differ
/// by 9e-7 relative, less than f32's error, and f32 takes the other one as the maximum.
#[test]
fn cli_in_f32_is_within_half_a_pixel_of_the_official_pipeline() {
    let test = "cli_in_f32_is_within_half_a_pixel_of_the_official_pipeline";
    let Some(sample) = sample_or_skip(test) else {
        return;
    };
    let out = scratch("pose-cli-f32");
    let images = [196141, 197388];
    let of_images = |results: Vec<CocoResult>| -> Vec<CocoResult> {
        let order = |r: &CocoResult| images.iter().position(|&i| i == r.image_id);
        let mut kept: Vec<CocoResult> =
            results.into_iter().filter(|r| order(r).is_some()).collect();
        kept.sort_by_key(order);
        kept
    };
    let all: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(sample.join("test_coco_det_AP_H_56.json")).unwrap(),
    )
    .unwrap();
    let det = out.join("detections.json");
    let some: Vec<&serde_json::Value> = images
        .iter()
        .flat_map(|&id| all.iter().filter(move |d| d["image_id"] == id))
        .collect();
    std::fs::write(&det, serde_json::to_string(&some).unwrap()).unwrap();
    let args = [
        "--detections".as_ref(),
        det.as_ref(),
        "--precision".as_ref(),
        "f32".as_ref(),
    ];
    let ours = pose_cli(&sample, &args, &out.join("poses.json"));
    let w = worst(&ours, &of_images(expected("expected_flip.json")));
    let kept = suppressed(&ours);
    let w_kept = worst(&kept, &of_images(expected("expected_flip_oks_nms.json")));
    println!(
        "f32, {} detections: largest keypoint difference {w:.4} px; OKS NMS keeps {}, \
         {w_kept:.4} px",
        ours.len(),
        kept.len()
    );
    assert!(w <= PIXELS && w_kept <= PIXELS, "{w} px, {w_kept} px");
    assert!(kept.len() < ours.len(), "the case suppresses someone");
}

/// Ground-truth boxes (the official `TEST.USE_GT_BBOX`): the annotation file's people,
/// boxes cleaned as the official loader cleans them, through to the official results file,
/// to float32 rounding (f64 on the CPU, the default).
#[test]
fn cli_with_ground_truth_boxes_reproduces_the_official_results_file() {
    let Some(sample) =
        sample_or_skip("cli_with_ground_truth_boxes_reproduces_the_official_results_file")
    else {
        return;
    };
    let ann = sample.join("test_coco.json");
    let ours = pose_cli(
        &sample,
        &[
            "--annotations".as_ref(),
            ann.as_ref(),
            "--oks-nms".as_ref(),
            "0.9".as_ref(),
        ],
        &scratch("pose-gt").join("poses.json"),
    );
    let official = expected("expected_gt_flip_oks_nms.json");
    let w = worst_within(&ours, &official, EXACT_SCORES);
    for (o, r) in ours.iter().zip(&official) {
        assert_eq!(
            (o.center, o.scale),
            (r.center, r.scale),
            "the same cleaned box"
        );
    }
    println!(
        "ground-truth boxes: {} people as the official evaluate writes them; largest \
         keypoint difference {w:.2e} px",
        ours.len()
    );
    assert!(w <= EXACT_PIXELS, "{w} px");
}

#[test]
fn library_without_flip_matches_the_official_pipeline() {
    let Some(sample) = sample_or_skip("library_without_flip_matches_the_official_pipeline") else {
        return;
    };
    let model = Model::load(official_tiny().join("weights.safetensors"), None).unwrap();
    let estimator = PoseEstimator::new(model, Device::Cpu)
        .unwrap()
        .with_flip(false)
        .unwrap();
    let dets = load_detections(
        sample.join("test_coco_det_AP_H_56.json"),
        OFFICIAL_MIN_DETECTION_SCORE,
    )
    .unwrap();
    let official = expected("expected_noflip.json");
    // One photograph is enough here; the CLI test covers all four with the flip test.
    let id = 40083;
    let image = load_image(sample.join(format!("{id:012}.jpg"))).unwrap();
    let boxes = &dets.iter().find(|(i, _)| *i == id).expect("image 40083").1;
    let poses = estimator.estimate(&image, boxes).unwrap();
    let ours: Vec<CocoResult> = poses.iter().map(|p| CocoResult::new(id, p)).collect();
    let theirs: Vec<CocoResult> = official.into_iter().filter(|r| r.image_id == id).collect();
    let w = worst(&ours, &theirs);
    println!("flip test off, image {id}: largest keypoint difference {w:.6} px");
    assert!(w <= PIXELS, "{w} px");
    // Crops cut on one thread, in batches that split the image's people differently (the
    // next batch is cut while the network runs one): the same bits.
    let model = Model::load(official_tiny().join("weights.safetensors"), None).unwrap();
    let single = PoseEstimator::new(model, Device::Cpu)
        .unwrap()
        .with_flip(false)
        .unwrap()
        .with_threads(1)
        .with_batch(3);
    let some = boxes.len().min(7);
    assert_eq!(
        single.estimate(&image, &boxes[..some]).unwrap(),
        poses[..some]
    );
}

/// The same on the GPU, flip test and decoding on the device: f32 within half a pixel;
/// f16 reported (a random-weight network magnifies f16 rounding).
#[test]
fn gpu_pipeline_matches_the_official_pipeline() {
    let Some(sample) = sample_or_skip("gpu_pipeline_matches_the_official_pipeline") else {
        return;
    };
    if !common::gpu_or_skip("gpu_pipeline_matches_the_official_pipeline") {
        return;
    }
    let dets = load_detections(
        sample.join("test_coco_det_AP_H_56.json"),
        OFFICIAL_MIN_DETECTION_SCORE,
    )
    .unwrap();
    let official = expected("expected_flip.json");
    for precision in [hrnet::cuda::Precision::F32, hrnet::cuda::Precision::F16] {
        let model = Model::load(official_tiny().join("weights.safetensors"), None).unwrap();
        let estimator = PoseEstimator::new(model, Device::Cuda(precision)).unwrap();
        let mut ours = Vec::new();
        for (id, boxes) in &dets {
            let id = *id;
            let image = load_image(sample.join(format!("{id:012}.jpg"))).unwrap();
            let poses = estimator.estimate(&image, boxes).unwrap();
            ours.extend(poses.iter().map(|p| CocoResult::new(id, p)));
        }
        let w = if precision == hrnet::cuda::Precision::F32 {
            worst(&ours, &official)
        } else {
            ours.iter()
                .zip(&official)
                .flat_map(|(o, r)| o.keypoints.chunks(3).zip(r.keypoints.chunks(3)))
                .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
                .fold(0.0, f32::max)
        };
        println!("cuda {precision}: largest keypoint difference {w:.4} px");
        if precision == hrnet::cuda::Precision::F32 {
            assert!(w <= PIXELS, "{w} px");
        }
    }
}

/// The official tiny checkpoint with its first 16 heatmaps as MPII's joints (what
/// scripts/official_pose_case.py runs for the MPII case), written to `dir`.
fn mpii_weights(dir: &Path) -> std::path::PathBuf {
    let mut ck = Checkpoint::load(official_tiny().join("weights.safetensors")).unwrap();
    for key in ["final_layer.weight", "final_layer.bias"] {
        let t = ck.tensors.get_mut(key).unwrap();
        let per_joint = t.data.len() / t.shape[0];
        t.shape[0] = 16;
        t.data.truncate(16 * per_joint);
    }
    let path = dir.join("mpii16.safetensors");
    ck.save(&path).unwrap();
    path
}

fn expected_mpii(name: &str) -> Vec<MpiiResult> {
    hrnet::pose::mpii::load_results(common::test_data().join("official-pose").join(name)).unwrap()
}

fn worst_mpii(ours: &[MpiiResult], official: &[MpiiResult], scores: f64) -> f32 {
    assert_eq!(
        ours.len(),
        official.len(),
        "one result per annotated person"
    );
    for (o, r) in ours.iter().zip(official) {
        assert_eq!(o.image, r.image);
        assert_eq!(
            (o.center, o.scale),
            (r.center, r.scale),
            "the official crop"
        );
    }
    worst_of(
        ours.iter().map(|o| (o.keypoints.as_slice(), o.score)),
        official.iter().map(|r| (r.keypoints.as_slice(), r.score)),
        scores,
    )
}

/// MPII: the people of an annotation file in the official format (`annot/valid.json`),
/// each cropped where the official MPIIDataset crops it (float64 center and scale, moved
/// and enlarged as there), flip test with MPII's pairs, results in the file's order; to
/// float32 rounding (f64 on the CPU, the default), and the official pred.mat likewise.
#[test]
fn cli_with_mpii_annotations_reproduces_the_official_mpii_pipeline() {
    let test = "cli_with_mpii_annotations_reproduces_the_official_mpii_pipeline";
    let Some(sample) = sample_or_skip(test) else {
        return;
    };
    let dir = scratch("pose-mpii");
    let weights = mpii_weights(&dir);
    let run = |out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
            .args(["pose", "--weights"])
            .arg(&weights)
            .arg("--image")
            .arg(&sample)
            .arg("--annotations")
            .arg(common::test_data().join("official-pose/mpii_valid.json"))
            .arg("--output")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&dir.join("poses.json"));
    let ours = hrnet::pose::mpii::load_results(dir.join("poses.json")).unwrap();
    let w = worst_mpii(
        &ours,
        &expected_mpii("expected_mpii_flip.json"),
        EXACT_SCORES,
    );
    println!(
        "MPII annotations: {} people; largest keypoint difference {w:.2e} px",
        ours.len()
    );
    assert!(w <= EXACT_PIXELS, "{w} px");
    // Named *.mat, the output is the official pred.mat: the same numbers as the official
    // evaluate writes there, and as the JSON results + 1.
    run(&dir.join("pred.mat"));
    let written = predictions_from_mat(dir.join("pred.mat")).unwrap();
    assert_eq!(written, predictions(&ours));
    let official =
        predictions_from_mat(common::test_data().join("official-pose/expected_mpii_flip_pred.mat"))
            .unwrap();
    let w = written
        .iter()
        .flatten()
        .zip(official.iter().flatten())
        .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
        .fold(0.0, f64::max);
    assert!(
        w <= f64::from(EXACT_PIXELS),
        "pred.mat: {w} px from the official one"
    );
}

#[test]
fn library_with_mpii_crops_without_flip_matches_the_official_pipeline() {
    let test = "library_with_mpii_crops_without_flip_matches_the_official_pipeline";
    let Some(sample) = sample_or_skip(test) else {
        return;
    };
    let weights = mpii_weights(&scratch("pose-mpii-lib"));
    let estimator = PoseEstimator::new(Model::load(weights, None).unwrap(), Device::Cpu)
        .unwrap()
        .with_flip(false)
        .unwrap();
    let people = hrnet::pose::mpii::load_annotations(
        common::test_data().join("official-pose/mpii_valid.json"),
    )
    .unwrap();
    let mut ours = Vec::new();
    let mut placed = vec![None; people.len()];
    for g in hrnet::pose::mpii::by_image(&people) {
        let picture = load_image(sample.join(&g.image)).unwrap();
        let poses = estimator.estimate(&picture, &g.crops).unwrap();
        for (&at, p) in g.indices.iter().zip(&poses) {
            placed[at] = Some(MpiiResult::new(&g.image, p));
        }
    }
    ours.extend(placed.into_iter().map(|r| r.expect("every person")));
    let w = worst_mpii(&ours, &expected_mpii("expected_mpii_noflip.json"), SCORES);
    println!("MPII crops, flip test off: largest keypoint difference {w:.6} px");
    assert!(w <= PIXELS, "{w} px");
}

#[test]
fn bad_images_boxes_and_files_are_reported_and_the_rest_processed() {
    let Some(sample) =
        sample_or_skip("bad_images_boxes_and_files_are_reported_and_the_rest_processed")
    else {
        return;
    };
    let dir = scratch("pose-bad");
    let good = std::fs::read(sample.join("000000040083.jpg")).unwrap();
    std::fs::write(dir.join("000000000001.jpg"), &good).unwrap();
    std::fs::write(dir.join("000000000002.jpg"), &good[..good.len() / 3]).unwrap(); // truncated
    std::fs::write(dir.join("000000000003.jpg"), b"plain text, not an image").unwrap();
    // 4 is missing; image 1 also gets a zero-area box and one outside the picture.
    let det = r#"[
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 120, 200], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 0, 200], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [900, 50, 40, 40], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9},
        {"image_id": 3, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9},
        {"image_id": 4, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9}]"#;
    std::fs::write(dir.join("det.json"), det).unwrap();
    let weights = official_tiny().join("weights.safetensors");
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
            .args(["pose", "--no-flip", "--weights"])
            .arg(&weights)
            .args(extra)
            .arg("--output")
            .arg(dir.join("out.json"))
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&[
        "--image",
        dir.to_str().unwrap(),
        "--detections",
        dir.join("det.json").to_str().unwrap(),
    ]);
    assert!(!ok, "failures give a failing exit");
    for what in [
        "zero area",
        "outside the",
        "truncated JPEG",
        "not a readable image",
        "no image 000000000004.jpg",
    ] {
        assert!(err.contains(what), "'{what}' not reported in:\n{err}");
    }
    let results = load_results(dir.join("out.json")).unwrap();
    assert_eq!(
        results.len(),
        1,
        "the good box of the good image is still processed"
    );
    assert_eq!(results[0].image_id, 1);

    std::fs::write(dir.join("boxes.json"), "[[1, 2, 3]").unwrap();
    let one = dir.join("000000000001.jpg");
    let (ok, err) = run(&[
        "--image",
        one.to_str().unwrap(),
        "--boxes",
        dir.join("boxes.json").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("boxes.json") && err.contains("not a valid boxes file"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // No boxes: the whole image is one person.
    let (ok, err) = run(&["--image", one.to_str().unwrap()]);
    assert!(ok, "{err}");
    let r = load_results(dir.join("out.json")).unwrap();
    assert_eq!((r.len(), r[0].image_id, r[0].keypoints.len()), (1, 1, 51));

    // OKS suppression: the same box twice is one person; a threshold outside [0, 1] is an
    // error.
    let (ok, err) = run(&[
        "--image",
        one.to_str().unwrap(),
        "--bbox",
        "100,50,120,200",
        "--bbox",
        "100,50,120,200",
        "--oks-nms",
        "0.9",
    ]);
    assert!(ok, "{err}");
    assert_eq!(load_results(dir.join("out.json")).unwrap().len(), 1);
    let (ok, err) = run(&["--image", one.to_str().unwrap(), "--oks-nms", "2"]);
    assert!(!ok && err.contains("between 0 and 1"), "{err}");

    // Detections below --min-score (the official TEST.IMAGE_THRE) are not run: above
    // every score, no image is opened, so none of the bad ones is reported.
    let folder = |min: &str| {
        run(&[
            "--image",
            dir.to_str().unwrap(),
            "--detections",
            dir.join("det.json").to_str().unwrap(),
            "--min-score",
            min,
        ])
    };
    let (ok, err) = folder("0.95");
    assert!(ok && !err.contains("error"), "{err}");
    assert!(load_results(dir.join("out.json")).unwrap().is_empty());
    let (ok, err) = folder("NaN");
    assert!(!ok && err.contains("--min-score"), "{err}");
    let (ok, err) = run(&["--image", one.to_str().unwrap(), "--threads", "0"]);
    assert!(!ok && err.contains("--threads takes at least 1"), "{err}");
}

/// The crop against OpenCV's `cv2.warpAffine(..., INTER_LINEAR)` to the byte
/// (tests/data/warp, scripts/warp_case.py): shifts, scales from 1/8 to 8, rotations, crops
/// inside, across and outside the picture's borders and at its first row and column.
#[test]
fn crops_are_opencv_warp_affine_to_the_byte() {
    use hrnet::pose::affine::Affine;
    use hrnet::pose::crop::warp_affine;
    use ndarray_npy::ReadNpyExt;

    let dir = common::test_data().join("warp");
    let picture = load_image(dir.join("source.png")).unwrap();
    let maps: Vec<[f64; 6]> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("maps.json")).unwrap()).unwrap();
    let file = std::fs::File::open(dir.join("crops.npy")).unwrap();
    let crops = ndarray::Array4::<u8>::read_npy(file).unwrap();
    let (n, h, w, _) = crops.dim();
    assert_eq!(n, maps.len());
    for (i, (m, expected)) in maps.iter().zip(crops.outer_iter()).enumerate() {
        let ours = warp_affine(&picture, &Affine(*m), w, h).unwrap();
        let expected: Vec<u8> = expected.iter().copied().collect();
        let differ = ours.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "map {i} {m:?}: {differ} of {} bytes differ",
            ours.len()
        );
    }
}
