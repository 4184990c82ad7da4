//! MPII Human Pose, as the official code runs it (`lib/dataset/mpii.py`): the people of an
//! annotation file (`annot/valid.json`), each cropped where the annotation says, and the
//! keypoints found there.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Pose;
use super::affine::Crop;
use super::io::read_json;
use crate::error::{Error, Result};

/// One person of an MPII annotation file, with the crop the official `MPIIDataset` takes.
#[derive(Clone, Debug, PartialEq)]
pub struct MpiiPerson {
    /// The image's file name, relative to the images folder.
    pub image: String,
    /// The crop (float64 arrays, as the official ones).
    pub crop: Crop,
}

#[derive(Deserialize)]
struct Annotation {
    image: String,
    center: [f64; 2],
    scale: f64,
}

/// The crop of an annotated person, as `MPIIDataset._get_db` makes it from the annotation's
/// `center` and `scale` (the person's height in units of 200 pixels): unless the center's
/// x is -1, the center moves down by 15 × scale pixels and the scale grows 1.25×; then the
/// center moves from MATLAB's 1-based pixels to 0-based ones.
#[must_use]
pub fn annotated_crop(center: [f64; 2], scale: f64) -> Crop {
    let (mut c, mut s) = (center, [scale, scale]);
    if c[0] != -1.0 {
        c[1] += 15.0 * s[1];
        s = s.map(|v| v * 1.25);
    }
    Crop::F64 {
        center: c.map(|v| v - 1.0),
        scale: s,
    }
}

/// The people of an MPII annotation file in the official format (`annot/valid.json`,
/// `annot/test.json`: `[{"image", "center", "scale", ...}]`), in file order, each with its
/// [`annotated_crop`].
pub fn load_annotations(path: impl AsRef<Path>) -> Result<Vec<MpiiPerson>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_annotations(&text, path)
}

/// [`load_annotations`] on the file's text (`path` only names it in errors).
pub fn parse_annotations(text: &str, path: &Path) -> Result<Vec<MpiiPerson>> {
    let people: Vec<Annotation> = super::io::parse_json(
        text,
        path,
        "MPII annotation file ([{\"image\", \"center\", \"scale\"}])",
    )?;
    people
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let crop = annotated_crop(a.center, a.scale);
            if !crop.is_valid() {
                return Err(Error::Json {
                    path: path.to_path_buf(),
                    reason: format!(
                        "person {i} ({}) has center {:?} and scale {}: a crop needs finite \
                         numbers and a positive scale",
                        a.image, a.center, a.scale
                    ),
                });
            }
            if Path::new(&a.image).is_absolute() || a.image.is_empty() {
                return Err(Error::Json {
                    path: path.to_path_buf(),
                    reason: format!(
                        "person {i} names the image {:?}; a file name inside the images \
                         folder was expected",
                        a.image
                    ),
                });
            }
            Ok(MpiiPerson {
                image: a.image,
                crop,
            })
        })
        .collect()
}

/// The people grouped by image, each run of consecutive people of one image a group, so
/// that the groups' people in order are the file's: `(file name, crops)`.
#[must_use]
pub fn by_image(people: &[MpiiPerson]) -> Vec<(String, Vec<Crop>)> {
    let mut groups: Vec<(String, Vec<Crop>)> = Vec::new();
    for p in people {
        match groups.last_mut() {
            Some((image, crops)) if *image == p.image => crops.push(p.crop),
            _ => groups.push((p.image.clone(), vec![p.crop])),
        }
    }
    groups
}

/// One person's keypoints, as `hrnet pose` writes them for an MPII annotation file: one
/// per annotated person, in the file's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MpiiResult {
    /// The image's file name, as the annotation gives it.
    pub image: String,
    /// `[x, y, score]` per joint, flattened; 0-based image pixels (the official `pred.mat`
    /// holds `x + 1, y + 1`).
    pub keypoints: Vec<f32>,
    /// The mean of the keypoint scores above 0.2 (0 when none is).
    pub score: f64,
    /// The crop's center, 0-based (the official `center`).
    pub center: [f64; 2],
    /// The crop's scale (the official `scale`, 1.25 × the annotation's).
    pub scale: [f64; 2],
}

impl MpiiResult {
    /// A pose found in `image`.
    #[must_use]
    pub fn new(image: &str, pose: &Pose) -> Self {
        MpiiResult {
            image: image.to_string(),
            keypoints: pose
                .keypoints
                .iter()
                .flat_map(|k| [k.x, k.y, k.score])
                .collect(),
            score: pose.score,
            center: pose.crop.center(),
            scale: pose.crop.scale(),
        }
    }
}

/// Reads results written by `hrnet pose` for an MPII annotation file.
pub fn load_results(path: impl AsRef<Path>) -> Result<Vec<MpiiResult>> {
    read_json(path.as_ref(), "MPII keypoint results file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_give_the_official_crops() {
        let text = r#"[
            {"joints_vis": [1], "joints": [[1, 2]], "image": "015601864.jpg",
             "scale": 3.021046, "center": [594.0, 257.0]},
            {"image": "015601864.jpg", "scale": 2.0, "center": [-1, 40]},
            {"image": "005808361.jpg", "scale": 1.5, "center": [100, 50.5]}
        ]"#;
        let people = parse_annotations(text, Path::new("valid.json")).unwrap();
        assert_eq!(people.len(), 3);
        assert_eq!(
            people[0].crop,
            Crop::F64 {
                center: [593.0, 257.0 + 15.0 * 3.021046 - 1.0],
                scale: [3.021046 * 1.25; 2],
            }
        );
        // x = -1 marks a person without a usable center: no adjustment, only the 1-based shift.
        assert_eq!(
            people[1].crop,
            Crop::F64 {
                center: [-2.0, 39.0],
                scale: [2.0; 2],
            }
        );
        let groups = by_image(&people);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, "015601864.jpg");
        assert_eq!(groups[0].1.len(), 2);
        assert_eq!(groups[1].1, vec![people[2].crop]);
    }

    #[test]
    fn bad_annotations_are_named() {
        let bad = |text: &str| {
            parse_annotations(text, Path::new("valid.json"))
                .unwrap_err()
                .to_string()
        };
        let e = bad(r#"[{"image": "a.jpg", "center": [1, 2], "scale": 0}]"#);
        assert!(
            e.contains("person 0 (a.jpg)") && e.contains("positive scale"),
            "{e}"
        );
        let e = bad(r#"[{"image": "/etc/a.jpg", "center": [1, 2], "scale": 1}]"#);
        assert!(e.contains("inside the images folder"), "{e}");
        let e = bad(r#"{"images": [], "annotations": []}"#);
        assert!(e.contains("not a valid MPII annotation file"), "{e}");
        let e = bad(r#"[{"image": "a.jpg", "center": [1], "scale": 1}]"#);
        assert!(e.contains("not a valid MPII annotation file"), "{e}");
    }
}
