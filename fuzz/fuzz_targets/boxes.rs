//! The boxes, detections, ground-truth annotation and `--bbox` parsers on arbitrary text.
#![no_main]

use hrnet::pose::io::{parse_bbox, parse_boxes, parse_detections, parse_ground_truth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("fuzz.json");
    if let Ok(boxes) = parse_boxes(text, path) {
        for b in boxes {
            let _ = b.check(640, 480);
        }
    }
    let _ = parse_detections(text, path, 0.0);
    let _ = parse_ground_truth(text, path);
    let _ = parse_bbox(text);
});
