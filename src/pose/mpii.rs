//! MPII Human Pose, as the official code runs it (`lib/dataset/mpii.py`): the people of an
//! annotation file (`annot/valid.json`), each cropped where the annotation says, the
//! keypoints found there, and their PCKh against the ground truth (`annot/gt_valid.mat`).
//!
//! ```
//! use hrnet::pose::mpii::{by_image, parse_annotations};
//! use hrnet::pose::{Device, PoseEstimator};
//! use hrnet::{HrnetConfig, Model};
//!
//! let text = r#"[{"image": "015601864.jpg", "center": [100, 80], "scale": 0.6}]"#;
//! let people = parse_annotations(text, "valid.json".as_ref())?;
//! // The official crop: 15 × scale pixels down, 1.25 × the scale, 0-based.
//! assert_eq!(people[0].crop.center(), [99.0, 88.0]);
//! assert_eq!(people[0].crop.scale(), [0.75, 0.75]);
//!
//! let mut config = HrnetConfig::official("tiny", 4, 16, 64, 64);
//! config.stages.iter_mut().for_each(|s| s.modules = 1);
//! let estimator = PoseEstimator::new(Model::random(&config, 1)?, Device::Cpu)?;
//! let image = image::RgbImage::from_pixel(200, 160, image::Rgb([90, 120, 150]));
//! for group in by_image(&people) {
//!     // `load_image(folder.join(&group.image))` for the real photograph.
//!     let poses = estimator.estimate(&image, &group.crops)?;
//!     assert_eq!(poses[0].keypoints.len(), 16);
//! }
//! # Ok::<(), hrnet::Error>(())
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Pose;
use super::affine::Crop;
use super::io::read_json;
use super::numpy::sum;
use crate::error::{Error, Result};
use crate::matfile::{MatArray, MatFile};

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

/// The people of one image in an annotation file.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePeople {
    /// The image's file name.
    pub image: String,
    /// The people's crops, in file order.
    pub crops: Vec<Crop>,
    /// Where each of them is in the file.
    pub indices: Vec<usize>,
}

