//! `load_image` against OpenCV: every file in tests/data/images (scripts/image_case.py:
//! JPEGs baseline and progressive, 4:2:0, 4:2:2, 4:4:4, 4:1:1 (with restart markers) and
//! 4:4:0, grey, CMYK, with an EXIF rotation; 16-bit PNGs, RGB, grey and with alpha; 8-bit RGBA, one-bit and palette PNGs
//! with transparency; BMPs of 24, 32, 8 (palette) and 1 bits; WebPs lossy, lossless and
//! lossy with alpha; binary PPM, PGM, 16-bit PPM and PBM) decodes to the pixels
//! `cv2.imread(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)` gave, converted to RGB, byte for
//! byte. The official pipeline crops from those pixels.

mod common;

use hrnet::pose::io::load_image;

#[test]
fn images_decode_to_opencvs_pixels() {
    let dir = common::test_data().join("images");
    let (mut checked, mut wrong) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some((stem, _)) = name.rsplit_once('.') else {
            continue;
        };
        if stem.ends_with(".opencv") {
            continue;
        }
        checked.push(name.clone());
        let ours = match load_image(&path) {
            Ok(img) => img,
            Err(e) => {
                wrong.push(format!("{name}: {e}"));
                continue;
            }
        };
        let opencv = load_image(dir.join(format!("{stem}.opencv.png"))).unwrap();
        if ours.dimensions() != opencv.dimensions() {
            wrong.push(format!(
                "{name}: {:?}, OpenCV {:?}",
                ours.dimensions(),
                opencv.dimensions()
            ));
            continue;
        }
        let differ = ours
            .as_raw()
            .iter()
            .zip(opencv.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        let largest = ours
            .as_raw()
            .iter()
            .zip(opencv.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        if differ > 0 {
            wrong.push(format!(
                "{name}: {differ} of {} bytes differ from OpenCV's, by up to {largest}",
                ours.as_raw().len()
            ));
        }
    }
    checked.sort();
    println!("checked against OpenCV: {}", checked.join(", "));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(checked.len(), 25, "{checked:?}");
}
