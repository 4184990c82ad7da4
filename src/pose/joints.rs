//! Keypoint metadata: names, the left/right pairs the flip test swaps, and the skeleton
//! that `--draw` connects, for COCO's 17 and MPII's 16 joints.

/// A dataset's joints.
#[derive(Debug, PartialEq, Eq)]
pub struct JointSet {
    /// Dataset name.
    pub dataset: &'static str,
    /// Joint names in model order (empty for an unknown layout).
    pub names: &'static [&'static str],
    /// Left/right pairs, swapped by the flip test.
    pub flip_pairs: &'static [(usize, usize)],
    /// Limbs to draw, as joint index pairs.
    pub skeleton: &'static [(usize, usize)],
}

/// COCO's 17 keypoints.
pub static COCO: JointSet = JointSet {
    dataset: "COCO",
    names: &[
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ],
    flip_pairs: &[
        (1, 2),
        (3, 4),
        (5, 6),
        (7, 8),
        (9, 10),
        (11, 12),
        (13, 14),
        (15, 16),
    ],
    skeleton: &[
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ],
};

/// MPII's 16 keypoints.
pub static MPII: JointSet = JointSet {
    dataset: "MPII",
    names: &[
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ],
    flip_pairs: &[(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)],
    skeleton: &[
        (0, 1),
        (1, 2),
        (2, 6),
        (6, 3),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (10, 11),
        (11, 12),
        (12, 7),
        (7, 13),
        (13, 14),
        (14, 15),
    ],
};

/// Joints of a model trained on neither: no names, no pairs, no skeleton.
pub static UNKNOWN: JointSet = JointSet {
    dataset: "unknown",
    names: &[],
    flip_pairs: &[],
    skeleton: &[],
};

/// The joint that `j` swaps with in the flip test (`j` itself when it is in no pair).
#[must_use]
pub fn partner(pairs: &[(usize, usize)], j: usize) -> usize {
    pairs
        .iter()
        .find_map(|&(a, b)| {
            if a == j {
                Some(b)
            } else if b == j {
                Some(a)
            } else {
                None
            }
        })
        .unwrap_or(j)
}

impl JointSet {
    /// The set for a model with `n` output heatmaps.
    #[must_use]
    pub fn for_joints(n: usize) -> &'static JointSet {
        match n {
            17 => &COCO,
            16 => &MPII,
            _ => &UNKNOWN,
        }
    }

    /// Whether names and left/right pairs are known.
    #[must_use]
    pub fn is_known(&self) -> bool {
        !self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_pairs_join_left_and_right() {
        for set in [&COCO, &MPII] {
            for &(a, b) in set.flip_pairs {
                let (l, r) = (set.names[a], set.names[b]);
                let swapped = if l.starts_with("left") {
                    l.replacen("left", "right", 1)
                } else {
                    l.replacen("right", "left", 1)
                };
                assert_eq!(swapped, r, "{} pair ({a}, {b})", set.dataset);
            }
            // Every named left/right joint is in exactly one pair.
            let sided = set
                .names
                .iter()
                .filter(|n| n.starts_with("left") || n.starts_with("right"))
                .count();
            assert_eq!(sided, 2 * set.flip_pairs.len());
            assert!(
                set.skeleton
                    .iter()
                    .all(|&(a, b)| a < set.names.len() && b < set.names.len())
            );
        }
        assert_eq!(JointSet::for_joints(17), &COCO);
        assert_eq!(
            (
                partner(COCO.flip_pairs, 5),
                partner(COCO.flip_pairs, 6),
                partner(COCO.flip_pairs, 0)
            ),
            (6, 5, 0)
        );
        assert!(!JointSet::for_joints(5).is_known());
    }
}