/// The people grouped by image, images in the order of their first person, so that each
/// image is read once; `indices` put results back in the file's order.
#[must_use]
pub fn by_image(people: &[MpiiPerson]) -> Vec<ImagePeople> {
    let mut groups: Vec<ImagePeople> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (i, p) in people.iter().enumerate() {
        let g = *slot.entry(&p.image).or_insert_with(|| {
            groups.push(ImagePeople {
                image: p.image.clone(),
                crops: Vec::new(),
                indices: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].crops.push(p.crop);
        groups[g].indices.push(i);
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
            keypoints: pose.flat_keypoints(),
            score: pose.score,
            center: pose.crop.center(),
            scale: pose.crop.scale(),
        }
    }
}

/// Writes results as the official `pred.mat`: `preds`, people × joints × 2, float32,
/// 1-based (each coordinate + 1 in float32, as the official evaluate writes it).
pub fn save_predictions(path: impl AsRef<Path>, results: &[MpiiResult]) -> Result<()> {
    let n = results.len();
    let j = results.first().map_or(0, |r| r.keypoints.len() / 3);
    if results.iter().any(|r| r.keypoints.len() != 3 * j) {
        return Err(Error::Input(
            "results with different joint counts cannot share one pred.mat".into(),
        ));
    }
    let mut data = vec![0.0f32; n * j * 2];
    for (p, r) in results.iter().enumerate() {
        for (k, kp) in r.keypoints.chunks_exact(3).enumerate() {
            for c in 0..2 {
                data[p + n * (k + j * c)] = kp[c] + 1.0;
            }
        }
    }
    crate::matfile::save_f32(path, "preds", &[n, j, 2], &data)
}

/// Reads results written by `hrnet pose` for an MPII annotation file.
pub fn load_results(path: impl AsRef<Path>) -> Result<Vec<MpiiResult>> {
    read_json(path.as_ref(), "MPII keypoint results file")
}

/// The official PCKh threshold: a joint is correct within half the head size.
pub const PCKH_THRESHOLD: f64 = 0.5;
/// The official head size: 0.6 × the head box's diagonal (`SC_BIAS`).
const HEAD_SIZE_BIAS: f64 = 0.6;
/// The joints left out of the means (pelvis and thorax, at 6 and 7), as the official
/// evaluation masks them.
const UNSCORED: std::ops::Range<usize> = 6..8;
/// The figures the official evaluation reports, in its order.
pub const PCKH_NAMES: [&str; 9] = [
    "Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1",
];

/// MPII's ground truth for PCKh, as the official evaluation reads it from
/// `annot/gt_valid.mat`: joint names, which joints are missing, their positions and each
/// person's head box (1-based pixels, MATLAB's).
#[derive(Clone, Debug, PartialEq)]
pub struct MpiiGroundTruth {
    /// Joint names (`dataset_joints`: `rank`, `rkne`, ..., `head`, ...).
    pub joints: Vec<String>,
    /// People.
    pub people: usize,
    /// `jnt_missing`, by joint then person.
    missing: Vec<f64>,
    /// `pos_gt_src`, by joint, then x or y, then person.
    positions: Vec<f64>,
    /// `headboxes_src`, by corner, then x or y, then person.
    head_boxes: Vec<f64>,
}

/// A numeric array of the ground truth with the dimensions expected (`None` for any).
fn numeric<'a>(
    mat: &'a MatFile,
    name: &str,
    dims: &[Option<usize>],
    path: &Path,
) -> Result<(&'a [usize], &'a [f64])> {
    match mat.get(name, path)? {
        MatArray::Numeric { dims: d, data }
            if d.len() == dims.len()
                && d.iter().zip(dims).all(|(a, b)| b.is_none_or(|b| b == *a)) =>
        {
            Ok((d, data))
        }
        other => Err(Error::Mat {
            path: path.to_path_buf(),
            reason: format!(
                "'{name}' should be a numeric array of dimensions {}, not {}",
                dims.iter()
                    .map(|d| d.map_or("N".to_string(), |d| d.to_string()))
                    .collect::<Vec<_>>()
                    .join("×"),
                other.describe()
            ),
        }),
    }
}

impl MpiiGroundTruth {
    /// Reads the official ground-truth file (`annot/gt_valid.mat`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_mat(&MatFile::load(path)?, path)
    }

    /// The ground truth from a read MAT-file (`path` only names it in errors):
    /// `dataset_joints` (a cell array of J names), `jnt_missing` (J × N),
    /// `pos_gt_src` (J × 2 × N) and `headboxes_src` (2 × 2 × N).
    pub fn from_mat(mat: &MatFile, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Mat {
            path: path.to_path_buf(),
            reason,
        };
        let joints: Vec<String> = match mat.get("dataset_joints", path)? {
            MatArray::Cell { cells, .. } => cells
                .iter()
                .map(|c| match c {
                    MatArray::Char { text, .. } => Ok(text.clone()),
                    other => Err(bad(format!(
                        "'dataset_joints' should hold joint names, not {}",
                        other.describe()
                    ))),
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(bad(format!(
                    "'dataset_joints' should be a cell array of joint names, not {}",
                    other.describe()
                )));
            }
        };
        let j = joints.len();
        let (dims, missing) = numeric(mat, "jnt_missing", &[Some(j), None], path)?;
        let people = dims[1];
        if people == 0 {
            return Err(bad("no people in 'jnt_missing'".into()));
        }
        let (_, positions) = numeric(mat, "pos_gt_src", &[Some(j), Some(2), Some(people)], path)?;
        let (_, head_boxes) = numeric(
            mat,
            "headboxes_src",
            &[Some(2), Some(2), Some(people)],
            path,
        )?;
        if j <= UNSCORED.end {
            return Err(bad(format!("{j} joints; MPII has 16")));
        }
        // MATLAB's column-major order to by-joint rows.
        let by_row = |data: &[f64], rows: usize| -> Vec<f64> {
            (0..rows)
                .flat_map(|r| (0..people).map(move |n| data[r + rows * n]))
                .collect()
        };
        Ok(MpiiGroundTruth {
            joints,
            people,
            missing: by_row(missing, j),
            positions: by_row(positions, 2 * j),
            head_boxes: by_row(head_boxes, 4),
        })
    }

    fn joint(&self, name: &str) -> Option<usize> {
        self.joints.iter().position(|j| j == name)
    }
}

/// PCKh as the official `MPIIDataset.evaluate` computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PckhEvaluation {
    /// The figures named by [`PCKH_NAMES`], in percent.
    pub figures: [f64; 9],
    /// PCKh@0.5 per joint, in percent (NaN for a joint no person has).
    pub per_joint: Vec<f64>,
}

