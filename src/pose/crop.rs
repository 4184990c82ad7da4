//! Cropping a person out of an RGB image, as the official pipeline does it:
//! `cv2.warpAffine(img, trans, (W, H), flags=cv2.INTER_LINEAR)` with its zero border,
//! then `ToTensor` (÷255) and `Normalize(mean, std)` in float32.
//!
//! The crop follows OpenCV's own arithmetic (since 4.11, whose bilinear warp works in
//! float32): the inverse map is rounded to float32; each source position is
//! `fma(m0, x, y·m1 + m2)`; the four neighbours (zero outside the image) are blended
//! by two horizontal and one vertical `fma(t, b − a, a)`; the result is rounded half to
//! even. A network with random weights can turn a one-level difference in a few pixels
//! into visibly different heatmaps, so the crops must be the official ones.

use image::RgbImage;

use super::affine::Affine;

/// ImageNet mean and standard deviation of the official `transforms.Normalize`.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`MEAN`].
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `cv2.warpAffine(src, image_to_crop, (out_w, out_h), INTER_LINEAR, BORDER_CONSTANT 0)`:
/// the crop as interleaved RGB bytes, row-major. `None` if the map is singular.
#[must_use]
pub fn warp_affine(
    src: &RgbImage,
    image_to_crop: &Affine,
    out_w: usize,
    out_h: usize,
) -> Option<Vec<u8>> {
    let m = image_to_crop.invert()?.0.map(|v| v as f32);
    let (sw, sh) = (i64::from(src.width()), i64::from(src.height()));
    let pixels = src.as_raw();
    let tap = |x: i64, y: i64, c: usize| -> f32 {
        if (0..sw).contains(&x) && (0..sh).contains(&y) {
            f32::from(pixels[((y * sw + x) * 3) as usize + c])
        } else {
            0.0
        }
    };
    // From 1 to this, a position's four neighbours lie in the image (no check per tap), and
    // its fractions are multiples of 2^-23, which [`blend_fixed`] needs.
    let (inner_w, inner_h) = ((sw - 1) as f32, (sh - 1) as f32);
    let stride = sw as usize * 3;
    let mut out = vec![0u8; out_w * out_h * 3];
    for (y, row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let yf = y as f32;
        // Not fused: OpenCV rounds y·m1 before adding m2.
        let (row_x, row_y) = (yf * m[1] + m[2], yf * m[4] + m[5]);
        for (x, dst) in row.chunks_exact_mut(3).enumerate() {
            let xf = x as f32;
            let (sx, sy) = (m[0].mul_add(xf, row_x), m[3].mul_add(xf, row_y));
            if sx >= 1.0 && sy >= 1.0 && sx < inner_w && sy < inner_h {
                // Positive: the truncation is the floor.
                let (ix, iy) = (sx as usize, sy as usize);
                let fraction = |s: f32, i: usize| ((s - i as f32) * UNIT) as i64;
                let (ka, kb) = (fraction(sx, ix), fraction(sy, iy));
                let at = iy * stride + ix * 3;
                let (top, bottom) = (&pixels[at..at + 6], &pixels[at + stride..at + stride + 6]);
                for (c, d) in dst.iter_mut().enumerate() {
                    let taps = [top[c], top[c + 3], bottom[c], bottom[c + 3]];
                    *d = blend_fixed(taps.map(i64::from), ka, kb);
                }
                continue;
            }
            let (fx, fy) = (sx.floor(), sy.floor());
            if !(fx.is_finite() && fy.is_finite()) {
                continue;
            }
            let (alpha, beta) = (sx - fx, sy - fy);
            let (ix, iy) = (fx as i64, fy as i64);
            for (c, d) in dst.iter_mut().enumerate() {
                let taps = [(ix, iy), (ix + 1, iy), (ix, iy + 1), (ix + 1, iy + 1)];
                *d = blend(taps.map(|(x, y)| tap(x, y, c)), alpha, beta);
            }
        }
    }
    Some(out)
}

/// 2^23: f32 positions from 1 up have fractions in multiples of 1 / UNIT.
const UNIT: f32 = 8_388_608.0;

/// [`blend`] in integers, where the fractions are `ka / 2^23` and `kb / 2^23`: each value
/// is then an integer multiple of 2^-23 (`top`, `bottom`, their difference) or 2^-46 (the
/// result) small enough for i64, so each of `blend`'s roundings to f32 is one conversion
/// of an exact integer (scaling by powers of two changes no rounding). Equal to `blend`
/// on all such inputs (tested), and without its six exact products and sums in f64.
fn blend_fixed([p00, p01, p10, p11]: [i64; 4], ka: i64, kb: i64) -> u8 {
    const ONE: i64 = 1 << 23;
    const TO_UNIT_SQUARED: f32 = 1.0 / (ONE as f32 * ONE as f32);
    let to_f32 = |v: i64| (v as f32) as i64;
    let top = to_f32(ka * (p01 - p00) + p00 * ONE);
    let bottom = to_f32(ka * (p11 - p10) + p10 * ONE);
    let v = (top * ONE + kb * to_f32(bottom - top)) as f32 * TO_UNIT_SQUARED;
    // Rounded half to even: adding 2^23 leaves no fraction (v is below 2^22).
    ((v + UNIT) - UNIT).clamp(0.0, 255.0) as u8
}

