//! Person boxes to crops and back: the official `_xywh2cs` and `get_affine_transform`
//! (lib/dataset/coco.py, lib/utils/transforms.py) with their float32 and float64 rounding, and the
//! three-point affine solve of `cv2.getAffineTransform`.

/// OpenCV-style 2×3 affine map: `(x, y) → (m[0]·x + m[1]·y + m[2], m[3]·x + m[4]·y + m[5])`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    /// Applies the map to a point (as `np.dot(t, [x, y, 1])`).
    #[must_use]
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5])
    }

    /// The inverse map, computed as `cv2.invertAffineTransform` does (None if singular).
    #[must_use]
    pub fn invert(&self) -> Option<Affine> {
        let m = &self.0;
        let d = m[0] * m[4] - m[1] * m[3];
        if d == 0.0 || !d.is_finite() {
            return None;
        }
        let d = 1.0 / d;
        let (a11, a22, a12, a21) = (m[4] * d, m[0] * d, -m[1] * d, -m[3] * d);
        let b1 = -a11 * m[2] - a12 * m[5];
        let b2 = -a21 * m[2] - a22 * m[5];
        Some(Affine([a11, a12, b1, a21, a22, b2]))
    }

    /// The map taking the three `src` points to the three `dst` points, as
    /// `cv2.getAffineTransform` (Gaussian elimination with partial pivoting, in f64).
    #[must_use]
    pub fn from_points(src: [[f32; 2]; 3], dst: [[f32; 2]; 3]) -> Option<Affine> {
        let a: [[f64; 3]; 3] = src.map(|p| [f64::from(p[0]), f64::from(p[1]), 1.0]);
        let row = |k: usize| solve3(a, dst.map(|p| f64::from(p[k])));
        let (r0, r1) = (row(0)?, row(1)?);
        Some(Affine([r0[0], r0[1], r0[2], r1[0], r1[1], r1[2]]))
    }
}

/// Solves `a · x = b` for 3×3 `a` by Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col] == 0.0 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for r in col + 1..3 {
            let f = a[r][col] / a[col][col];
            let pivot_row = a[col];
            for (x, p) in a[r].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for r in (0..3).rev() {
        let s: f64 = (r + 1..3).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The official `pixel_std`: scales are in units of 200 pixels.
pub const PIXEL_STD: f64 = 200.0;
/// The official padding of a person box: the crop covers 1.25 × the padded box.
pub const BOX_PADDING: f32 = 1.25;

/// Where a person is cropped from, as the official code describes a crop: `center` in image
/// pixels and `scale`, the crop's width and height in units of 200 pixels. The official
/// arrays are float32 for a box (COCO's `_xywh2cs`) and float64 for a crop read from an
/// annotation (MPII's `center` and `scale`); the transforms round differently for each, so
/// the variant keeps which.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crop {
    /// Float32 arrays, made from a person box.
    F32 {
        /// The center in image pixels.
        center: [f32; 2],
        /// Width and height in units of 200 pixels.
        scale: [f32; 2],
    },
    /// Float64 arrays, given as they are.
    F64 {
        /// The center in image pixels.
        center: [f64; 2],
        /// Width and height in units of 200 pixels.
        scale: [f64; 2],
    },
}

impl Crop {
    /// The crop of a person box `(x, y, w, h)` for a network input of aspect ratio
    /// `aspect = width / height` (official `_xywh2cs`): the box grows to that aspect ratio,
    /// then by 1.25. Float32 arrays, as the official ones.
    #[must_use]
    pub fn from_box(x: f64, y: f64, w: f64, h: f64, aspect: f64) -> Crop {
        let center = [(x + w * 0.5) as f32, (y + h * 0.5) as f32];
        let (mut w, mut h) = (w, h);
        if w > aspect * h {
            h = w / aspect;
        } else if w < aspect * h {
            w = h * aspect;
        }
        let scale = [(w / PIXEL_STD) as f32, (h / PIXEL_STD) as f32];
        Crop::F32 {
            center,
            scale: scale.map(|s| s * BOX_PADDING),
        }
    }

    /// The center, widened to f64 (exactly).
    #[must_use]
    pub fn center(&self) -> [f64; 2] {
        match *self {
            Crop::F32 { center, .. } => center.map(f64::from),
            Crop::F64 { center, .. } => center,
        }
    }

    /// The scale, widened to f64 (exactly).
    #[must_use]
    pub fn scale(&self) -> [f64; 2] {
        match *self {
            Crop::F32 { scale, .. } => scale.map(f64::from),
            Crop::F64 { scale, .. } => scale,
        }
    }