impl PckhEvaluation {
    /// The figures as the official code prints them (`_print_name_value`), `arch` naming
    /// the row.
    #[must_use]
    pub fn table(&self, arch: &str) -> String {
        let arch = if arch.chars().count() > 15 {
            format!("{}...", arch.chars().take(8).collect::<String>())
        } else {
            arch.to_string()
        };
        let names: Vec<String> = PCKH_NAMES.iter().map(|n| format!("| {n}")).collect();
        let values: Vec<String> = self.figures.iter().map(|v| format!("| {v:.3}")).collect();
        format!(
            "| Arch {} |\n{}|\n| {arch} {} |",
            names.join(" "),
            "|---".repeat(PCKH_NAMES.len() + 1),
            values.join(" ")
        )
    }
}

/// Predicted joints, 1-based (MATLAB's pixels, as `pred.mat` holds them), by person then
/// joint.
pub type Predictions = Vec<Vec<[f64; 2]>>;

/// Predictions from `hrnet pose`'s results: each keypoint + 1 in float32, as the
/// official evaluation adds 1 to its float32 predictions.
#[must_use]
pub fn predictions(results: &[MpiiResult]) -> Predictions {
    results
        .iter()
        .map(|r| {
            r.keypoints
                .chunks_exact(3)
                .map(|k| [f64::from(k[0] + 1.0), f64::from(k[1] + 1.0)])
                .collect()
        })
        .collect()
}

/// Predictions from the official `pred.mat` (`preds`, N × J × 2, 1-based).
pub fn predictions_from_mat(path: impl AsRef<Path>) -> Result<Predictions> {
    let path = path.as_ref();
    let mat = MatFile::load(path)?;
    let (dims, data) = numeric(&mat, "preds", &[None, None, Some(2)], path)?;
    let (n, j) = (dims[0], dims[1]);
    Ok((0..n)
        .map(|p| {
            (0..j)
                .map(|k| [data[p + n * k], data[p + n * (k + j)]])
                .collect()
        })
        .collect())
}

