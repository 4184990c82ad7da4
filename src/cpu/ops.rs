//! The CPU reference's ops, each on one image in CHW layout. Written to be read:
//! convolution is im2col followed by one matrix product, and every other op is a loop
//! over the definition.

use ndarray::{ArrayView2, ArrayViewMut2, linalg::general_mat_mul};

use crate::graph::{Chw, ConvLayer};

/// The element types the reference runs in: f32 (the engine) and f64 (the oracle).
pub trait Element: ndarray::LinalgScalar + PartialOrd + Send + Sync + std::fmt::Debug {
    /// Converts from f32 (weights and inputs are stored as f32).
    fn from_f32(v: f32) -> Self;
    /// Converts to f64 (for statistics).
    fn to_f64(self) -> f64;
}

impl Element for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Element for f64 {
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Unfolds one image for a `k×k` convolution: row `(ci·k + ky)·k + kx`, column
/// `oy·Wo + ox` holds `x[ci, oy·s + ky − p, ox·s + kx − p]`, or 0 in the padding.
pub fn im2col<T: Element>(x: &[T], s: Chw, layer: &ConvLayer, col: &mut Vec<T>) {
    let (k, stride, pad) = (layer.kernel, layer.stride, layer.padding());
    let (ho, wo) = layer.out_size(s.h, s.w);
    col.clear();
    col.resize(s.c * k * k * ho * wo, T::zero());
    let mut rows = col.chunks_exact_mut(ho * wo);
    for plane in x.chunks_exact(s.h * s.w).take(s.c) {
        for ky in 0..k {
            for kx in 0..k {
                let row = rows.next().expect("im2col has c·k·k rows");
                // Output columns whose input column ox·stride + kx − pad lies inside the image.
                let first = pad.saturating_sub(kx).div_ceil(stride);
                let last = (s.w + pad - kx).div_ceil(stride).min(wo);
                for (oy, out_row) in row.chunks_exact_mut(wo).enumerate() {
                    let Some(iy) = (oy * stride + ky).checked_sub(pad).filter(|&iy| iy < s.h)
                    else {
                        continue;
                    };
                    let in_row = &plane[iy * s.w..(iy + 1) * s.w];
                    if first >= last {
                        continue;
                    }
                    let ix0 = first * stride + kx - pad;
                    if stride == 1 {
                        out_row[first..last].copy_from_slice(&in_row[ix0..ix0 + (last - first)]);
                    } else {
                        for (o, &v) in out_row[first..last]
                            .iter_mut()
                            .zip(in_row[ix0..].iter().step_by(stride))
                        {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// `out[co, p] = bias[co] + Σ w[co, ci, ky, kx] · x[ci, …]` for one image; `out` holds
/// `cout × Ho × Wo` values. `col` is scratch space.
pub fn conv2d<T: Element>(
    x: &[T],
    s: Chw,
    layer: &ConvLayer,
    weight: &[T],
    bias: &[T],
    out: &mut [T],
    col: &mut Vec<T>,
) {
    let (ho, wo) = layer.out_size(s.h, s.w);
    let (m, k, n) = (layer.cout, layer.cin * layer.kernel * layer.kernel, ho * wo);
    for (plane, &b) in out.chunks_exact_mut(n).zip(bias) {
        plane.fill(b);
    }
    let a = ArrayView2::from_shape((m, k), weight).expect("weights are cout × cin·k·k");
    let b = if layer.kernel == 1 && layer.stride == 1 {
        ArrayView2::from_shape((k, n), x).expect("a 1×1 conv's input is cin × H·W")
    } else {
        im2col(x, s, layer, col);
        ArrayView2::from_shape((k, n), &col[..]).expect("im2col is cin·k·k × Ho·Wo")
    };
    let mut c = ArrayViewMut2::from_shape((m, n), out).expect("the output is cout × Ho·Wo");
    general_mat_mul(T::one(), &a, &b, T::one(), &mut c);
}

/// The conv epilogue after the bias: adds the shortcut, then clamps at zero.
pub fn residual_relu<T: Element>(out: &mut [T], residual: Option<&[T]>, relu: bool) {
    if let Some(r) = residual {
        for (o, &r) in out.iter_mut().zip(r) {
            *o = *o + r;
        }
    }
    if relu {
        relu_in_place(out);
    }
}

/// `max(x, 0)` elementwise.
pub fn relu_in_place<T: Element>(x: &mut [T]) {
    for v in x {
        if *v < T::zero() {
            *v = T::zero();
        }
    }
}

/// Adds the nearest-neighbour upsampling by `factor` of `term` (shape `s`) into `out`
/// (shape `s.c × s.h·factor × s.w·factor`): `out[c, y, x] += term[c, y / f, x / f]`.
pub fn upsample_add<T: Element>(term: &[T], s: Chw, factor: usize, out: &mut [T]) {
    let (h, w) = (s.h * factor, s.w * factor);
    for c in 0..s.c {
        let src = &term[c * s.h * s.w..(c + 1) * s.h * s.w];
        let dst = &mut out[c * h * w..(c + 1) * h * w];
        for y in 0..h {
            let src_row = &src[(y / factor) * s.w..(y / factor + 1) * s.w];
            for (x, d) in dst[y * w..(y + 1) * w].iter_mut().enumerate() {
                *d = *d + src_row[x / factor];
            }
        }
    }
}

/// The direct seven-loop convolution, for checking [`conv2d`] in tests.
#[cfg(test)]
pub fn conv2d_direct(
    x: &[f64],
    s: Chw,
    layer: &ConvLayer,
    weight: &[f64],
    bias: &[f64],
) -> Vec<f64> {
    let (k, st, p) = (layer.kernel, layer.stride, layer.padding() as isize);
    let (ho, wo) = layer.out_size(s.h, s.w);
    let mut out = vec![0.0; layer.cout * ho * wo];
    for co in 0..layer.cout {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = bias[co];
                for ci in 0..s.c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * st + ky) as isize - p;
                            let ix = (ox * st + kx) as isize - p;
                            if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                let xv = x[(ci * s.h + iy as usize) * s.w + ix as usize];
                                acc += weight[((co * s.c + ci) * k + ky) * k + kx] * xv;
                            }
                        }
                    }
                }
                out[(co * ho + oy) * wo + ox] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn layer(cin: usize, cout: usize, kernel: usize, stride: usize) -> ConvLayer {
        ConvLayer {
            name: "t".into(),
            bn: None,
            cin,
            cout,
            kernel,
            stride,
        }
    }

    fn conv(x: &[f64], s: Chw, l: &ConvLayer, w: &[f64], b: &[f64]) -> Vec<f64> {
        let (ho, wo) = l.out_size(s.h, s.w);
        let mut out = vec![f64::NAN; l.cout * ho * wo];
        conv2d(x, s, l, w, b, &mut out, &mut Vec::new());
        out
    }

    #[test]
    fn conv3x3_by_hand() {
        // x = [[1,2,3],[4,5,6],[7,8,9]], an all-ones kernel, bias 0.5, padding 1:
        // each output is the sum of its 3×3 neighbourhood inside the image, plus 0.5.
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let s = Chw { c: 1, h: 3, w: 3 };
        let out = conv(&x, s, &layer(1, 1, 3, 1), &[1.0; 9], &[0.5]);
        let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0].map(|v| v + 0.5);
        assert_eq!(out, want);
        // Stride 2 keeps the corners: outputs at (0,0), (0,2), (2,0), (2,2).
        let out = conv(&x, s, &layer(1, 1, 3, 2), &[1.0; 9], &[0.5]);
        assert_eq!(out, [12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn conv1x1_by_hand() {
        // Two input channels, weights (2, -1): out = 2·a − b + 1.
        let x = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let out = conv(
            &x,
            Chw { c: 2, h: 2, w: 2 },
            &layer(2, 1, 1, 1),
            &[2.0, -1.0],
            &[1.0],
        );
        assert_eq!(out, [-7.0, -15.0, -23.0, -31.0]);
    }

    #[test]
    fn conv_matches_the_direct_loops() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(rand::random());
        for &(cin, cout, k, st, h, w) in &[
            (3, 5, 3, 2, 9, 7),
            (4, 6, 3, 1, 6, 5),
            (5, 3, 1, 1, 4, 6),
            (2, 3, 1, 2, 5, 4),
        ] {
            let l = layer(cin, cout, k, st);
            let s = Chw { c: cin, h, w };
            let x: Vec<f64> = (0..s.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
            let wt: Vec<f64> = (0..l.weight_len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let b: Vec<f64> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            let got = conv(&x, s, &l, &wt, &b);
            let want = conv2d_direct(&x, s, &l, &wt, &b);
            for (g, w) in got.iter().zip(&want) {
                approx::assert_relative_eq!(g, w, epsilon = 1e-12, max_relative = 1e-12);
            }
        }
    }

    #[test]
    fn epilogue_and_upsample_by_hand() {
        let mut out = [1.0, -3.0, 0.5];
        residual_relu(&mut out, Some(&[1.0, 1.0, -1.0]), true);
        assert_eq!(out, [2.0, 0.0, 0.0]);
        let mut out = [1.0, -3.0];
        residual_relu(&mut out, None, false);
        assert_eq!(out, [1.0, -3.0]);
        // A 1×1×2 term upsampled ×2 into 1×2×4.
        let mut out = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        upsample_add(&[10.0, 20.0], Chw { c: 1, h: 1, w: 2 }, 2, &mut out);
        assert_eq!(out, [10.0, 11.0, 22.0, 23.0, 14.0, 15.0, 26.0, 27.0]);
    }
}
