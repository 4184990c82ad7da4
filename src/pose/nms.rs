//! OKS non-maximum suppression over the people of one image, as the official evaluation
//! applies it before writing its results file (`lib/dataset/coco.py` `evaluate`, with
//! `oks_nms` of `lib/nms/nms.py`, `TEST.OKS_THRE` = 0.9, every joint counted).
//!
//! The arithmetic follows the official code's types: keypoints are float32 (the official
//! predictions array), so their differences and squares are float32; from the division
//! by the per-joint variance on, float64; the 17 terms are summed as `np.sum` adds them
//! (`pose::numpy::sum`). The area of a person is that of its
//! crop ([`Crop::area`](crate::pose::affine::Crop::area): `scale × 200` multiplied in float32
//! for a box's crop).

use crate::error::{Error, Result};

use super::{Pose, numpy};

/// COCO's per-joint keypoint sigmas in tenths: the official `oks_iou` divides these by 10
/// (which is not always the nearest double to the decimal sigma, so it is done the same way).
pub const COCO_SIGMAS_X10: [f64; 17] = [
    0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89,
    0.89,
];

/// Each joint's OKS variance `(2σ)²`, as the official `oks_iou` and pycocotools compute
/// it (`(sigmas * 2) ** 2`, the sigmas divided by 10 first).
pub(crate) fn coco_variances() -> [f64; 17] {
    COCO_SIGMAS_X10.map(|tenths| {
        let twice = tenths / 10.0 * 2.0;
        twice * twice
    })
}

/// The official evaluation's threshold, `TEST.OKS_THRE`.
pub const OFFICIAL_OKS_THRESHOLD: f64 = 0.9;

/// Indices of the poses to keep, best first: greedily the highest-scoring pose left, and
/// away with every other whose OKS with it exceeds `threshold`. Ties in score go to the
/// later pose (the official reversed ascending sort does so for small images; NumPy promises
/// no order for ties). Only COCO's 17 joints have sigmas.
pub fn oks_nms(poses: &[Pose], threshold: f64) -> Result<Vec<usize>> {
    if let Some(p) = poses
        .iter()
        .find(|p| p.keypoints.len() != COCO_SIGMAS_X10.len())
    {
        return Err(Error::Input(format!(
            "OKS suppression needs COCO's {} joints, the model has {}",
            COCO_SIGMAS_X10.len(),
            p.keypoints.len()
        )));
    }
    let mut order: Vec<usize> = (0..poses.len()).collect();
    order.sort_by(|&a, &b| poses[a].score.total_cmp(&poses[b].score));
    order.reverse();
    let mut keep = Vec::new();
    while let Some((&best, rest)) = order.split_first() {
        keep.push(best);
        order = rest
            .iter()
            .copied()
            .filter(|&other| oks(&poses[best], &poses[other]) <= threshold)
            .collect();
    }
    Ok(keep)
}

/// Object keypoint similarity of two poses (the official `oks_iou` for one pair).
#[must_use]
pub fn oks(g: &Pose, d: &Pose) -> f64 {
    let mean_area = (g.crop.area() + d.crop.area()) / 2.0 + f64::EPSILON;
    let terms: Vec<f64> = g
        .keypoints
        .iter()
        .zip(&d.keypoints)
        .zip(coco_variances())
        .map(|((a, b), var)| {
            let (dx, dy) = (b.x - a.x, b.y - a.y);
            let e = f64::from(dx * dx + dy * dy) / var / mean_area / 2.0;
            (-e).exp()
        })
        .collect();
    numpy::sum(&terms) / terms.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pose::{Keypoint, PersonBox, affine::Crop};

    fn pose(shift: f32, score: f64) -> Pose {
        Pose {
            keypoints: (0..17)
                .map(|j| Keypoint {
                    x: 100.0 + 3.0 * j as f32 + shift,
                    y: 50.0 + 5.0 * j as f32,
                    score: 0.5,
                })
                .collect(),
            bbox: PersonBox::new(80.0, 40.0, 60.0, 120.0, 1.0),
            crop: Crop::F32 {
                center: [110.0, 100.0],
                scale: [0.5625, 0.75],
            },
            score,
        }
    }

    #[test]
    fn near_duplicates_are_suppressed_and_the_rest_kept_best_first() {
        let poses = [
            pose(0.0, 0.5),
            pose(0.5, 0.9),
            pose(60.0, 0.7),
            pose(0.0, 0.2),
        ];
        assert!((oks(&poses[0], &poses[0]) - 1.0).abs() < 1e-12);
        assert!(oks(&poses[0], &poses[1]) > 0.9);
        assert!(oks(&poses[0], &poses[2]) < 0.1);
        // 1 (0.9) suppresses 0 and 3, which lie half a pixel or less from it; 2 is far.
        assert_eq!(oks_nms(&poses, 0.9).unwrap(), [1, 2]);
        // At threshold 1 nothing is suppressed: all, by descending score.
        assert_eq!(oks_nms(&poses, 1.0).unwrap(), [1, 2, 0, 3]);
        // Ties: the later pose first.
        assert_eq!(
            oks_nms(&[pose(0.0, 0.5), pose(60.0, 0.5)], 0.9).unwrap(),
            [1, 0]
        );
        assert!(oks_nms(&[], 0.9).unwrap().is_empty());
    }

    #[test]
    fn only_coco_joints_have_sigmas() {
        let mut p = pose(0.0, 1.0);
        p.keypoints.truncate(16);
        let e = oks_nms(&[p], 0.9).unwrap_err().to_string();
        assert!(e.contains("17 joints, the model has 16"), "{e}");
    }
}
