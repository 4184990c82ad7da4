//! The CPU reference on the default model: seeded random W32 weights.

use hrnet::cpu::Hook;
use hrnet::graph::{Chw, ValueId};
use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::{CpuEngine, HrnetConfig, Model, Nchw, Tensor};

struct Rms(Vec<f64>);

impl Hook<f32> for Rms {
    fn after_op(&mut self, _: ValueId, out: &mut [f32], _: usize, _: Chw) {
        let ss: f64 = out.iter().map(|&v| f64::from(v).powi(2)).sum();
        self.0.push((ss / out.len() as f64).sqrt());
    }
}

#[test]
fn seeded_w32_is_well_scaled_deterministic_and_close_to_f64() {
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let engine = CpuEngine::new(Model::random(&config, 2019).unwrap());
    let x = Tensor::random_normal(
        Nchw::batch(1, engine.model().graph.input_shape()),
        rand::random(),
    );

    let mut rms = Rms(Vec::new());
    let out = engine.forward_with(&x, &mut rms).unwrap();
    let (lo, hi) = rms
        .0
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
    println!(
        "activation RMS over {} values: {lo:.3} .. {hi:.3}",
        rms.0.len()
    );
    assert_eq!(rms.0.len(), engine.model().graph.ops.len());
    assert!(
        lo > 0.1 && hi < 50.0,
        "activations vanish or explode: RMS {lo} .. {hi}"
    );

    assert_eq!(
        engine.forward(&x).unwrap(),
        out,
        "repeated runs are bitwise equal"
    );

    let reference = engine.forward_f64(&x).unwrap();
    let rel = relative_l2(out.data(), &reference).unwrap();
    let agree = argmax_agreement(out.data(), &reference, 64 * 48);
    println!("f32 vs f64: relative L2 {rel:.3e}, argmax agreement {agree}");
    assert!(rel < 1e-4, "{rel:e}");
    assert_eq!(agree, 1.0);
}

/// A batch gives each image the heatmaps it gets alone. (Inputs that do not fit: see
/// tests/hostile_inputs.rs.)
#[test]
fn batches_give_each_image_its_own_heatmaps() {
    let mut config = HrnetConfig::official("tiny", 4, 17, 64, 64);
    config.stages[1].modules = 1;
    config.stages[2].modules = 1;
    let engine = CpuEngine::new(Model::random(&config, 1).unwrap());
    let s = Nchw {
        n: 3,
        c: 3,
        h: 64,
        w: 64,
    };
    let batch = Tensor::random_normal(s, rand::random());
    let all = engine.forward(&batch).unwrap();
    for i in 0..s.n {
        let one = Tensor::new(Nchw { n: 1, ..s }, batch.image(i).to_vec()).unwrap();
        assert_eq!(
            engine.forward(&one).unwrap().data(),
            all.image(i),
            "image {i}"
        );
    }
}
