//! Keypoints from heatmaps with the official rules (`get_max_preds` and the
//! post-processing of `get_final_preds` in lib/core/inference.py), in heatmap
//! coordinates. The GPU's argmax kernel (kernels/argmax.cu) is checked against this.

use crate::tensor::Tensor;

/// The peak of one heatmap: position in heatmap pixels and the maximum value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Column, refined by ±0.25 toward the larger neighbour.
    pub x: f32,
    /// Row, refined likewise.
    pub y: f32,
    /// The heatmap's maximum.
    pub score: f32,
}

/// The peak of one `h × w` map: the first maximum in row-major order; (0, 0) when the
/// maximum is not positive; a quarter-pixel shift toward the larger neighbour on each
/// axis when `1 < px < w − 1` and `1 < py < h − 1` (no shift on a tie).
#[must_use]
pub fn peak(map: &[f32], h: usize, w: usize) -> Peak {
    let mut idx = 0;
    for (i, &v) in map.iter().enumerate() {
        if v > map[idx] {
            idx = i;
        }
    }
    let score = map.get(idx).copied().unwrap_or(f32::NAN);
    // `score > 0` is false for NaN too: a NaN map gives (0, 0), as in the official code.
    if score.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Peak {
            x: 0.0,
            y: 0.0,
            score,
        };
    }
    let (px, py) = (idx % w, idx / w);
    let (mut x, mut y) = (px as f32, py as f32);
    if 1 < px && px + 1 < w && 1 < py && py + 1 < h {
        let at = |r: usize, c: usize| map[r * w + c];
        x += 0.25 * sign(at(py, px + 1), at(py, px - 1));
        y += 0.25 * sign(at(py + 1, px), at(py - 1, px));
    }
    Peak { x, y, score }
}

/// `sign(a − b)` without the subtraction (exact for every pair of finite floats).
fn sign(a: f32, b: f32) -> f32 {
    f32::from(u8::from(a > b)) - f32::from(u8::from(a < b))
}

/// The peak of every map of an `N × K × H × W` batch, in (image, joint) order.
#[must_use]
pub fn peaks(heatmaps: &Tensor) -> Vec<Peak> {
    let s = heatmaps.shape();
    heatmaps
        .data()
        .chunks_exact((s.h * s.w).max(1))
        .map(|m| peak(m, s.h, s.w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 6 × 5 map, 0.1 everywhere, with `v` at (x, y) and optional neighbours.
    fn map_with(x: usize, y: usize, v: f32, extra: &[(usize, usize, f32)]) -> Vec<f32> {
        let mut m = vec![0.1; 6 * 5];
        m[y * 5 + x] = v;
        for &(ex, ey, ev) in extra {
            m[ey * 5 + ex] = ev;
        }
        m
    }

    #[test]
    fn refinement_only_strictly_inside() {
        // Interior peak (2, 2) with a larger right and lower neighbour: +0.25, +0.25.
        let m = map_with(
            2,
            2,
            1.0,
            &[(3, 2, 0.5), (1, 2, 0.2), (2, 3, 0.6), (2, 1, 0.3)],
        );
        assert_eq!(
            peak(&m, 6, 5),
            Peak {
                x: 2.25,
                y: 2.25,
                score: 1.0
            }
        );
        // Larger left and upper neighbours: −0.25 each.
        let m = map_with(2, 3, 1.0, &[(1, 3, 0.5), (2, 2, 0.6)]);
        assert_eq!(
            peak(&m, 6, 5),
            Peak {
                x: 1.75,
                y: 2.75,
                score: 1.0
            }
        );
        // Ties move nothing.
        assert_eq!(
            peak(&map_with(2, 2, 1.0, &[]), 6, 5),
            Peak {
                x: 2.0,
                y: 2.0,
                score: 1.0
            }
        );
        // `1 < px < W−1`: peaks at 0, 1 and W−1 are not refined, W−2 is (likewise rows).
        for (x, y, refined) in [
            (0, 2, false),
            (1, 2, false),
            (3, 2, true),
            (4, 2, false),
            (2, 0, false),
            (2, 1, false),
            (2, 4, true),
            (2, 5, false),
        ] {
            let mut m = map_with(x, y, 1.0, &[]);
            // Unequal neighbours wherever they exist, so that any refinement would show.
            if x + 1 < 5 {
                m[y * 5 + x + 1] = 0.9;
            }
            if y + 1 < 6 {
                m[(y + 1) * 5 + x] = 0.9;
            }
            let p = peak(&m, 6, 5);
            let shift = if refined { 0.25 } else { 0.0 };
            assert_eq!(
                (p.x, p.y),
                (x as f32 + shift, y as f32 + shift),
                "peak at ({x}, {y})"
            );
        }
    }

    #[test]
    fn first_maximum_wins_and_non_positive_maps_give_zero() {
        let m = map_with(3, 1, 1.0, &[(1, 4, 1.0)]);
        assert_eq!((peak(&m, 6, 5).x, peak(&m, 6, 5).y), (3.0, 1.0));
        let neg: Vec<f32> = (0..30).map(|i| -1.0 - i as f32).collect();
        assert_eq!(
            peak(&neg, 6, 5),
            Peak {
                x: 0.0,
                y: 0.0,
                score: -1.0
            }
        );
        let zero = vec![0.0; 30];
        assert_eq!(
            peak(&zero, 6, 5),
            Peak {
                x: 0.0,
                y: 0.0,
                score: 0.0
            }
        );
    }
}
