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
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        let yf = y as f32;
        // Not fused: OpenCV rounds y·m1 before adding m2.
        let (row_x, row_y) = (yf * m[1] + m[2], yf * m[4] + m[5]);
        for x in 0..out_w {
            let xf = x as f32;
            let (sx, sy) = (m[0].mul_add(xf, row_x), m[3].mul_add(xf, row_y));
            let (fx, fy) = (sx.floor(), sy.floor());
            if !(fx.is_finite() && fy.is_finite()) {
                continue;
            }
            let (alpha, beta) = (sx - fx, sy - fy);
            let (ix, iy) = (fx as i64, fy as i64);
            let dst = &mut out[(y * out_w + x) * 3..(y * out_w + x + 1) * 3];
            for (c, d) in dst.iter_mut().enumerate() {
                let (p00, p01) = (tap(ix, iy, c), tap(ix + 1, iy, c));
                let (p10, p11) = (tap(ix, iy + 1, c), tap(ix + 1, iy + 1, c));
                let top = alpha.mul_add(p01 - p00, p00);
                let bottom = alpha.mul_add(p11 - p10, p10);
                let v = beta.mul_add(bottom - top, top);
                *d = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Some(out)
}

/// Interleaved RGB bytes to a normalised CHW float32 image, as
/// `Normalize(mean, std)(ToTensor()(crop))`: `(p / 255 − mean) / std` in float32.
pub fn normalise_into(rgb: &[u8], w: usize, h: usize, chw: &mut [f32]) {
    let plane = w * h;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = (f32::from(px[c]) / 255.0 - MEAN[c]) / STD[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
