//! The CPU reference on the default model: seeded random W32 weights.

use hrnet::cpu::Hook;
use hrnet::graph::{Chw, ValueId};
use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::{CpuEngine, HrnetConfig, Model, Nchw, Tensor};

struct Rms(Vec<f64>);

impl Hook<f32> for Rms {
    fn after_op(&mut self, _: ValueId, out: &[f32], _: usize, _: Chw) {
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

#[test]
fn inputs_that_do_not_fit_are_errors() {
    let mut config = HrnetConfig::official("tiny", 4, 17, 64, 64);
    config.stages[1].modules = 1;
    config.stages[2].modules = 1;
    let engine = CpuEngine::new(Model::random(&config, 1).unwrap());
    let err = |s: Nchw| {
        engine
            .forward(&Tensor::random_normal(s, 3))
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(Nchw {
            n: 1,
            c: 3,
            h: 96,
            w: 64
        })
        .contains("expects Nx3x64x64")
    );
    assert!(
        err(Nchw {
            n: 1,
            c: 1,
            h: 64,
            w: 64
        })
        .contains("expects Nx3x64x64")
    );
    assert!(
        err(Nchw {
            n: 0,
            c: 3,
            h: 64,
            w: 64
        })
        .contains("empty")
    );
    let mut data = Tensor::random_normal(
        Nchw {
            n: 2,
            c: 3,
            h: 64,
            w: 64,
        },
        4,
    )
    .into_data();
    data[3 * 64 * 64 + 10] = f32::INFINITY;
    let bad = Tensor::new(
        Nchw {
            n: 2,
            c: 3,
            h: 64,
            w: 64,
        },
        data,
    )
    .unwrap();
    let e = engine.forward(&bad).unwrap_err().to_string();
    assert!(e.contains("inf") && e.contains("image 1"), "{e}");
    // Batches give the same heatmaps as single images.
    let two = Tensor::random_normal(
        Nchw {
            n: 2,
            c: 3,
            h: 64,
            w: 64,
        },
        5,
    );
    let both = engine.forward(&two).unwrap();
    let one = Tensor::new(
        Nchw {
            n: 1,
            c: 3,
            h: 64,
            w: 64,
        },
        two.image(1).to_vec(),
    )
    .unwrap();
    assert_eq!(engine.forward(&one).unwrap().data(), both.image(1));
}