/// PCKh of `preds` against the ground truth, as the official `MPIIDataset.evaluate`
/// computes it, in its order of operations and types: per joint, the share of visible
/// joints within `threshold` × 0.6 × the head box's diagonal; the means weighted by each
/// joint's visible count, pelvis and thorax left out; `Mean@0.1` at the official's
/// eleventh threshold step (0.11). One prediction per ground-truth person, in order.
pub fn evaluate_pckh(gt: &MpiiGroundTruth, preds: &Predictions) -> Result<PckhEvaluation> {
    let (j, n) = (gt.joints.len(), gt.people);
    if preds.len() != n {
        return Err(Error::Input(format!(
            "{} predictions for the {n} people of the ground truth; PCKh needs one per person, in its order",
            preds.len()
        )));
    }
    if let Some((i, p)) = preds.iter().enumerate().find(|(_, p)| p.len() != j) {
        return Err(Error::Input(format!(
            "prediction {i} has {} joints, the ground truth {j}",
            p.len()
        )));
    }
    let index = |name: &str| {
        gt.joint(name).ok_or_else(|| {
            Error::Input(format!(
                "the ground truth names no joint '{name}' (it has {})",
                gt.joints.join(", ")
            ))
        })
    };
    let visible: Vec<f64> = gt.missing.iter().map(|m| 1.0 - m).collect();
    // Head sizes: 0.6 × the norm of the head box's diagonal.
    let head: Vec<f64> = (0..n)
        .map(|p| {
            // headboxes_src[1] - headboxes_src[0]: rows are corner + 2 × coordinate.
            let d = |c: usize| gt.head_boxes[(1 + 2 * c) * n + p] - gt.head_boxes[2 * c * n + p];
            let (dx, dy) = (d(0), d(1));
            (dx * dx + dy * dy).sqrt() * HEAD_SIZE_BIAS
        })
        .collect();
    // The error of each joint in head sizes, 0 where it is not visible.
    let scaled: Vec<f64> = (0..j)
        .flat_map(|k| (0..n).map(move |p| (k, p)))
        .map(|(k, p)| {
            // pos_gt_src rows are joint + J × coordinate.
            let d = |c: usize| preds[p][k][c] - gt.positions[(k + j * c) * n + p];
            let (dx, dy) = (d(0), d(1));
            (dx * dx + dy * dy).sqrt() / head[p] * visible[k * n + p]
        })
        .collect();
    // Sums of 0/1 flags: exact in any order.
    let counts: Vec<f64> = visible.chunks_exact(n).map(sum).collect();
    let pck = |t: f64| -> Vec<f64> {
        let within: Vec<f64> = scaled
            .iter()
            .zip(&visible)
            .map(|(&e, &v)| f64::from(u8::from(e <= t)) * v)
            .collect();
        within
            .chunks_exact(n)
            .zip(&counts)
            .map(|(row, c)| 100.0 * sum(row) / c)
            .collect()
    };
    let (per_joint, at_011) = (pck(PCKH_THRESHOLD), pck(11.0 * 0.01));
    // Masked entries count as 0 in the masked arrays' sums.
    let masked = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .enumerate()
            .map(|(k, &x)| if UNSCORED.contains(&k) { 0.0 } else { x })
            .collect()
    };
    let total = sum(&masked(&counts));
    let ratio: Vec<f64> = counts.iter().map(|c| c / total).collect();
    let weighted = |v: &[f64]| {
        let w: Vec<f64> = v.iter().zip(&ratio).map(|(a, b)| a * b).collect();
        sum(&masked(&w))
    };
    let at = |k: usize| {
        if UNSCORED.contains(&k) {
            f64::NAN
        } else {
            per_joint[k]
        }
    };
    let pair = |l: &str, r: &str| -> Result<f64> { Ok(0.5 * (at(index(l)?) + at(index(r)?))) };
    Ok(PckhEvaluation {
        figures: [
            at(index("head")?),
            pair("lsho", "rsho")?,
            pair("lelb", "relb")?,
            pair("lwri", "rwri")?,
            pair("lhip", "rhip")?,
            pair("lkne", "rkne")?,
            pair("lank", "rank")?,
            weighted(&per_joint),
            weighted(&at_011),
        ],
        per_joint,
    })
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
        assert_eq!(groups[0].image, "015601864.jpg");
        assert_eq!(groups[0].indices, [0, 1]);
        assert_eq!(groups[1].crops, vec![people[2].crop]);
        // An image's people after another image's join its group.
        let mut again = people.clone();
        again.push(people[0].clone());
        let groups = by_image(&again);
        assert_eq!(groups[0].indices, [0, 1, 3]);
        assert_eq!(groups[1].indices, [2]);
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
