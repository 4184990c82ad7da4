//! Keypoints from heatmaps with the official rules (`get_max_preds` and the
//! post-processing of `get_final_preds` in lib/core/inference.py), in heatmap
//! coordinates. The GPU's argmax kernel (kernels/argmax.cu) is checked against this.

use crate::tensor::{Nchw, Tensor};

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
/// axis when `1 < px < w − 1` and `1 < py < h − 1` (no shift on a tie). Every comparison
/// is made in the map's own type (f32, or f64 as the official code's float64 heatmaps);
/// the score is then rounded to f32, as the official results hold it.
#[must_use]
pub fn peak<T: Copy + PartialOrd + Into<f64>>(map: &[T], h: usize, w: usize) -> Peak {
    let mut idx = 0;
    for (i, &v) in map.iter().enumerate() {
        if v > map[idx] {
            idx = i;
        }
    }
    let max = map.get(idx).map_or(f64::NAN, |&v| v.into());
    let score = max as f32;
    // `max > 0` is false for NaN too: a NaN map gives (0, 0), as in the official code.
    if max.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
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
fn sign<T: PartialOrd>(a: T, b: T) -> f32 {
    f32::from(u8::from(a > b)) - f32::from(u8::from(a < b))
}

/// The peak of every map of an `N × K × H × W` batch, in (image, joint) order.
#[must_use]
pub fn peaks(heatmaps: &Tensor) -> Vec<Peak> {
    peaks_of(heatmaps.data(), heatmaps.shape())
}

/// [`peaks`] of a batch of `shape` in any float type.
#[must_use]
pub fn peaks_of<T: Copy + PartialOrd + Into<f64>>(data: &[T], shape: Nchw) -> Vec<Peak> {
    data.chunks_exact((shape.h * shape.w).max(1))
        .map(|m| peak(m, shape.h, shape.w))
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

    /// In f64 the maximum and the refinement are decided on f64 values: neighbours that
    /// f32 cannot tell apart still move the peak.
    #[test]
    fn f64_maps_are_compared_in_f64() {
        let mut m = vec![0.1f64; 30];
        let close = 1.0 + 1e-12;
        m[2 * 5 + 2] = 1.0;
        m[3 * 5 + 2] = close;
        m[3 * 5 + 3] = 0.5 + 1e-13;
        m[3 * 5 + 1] = 0.5;
        let narrowed: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        assert_eq!(
            peak(&m, 6, 5),
            Peak {
                x: 2.25,
                y: 2.75,
                score: close as f32
            }
        );
        assert_eq!(
            (peak(&narrowed, 6, 5).x, peak(&narrowed, 6, 5).y),
            (2.0, 2.25)
        );
        let s = Nchw {
            n: 1,
            c: 2,
            h: 6,
            w: 5,
        };
        let both = [m.clone(), m].concat();
        assert_eq!(peaks_of(&both, s), vec![peak(&both[..30], 6, 5); 2]);
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
