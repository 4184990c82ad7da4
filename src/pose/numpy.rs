//! NumPy's float64 summation, to the bit: the official evaluation code sums with
//! `np.sum` and `np.mean`, and reproducing its results exactly means adding in its order.

/// `np.sum` of a contiguous float64 array (`pairwise_sum` of NumPy's `loops_utils`): under
/// eight terms, one running sum from zero; up to 128, eight running sums over the
/// multiple-of-eight part, combined pairwise, then the remaining terms in order; beyond,
/// the two halves (the first a multiple of eight long) summed so and added.
pub(crate) fn sum(v: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = v.len();
    if n < 8 {
        return v.iter().fold(0.0, |s, &x| s + x);
    }
    if n > BLOCK {
        let half = n / 2 - (n / 2) % 8;
        return sum(&v[..half]) + sum(&v[half..]);
    }
    let whole = n - n % 8;
    let mut r = [0.0f64; 8];
    r.copy_from_slice(&v[..8]);
    for block in v[8..whole].chunks_exact(8) {
        for (acc, &x) in r.iter_mut().zip(block) {
            *acc += x;
        }
    }
    let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for &x in &v[whole..] {
        s += x;
    }
    s
}

/// `np.mean`: [`sum`] divided by the count (NaN for no values, as NumPy gives).
pub(crate) fn mean(v: &[f64]) -> f64 {
    sum(v) / v.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sums_use_eight_running_sums() {
        let v: Vec<f64> = (0..17).map(|i| 1.0 / f64::from(i + 3)).collect();
        let r: Vec<f64> = (0..8).map(|j| v[j] + v[j + 8]).collect();
        let want = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])) + v[16];
        assert_eq!(sum(&v).to_bits(), want.to_bits());
        assert_eq!(sum(&v[..5]), v[..5].iter().sum::<f64>());
    }

    #[test]
    fn long_sums_split_at_a_multiple_of_eight() {
        let v: Vec<f64> = (0..300).map(|i| 1.0 / f64::from(i + 7)).collect();
        // 300 -> 144 + 156; 144 -> 72 + 72; 156 -> 72 + 84.
        let want = (sum(&v[..72]) + sum(&v[72..144])) + (sum(&v[144..216]) + sum(&v[216..]));
        assert_eq!(sum(&v).to_bits(), want.to_bits());
        assert_eq!(mean(&v[..3]), (v[0] + v[1] + v[2]) / 3.0);
        assert!(mean(&[]).is_nan());
    }
}