    /// Width and height in pixels, `scale * 200` in the arrays' precision.
    #[must_use]
    pub fn size_px(&self) -> [f64; 2] {
        match *self {
            Crop::F32 { scale, .. } => scale.map(|s| f64::from(s * PIXEL_STD as f32)),
            Crop::F64 { scale, .. } => scale.map(|s| s * PIXEL_STD),
        }
    }

    /// The crop's area, `prod(scale * 200)` in the arrays' precision (the official `area`).
    #[must_use]
    pub fn area(&self) -> f64 {
        let [w, h] = self.size_px();
        match self {
            Crop::F32 { .. } => f64::from(w as f32 * h as f32),
            Crop::F64 { .. } => w * h,
        }
    }

    /// Whether center and scale are finite and the scale positive.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        let (c, s) = (self.center(), self.scale());
        c.iter().chain(&s).all(|v| v.is_finite()) && s.iter().all(|&v| v > 0.0)
    }

    /// `get_affine_transform(center, scale, 0, (out_w, out_h), inv)`: image → crop, or
    /// crop → image when `inverse`. The three points are float32 arrays, as in the
    /// official code; the second is computed in f64 and then stored, as NumPy does.
    #[must_use]
    pub fn transform(&self, out_w: usize, out_h: usize, inverse: bool) -> Option<Affine> {
        let c = self.center();
        let src_w = self.size_px()[0];
        let (dst_w, dst_h) = (out_w as f32, out_h as f32);
        let src0 = c.map(|v| v as f32);
        let src1 = [c[0] as f32, (c[1] + src_w * -0.5) as f32];
        let dst0 = [dst_w * 0.5, dst_h * 0.5];
        let dst1 = [dst0[0], dst0[1] + dst_w * -0.5];
        let third = |a: [f32; 2], b: [f32; 2]| {
            let d = [a[0] - b[0], a[1] - b[1]];
            [b[0] - d[1], b[1] + d[0]]
        };
        let src = [src0, src1, third(src0, src1)];
        let dst = [dst0, dst1, third(dst0, dst1)];
        if inverse {
            Affine::from_points(dst, src)
        } else {
            Affine::from_points(src, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_padded_to_the_aspect_ratio() {
        // A wide box grows in height, a tall one in width; then both by 1.25.
        let c = Crop::from_box(10.0, 20.0, 300.0, 100.0, 0.75);
        assert_eq!(c.center(), [160.0, 70.0]);
        assert_eq!(c.scale(), [1.5 * 1.25, 2.0 * 1.25]);
        let c = Crop::from_box(0.0, 0.0, 30.0, 200.0, 0.75);
        assert_eq!(c.center(), [15.0, 100.0]);
        assert_eq!(c.scale(), [0.75 * 1.25, 1.25]);
        assert_eq!(c.area(), 187.5 * 250.0);
        let c = Crop::from_box(0.0, 0.0, 150.0, 200.0, 0.75);
        assert_eq!(c.scale(), [0.75 * 1.25, 1.25]);
    }

    #[test]
    fn crop_transform_maps_the_box_onto_the_crop_and_back() {
        let crop = Crop::from_box(100.0, 50.0, 120.0, 160.0, 0.75);
        let fwd = crop.transform(192, 256, false).unwrap();
        let inv = crop.transform(192, 256, true).unwrap();
        // The center goes to the crop's center; the padded box's corners to the crop's.
        let (x, y) = fwd.apply(160.0, 130.0);
        approx::assert_abs_diff_eq!(x, 96.0, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(y, 128.0, epsilon = 1e-9);
        let (x, y) = fwd.apply(160.0 - 75.0, 130.0 - 100.0);
        approx::assert_abs_diff_eq!(x, 0.0, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(y, 0.0, epsilon = 1e-9);
        // Round trips, through the explicit inverse and through invert().
        for (px, py) in [(0.0, 0.0), (37.5, 211.25), (191.0, 255.0)] {
            let (ix, iy) = inv.apply(px, py);
            let (bx, by) = fwd.apply(ix, iy);
            approx::assert_abs_diff_eq!(bx, px, epsilon = 1e-9);
            approx::assert_abs_diff_eq!(by, py, epsilon = 1e-9);
            let (jx, jy) = fwd.invert().unwrap().apply(px, py);
            approx::assert_abs_diff_eq!(jx, ix, epsilon = 1e-9);
            approx::assert_abs_diff_eq!(jy, iy, epsilon = 1e-9);
        }
    }

    #[test]
    fn degenerate_maps_are_refused() {
        let flat = Crop::F64 {
            center: [1.0, 1.0],
            scale: [0.0, 0.0],
        };
        assert!(!flat.is_valid());
        assert!(flat.transform(192, 256, false).is_none());
        assert!(Affine([0.0; 6]).invert().is_none());
    }
}
