//! A batch of images or heatmaps in NCHW layout, and the measures that compare two.

use crate::error::{Error, Result};
use crate::graph::Chw;

/// Shape of an NCHW batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nchw {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Nchw {
    /// A batch of `n` images of shape `chw`.
    #[must_use]
    pub fn batch(n: usize, chw: Chw) -> Self {
        Nchw {
            n,
            c: chw.c,
            h: chw.h,
            w: chw.w,
        }
    }

    /// The shape of one image.
    #[must_use]
    pub fn chw(&self) -> Chw {
        Chw {
            c: self.c,
            h: self.h,
            w: self.w,
        }
    }

    /// Number of elements, or `None` if it overflows `usize`.
    #[must_use]
    pub fn checked_len(&self) -> Option<usize> {
        self.n
            .checked_mul(self.c)?
            .checked_mul(self.h)?
            .checked_mul(self.w)
    }

    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Whether the batch has no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As `[n, c, h, w]`.
    #[must_use]
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

impl std::fmt::Display for Nchw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}

/// A float32 NCHW tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Nchw,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data`, which must hold exactly `shape.len()` elements.
    pub fn new(shape: Nchw, data: Vec<f32>) -> Result<Self> {
        if shape.checked_len() != Some(data.len()) {
            return Err(Error::Input(format!(
                "{} values do not fill a tensor of shape {shape}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// Fresh standard-normal values (like a normalised image batch), seeded.
    #[must_use]
    pub fn random_normal(shape: Nchw, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let data = (0..shape.len())
            .map(|_| rng.sample(rand_distr::StandardNormal))
            .collect();
        Tensor { shape, data }
    }

    /// The batches one after the other (all of the same image shape).
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Input("nothing to concatenate".into()))?
            .shape();
        if let Some(p) = parts.iter().find(|p| p.shape().chw() != first.chw()) {
            return Err(Error::Input(format!(
                "cannot join batches of {} and {}",
                first,
                p.shape()
            )));
        }
        let n = parts.iter().map(|p| p.shape().n).sum();
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Tensor::new(Nchw { n, ..first }, data)
    }

    /// The shape.
    #[must_use]
    pub fn shape(&self) -> Nchw {
        self.shape
    }

    /// The elements in NCHW order.
    #[must_use]
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, by value.
    #[must_use]
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The elements of image `i`.
    #[must_use]
    pub fn image(&self, i: usize) -> &[f32] {
        let len = self.shape.chw().len();
        &self.data[i * len..(i + 1) * len]
    }
}

/// Relative L2 error `‖out − ref‖ / ‖ref‖`, in f64, of f32 or f64 results. `None` when
/// the lengths differ.
#[must_use]
pub fn relative_l2<T: Copy + Into<f64>>(out: &[T], reference: &[f64]) -> Option<f64> {
    if out.len() != reference.len() {
        return None;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        let d = o.into() - r;
        num += d * d;
        den += r * r;
    }
    Some(if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    })
}

/// Index of the first maximum of each map of `map_len` values (NaN never wins).
#[must_use]
pub fn argmax_per_map<T: Copy + PartialOrd>(data: &[T], map_len: usize) -> Vec<usize> {
    data.chunks(map_len.max(1))
        .map(|m| {
            let mut best = 0;
            for (i, v) in m.iter().enumerate() {
                let best_is_nan = m[best].partial_cmp(&m[best]).is_none();
                if *v > m[best] || (best_is_nan && v.partial_cmp(v).is_some()) {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Fraction of maps whose argmax is the same in both (1.0 for no maps).
#[must_use]
pub fn argmax_agreement<A, B>(a: &[A], b: &[B], map_len: usize) -> f64
where
    A: Copy + PartialOrd,
    B: Copy + PartialOrd,
{
    let (x, y) = (argmax_per_map(a, map_len), argmax_per_map(b, map_len));
    if x.is_empty() {
        return 1.0;
    }
    let same = x.iter().zip(&y).filter(|(p, q)| p == q).count();
    same as f64 / x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        let s = Nchw {
            n: 2,
            c: 1,
            h: 2,
            w: 2,
        };
        assert!(Tensor::new(s, vec![0.5; 8]).is_ok());
        assert!(Tensor::new(s, vec![0.5; 7]).is_err());
        let huge = Nchw {
            n: usize::MAX,
            c: 2,
            h: 1,
            w: 1,
        };
        assert!(Tensor::new(huge, vec![]).is_err());
    }

    #[test]
    fn relative_l2_by_hand() {
        assert_eq!(relative_l2(&[3.0, 4.0], &[3.0, 4.0]), Some(0.0));
        // ‖(0, 1)‖ / ‖(3, 4)‖ = 1/5.
        let e = relative_l2(&[3.0, 5.0], &[3.0, 4.0]).unwrap();
        approx::assert_relative_eq!(e, 0.2, epsilon = 1e-12);
        assert_eq!(relative_l2(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(
            argmax_per_map(&[1.0, 3.0, 3.0, 0.0, -1.0, -2.0], 3),
            vec![1, 0]
        );
        assert_eq!(argmax_per_map(&[f32::NAN, 1.0], 2), vec![1]);
        let a = [0.0f32, 1.0, 1.0, 0.0];
        let b = [0.0f64, 1.0, 0.0, 1.0];
        assert_eq!(argmax_agreement(&a, &b, 2), 0.5);
    }
}