/// OpenCV's bilinear blend of the neighbours `[p00, p01, p10, p11]` (row, column) at
/// fractions `alpha` (x) and `beta` (y), rounded half to even to a byte.
fn blend([p00, p01, p10, p11]: [f32; 4], alpha: f32, beta: f32) -> u8 {
    let top = alpha.mul_add(p01 - p00, p00);
    let bottom = alpha.mul_add(p11 - p10, p10);
    let v = beta.mul_add(bottom - top, top);
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Interleaved RGB bytes to a normalised CHW float32 image, as
/// `Normalize(mean, std)(ToTensor()(crop))`: `(p / 255 − mean) / std` in float32.
pub fn normalise_into(rgb: &[u8], w: usize, h: usize, chw: &mut [f32]) {
    // A function of the byte: each channel's 256 values, computed as above, once a call.
    let table: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|p| (p as f32 / 255.0 - MEAN[c]) / STD[c]));
    let plane = w * h;
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(&mut b[..plane]) {
        *r = table[0][usize::from(px[0])];
        *g = table[1][usize::from(px[1])];
        *b = table[2][usize::from(px[2])];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn blend_fixed_is_blend() {
        // Fractions anywhere, and near 0, 1 and 1/2: tiny products, whole ones, ties.
        fn fraction(rng: &mut impl Rng) -> i64 {
            let one = 1i64 << 23;
            match rng.random_range(0..4) {
                0 => rng.random_range(0..one),
                1 => rng.random_range(0..64),
                2 => one - rng.random_range(1..65),
                _ => one / 2 + rng.random_range(-64..64),
            }
        }
        let seed = rand::random();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        for _ in 0..2_000_000 {
            let p = [(); 4].map(|()| i64::from(rng.random::<u8>()));
            let (ka, kb) = (fraction(&mut rng), fraction(&mut rng));
            let (alpha, beta) = (ka as f32 / UNIT, kb as f32 / UNIT);
            assert_eq!(
                blend_fixed(p, ka, kb),
                blend(p.map(|v| v as f32), alpha, beta),
                "{p:?} {ka} {kb} (seed {seed})"
            );
        }
    }

    #[test]
    fn identity_and_integer_shifts_copy_pixels() {
        let img = gradient(20, 10);
        let id = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(
            warp_affine(&img, &id, 20, 10).unwrap(),
            img.as_raw().clone()
        );
        // Shift by (−3, −2): crop pixel (x, y) is image pixel (x + 3, y + 2); zero outside.
        let shift = Affine([1.0, 0.0, -3.0, 0.0, 1.0, -2.0]);
        let out = warp_affine(&img, &shift, 20, 10).unwrap();
        assert_eq!(&out[0..3], &img.get_pixel(3, 2).0);
        let last = (9 * 20 + 19) * 3;
        assert_eq!(&out[last..last + 3], &[0, 0, 0]);
    }

    #[test]
    fn half_pixel_shifts_round_half_to_even() {
        // A 2×1 image [10, 21]: sampling at x = 0.5 gives 15.5, which rounds to 16.
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 10 } else { 21 }; 3]));
        let half = Affine([1.0, 0.0, -0.5, 0.0, 1.0, 0.0]);
        assert_eq!(warp_affine(&img, &half, 1, 1).unwrap(), vec![16, 16, 16]);
        // Half-way off the right edge blends with the zero border: 10.5 rounds to 10.
        let edge = Affine([1.0, 0.0, -1.5, 0.0, 1.0, 0.0]);
        assert_eq!(warp_affine(&img, &edge, 1, 1).unwrap(), vec![10, 10, 10]);
        // Entirely outside: the border value.
        let far = Affine([1.0, 0.0, -5.0, 0.0, 1.0, 0.0]);
        assert_eq!(warp_affine(&img, &far, 1, 1).unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn normalisation_is_torchvision_in_float32() {
        let mut chw = vec![0.0; 6];
        normalise_into(&[0, 128, 255, 255, 0, 128], 2, 1, &mut chw);
        assert_eq!(chw[0], (0.0 / 255.0 - MEAN[0]) / STD[0]);
        assert_eq!(chw[1], (255.0f32 / 255.0 - MEAN[0]) / STD[0]);
        assert_eq!(chw[2], (128.0f32 / 255.0 - MEAN[1]) / STD[1]);
        assert_eq!(chw[5], (128.0f32 / 255.0 - MEAN[2]) / STD[2]);
    }
}
