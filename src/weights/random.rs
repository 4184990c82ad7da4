//! Seeded random checkpoints for tests, benchmarks and `hrnet verify`.
//!
//! Random convolutions alone make activations grow or vanish over ~290 layers, so the BN
//! statistics are calibrated the way training would leave them: the network runs on a
//! random batch, and each BN's running mean and variance are set to the statistics of
//! its conv's output on that batch before the batch moves on to the next layer.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use super::{BN_COUNTER, Checkpoint, CheckpointTensor};
use crate::config::{BN_EPS, HrnetConfig, INPUT_MULTIPLE};
use crate::cpu::{Hook, execute};
use crate::error::Result;
use crate::graph::{Chw, Graph};
use crate::tensor::{Nchw, Tensor};

/// Images in the calibration batch.
const CALIBRATION_BATCH: usize = 2;
/// The BN scale γ is drawn from this range; below 1 so that residual sums stay bounded.
const GAMMA: std::ops::Range<f32> = 0.5..0.9;
/// The BN shift β and the head's bias are drawn from this range.
const SHIFT: std::ops::Range<f32> = -0.1..0.1;

/// A seeded random checkpoint for `config`, under the official key names: conv weights
/// uniform with He scaling, γ in [0.5, 0.9), β in [−0.1, 0.1), and running statistics
/// calibrated on a random batch (at up to half the input size, which the weights do not
/// depend on). The same seed gives the same checkpoint.
pub fn random_checkpoint(config: &HrnetConfig, seed: u64) -> Result<Checkpoint> {
    let graph = Graph::new(config)?;
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut ck = Checkpoint::default();
    let mut uniform = |n: usize, range: std::ops::Range<f32>| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(range.clone())).collect()
    };
    let mut put = |key: String, shape: Vec<usize>, data: Vec<f32>| {
        ck.tensors.insert(key, CheckpointTensor { shape, data });
    };
    let mut raw = Vec::with_capacity(graph.layers.len());
    let mut affine = Vec::with_capacity(graph.layers.len());
    for l in &graph.layers {
        let fan_in = (l.cin * l.kernel * l.kernel) as f32;
        // He-uniform before a BN (whose statistics rescale it anyway), LeCun-uniform for the head.
        let bound = if l.bn.is_some() {
            (6.0 / fan_in).sqrt()
        } else {
            (3.0 / fan_in).sqrt()
        };
        let w = uniform(l.weight_len(), -bound..bound);
        put(
            format!("{}.weight", l.name),
            l.weight_shape().to_vec(),
            w.clone(),
        );
        match &l.bn {
            Some(bn) => {
                let (gamma, beta) = (uniform(l.cout, GAMMA), uniform(l.cout, SHIFT));
                put(format!("{bn}.weight"), vec![l.cout], gamma.clone());
                put(format!("{bn}.bias"), vec![l.cout], beta.clone());
                ck.counters.insert(format!("{bn}.{BN_COUNTER}"));
                raw.push((w, vec![0.0; l.cout]));
                affine.push(Some((gamma, beta)));
            }
            None => {
                let b = uniform(l.cout, SHIFT);
                put(format!("{}.bias", l.name), vec![l.cout], b.clone());
                raw.push((w, b));
                affine.push(None);
            }
        }
    }
    let half = |x: usize| {
        (x / 2 / INPUT_MULTIPLE * INPUT_MULTIPLE)
            .max(2 * INPUT_MULTIPLE)
            .min(x)
    };
    let calibration = Graph::new(
        &config
            .clone()
            .with_input(half(config.input_height), half(config.input_width)),
    )?;
    let shape = Nchw::batch(CALIBRATION_BATCH, calibration.input_shape());
    let input = Tensor::random_normal(shape, seed ^ 0x9e37_79b9_7f4a_7c15);
    let params: Vec<(&[f32], &[f32])> = raw
        .iter()
        .map(|(w, b)| (w.as_slice(), b.as_slice()))
        .collect();
    let mut hook = Calibrate {
        affine: &affine,
        stats: vec![None; graph.layers.len()],
    };
    execute(
        &calibration,
        &params,
        input.into_data(),
        CALIBRATION_BATCH,
        &mut hook,
    );
    for (l, stats) in graph.layers.iter().zip(hook.stats) {
        if let (Some(bn), Some((mean, var))) = (&l.bn, stats) {
            put(format!("{bn}.running_mean"), vec![l.cout], mean);
            put(format!("{bn}.running_var"), vec![l.cout], var);
        }
    }
    Ok(ck)
}

/// Records each BN's batch statistics and applies the BN with them.
struct Calibrate<'a> {
    affine: &'a [Option<(Vec<f32>, Vec<f32>)>],
    stats: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

impl Hook<f32> for Calibrate<'_> {
    fn after_conv(&mut self, layer: usize, out: &mut [f32], batch: usize, s: Chw) {
        let Some((gamma, beta)) = &self.affine[layer] else {
            return;
        };
        let plane = s.h * s.w;
        let count = (batch * plane) as f64;
        let (mut means, mut vars) = (Vec::with_capacity(s.c), Vec::with_capacity(s.c));
        for c in 0..s.c {
            let planes =
                || (0..batch).flat_map(move |n| (n * s.c + c) * plane..(n * s.c + c + 1) * plane);
            let mean = planes().map(|i| f64::from(out[i])).sum::<f64>() / count;
            let var = planes()
                .map(|i| (f64::from(out[i]) - mean).powi(2))
                .sum::<f64>()
                / count;
            let scale = f64::from(gamma[c]) / (var + BN_EPS).sqrt();
            for i in planes() {
                out[i] = ((f64::from(out[i]) - mean) * scale + f64::from(beta[c])) as f32;
            }
            means.push(mean as f32);
            vars.push(var as f32);
        }
        self.stats[layer] = Some((means, vars));
    }
}
