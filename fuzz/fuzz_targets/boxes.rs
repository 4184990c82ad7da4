//! The boxes, detections, ground-truth annotation (COCO and MPII) and `--bbox` parsers on
//! arbitrary text, MPII's crops mapped as the pipeline maps them, and the keypoint
//! evaluation over whatever annotation or results file the text makes.
#![no_main]

mod limit;

use std::sync::OnceLock;

use hrnet::pose::coco_eval::{
    GroundTruth, KeypointResult, evaluate_keypoints, parse_keypoint_results,
};
use hrnet::pose::io::{parse_bbox, parse_boxes, parse_detections, parse_ground_truth};
use libfuzzer_sys::fuzz_target;

/// A fixed annotation file for the results the fuzzer writes: images 1 to 3, a person
/// each, one crowd.
fn fixed_ground_truth() -> &'static GroundTruth {
    static GT: OnceLock<GroundTruth> = OnceLock::new();
    GT.get_or_init(|| {
        let person = |id: u64, image: u64, crowd: u64, v: u64| {
            let k: Vec<String> = (0..17)
                .map(|j| format!("{}, {}, {v}", 10 + j, 20 + 2 * j))
                .collect();
            format!(
                r#"{{"id": {id}, "image_id": {image}, "category_id": 1, "iscrowd": {crowd},
                   "area": 1500.5, "bbox": [5, 15, 30, 50], "keypoints": [{}],
                   "num_keypoints": {}}}"#,
                k.join(", "),
                if v > 0 { 17 } else { 0 }
            )
        };
        let text = format!(
            r#"{{"images": [{{"id": 1}}, {{"id": 2}}, {{"id": 3}}], "categories": [{{"id": 1}}],
                "annotations": [{}, {}, {}]}}"#,
            person(1, 1, 0, 2),
            person(2, 2, 1, 0),
            person(3, 3, 0, 1)
        );
        GroundTruth::parse(&text, std::path::Path::new("fixed.json")).expect("the fixed file")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.json");
    if let Ok(boxes) = parse_boxes(text, path) {
        for b in boxes {
            let _ = b.check(640, 480);
        }
    }
    let _ = parse_detections(text, path, 0.0);
    let _ = parse_ground_truth(text, path);
    if let Ok(people) = hrnet::pose::mpii::parse_annotations(text, path) {
        for p in &people {
            for inverse in [false, true] {
                let _ = p.crop.transform(256, 256, inverse);
            }
        }
        let _ = hrnet::pose::mpii::by_image(&people);
    }
    let _ = parse_bbox(text);
    if let Ok(results) = parse_keypoint_results(text, path) {
        let _ = evaluate_keypoints(fixed_ground_truth(), &results);
    }
    if let Ok(gt) = GroundTruth::parse(text, path) {
        // A person near each of the first images, two in the first.
        let results: Vec<KeypointResult> = gt
            .images()
            .iter()
            .take(4)
            .flat_map(|&image| [0.0, 3.0].map(|shift| (image, shift)))
            .map(|(image, shift)| KeypointResult {
                image_id: image,
                category_id: 1,
                keypoints: (0..17)
                    .flat_map(|j| [10.0 + f64::from(j) + shift, 20.0 + 2.0 * f64::from(j), 0.5])
                    .collect(),
                score: 0.5 + shift / 10.0,
            })
            .collect();
        let _ = evaluate_keypoints(&gt, &results);
    }
});
