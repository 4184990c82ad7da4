//! The CUDA engine's speed, timed on the device with CUDA events (no host copies): the four
//! 3×3 stride-1 conv shapes that carry 77% of W32's FLOPs at batch 1 and 32 (time and
//! FLOP/s as criterion's throughput), direct and tensor-core in f32 and f16 (f16 also with
//! each tuning switch); W32's exchange units, fused against the unfused sequence, summed
//! over all units; and the whole W32 256×192 network at batch 1, 8, 32 and 64, direct and
//! tensor-core in f32 and f16.
//! Without a GPU it prints one skip line.

use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrnet::cuda::{
    CudaEngine, CudaOps, GpuElem, Kernels, Precision, TcTuning, gpus, time_exchange_units,
};
use hrnet::graph::{Chw, ConvLayer};
use hrnet::weights::ConvParams;
use hrnet::{HrnetConfig, Model, Nchw, Tensor};

/// Whether there is a GPU; the skip line is printed once (a failure instead under
/// `HRNET_REQUIRE_GPU`, as on the device).
fn gpu_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| match gpus() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("HRNET_REQUIRE_GPU").is_none(),
                "HRNET_REQUIRE_GPU is set but: {e}"
            );
            let _ = writeln!(std::io::stderr(), "SKIPPED gpu benches: {e}");
            false
        }
    })
}

/// Sums `iters` device times of `time` (milliseconds per run) into criterion's duration.
fn device_time(iters: u64, time: impl FnOnce(usize) -> Vec<f64>) -> Duration {
    Duration::from_secs_f64(time(iters as usize).iter().sum::<f64>() / 1000.0)
}

/// A conv runner: device milliseconds of `runs` launches after a warm-up.
type ConvTimer<'a> = dyn Fn(&Tensor, &ConvLayer, &ConvParams, usize) -> Vec<f64> + 'a;

fn hot_convs(c: &mut Criterion, name: &str, time: &ConvTimer<'_>) {
    let mut g = c.benchmark_group(format!("gpu_conv3x3_{name}"));
    for (ch, h, w) in [(32, 64, 48), (64, 32, 24), (128, 16, 12), (256, 8, 6)] {
        for n in [1, 32] {
            let layer = ConvLayer {
                name: "bench".into(),
                bn: None,
                cin: ch,
                cout: ch,
                kernel: 3,
                stride: 1,
            };
            let x = Tensor::random_normal(Nchw::batch(n, Chw { c: ch, h, w }), rand::random());
            let p = ConvParams {
                weight: Tensor::random_normal(
                    Nchw {
                        n: ch,
                        c: ch,
                        h: 3,
                        w: 3,
                    },
                    rand::random(),
                )
                .into_data(),
                bias: vec![0.1; ch],
            };
            g.throughput(Throughput::Elements(
                2 * (layer.weight_len() * h * w * n) as u64,
            ));
            g.bench_function(format!("{ch}ch_{h}x{w}_batch{n}"), |b| {
                b.iter_custom(|iters| device_time(iters, |runs| time(&x, &layer, &p, runs)));
            });
        }
    }
    g.finish();
}

fn direct<T: GpuElem>() -> impl Fn(&Tensor, &ConvLayer, &ConvParams, usize) -> Vec<f64> {
    let ops = CudaOps::<T>::open().expect("GPU kernels load");
    move |x, l, p, runs| ops.time_conv(x, l, p, 3, runs).unwrap()
}

fn convs(c: &mut Criterion) {
    if gpu_present() {
        hot_convs(c, "f32_direct", &direct::<f32>());
        hot_convs(c, "f16_direct", &direct::<half::f16>());
        // f32 on tensor cores (three bf16 parts, f64 totals), as the engine would run it.
        let tc32 = CudaOps::<f32>::open().expect("GPU kernels load");
        hot_convs(c, "f32_tensor_core", &|x, l, p, runs| {
            tc32.time_conv_tc(x, l, p, TcTuning::default(), 3, runs)
                .unwrap()
        });
        let tc = CudaOps::<half::f16>::open().expect("GPU kernels load");
        // As the engine runs them (K split where the shape gives too few tiles), with
        // split K off, with activations through L1, launched programmatically (each
        // launch overlapping the end of the one before), and with the 8-stage pipeline in
        // the 32×32 tile (the batch-1 launches).
        for (name, tuning) in [
            ("f16_tensor_core", TcTuning::default()),
            (
                "f16_tensor_core_unsplit",
                TcTuning {
                    split_k: false,
                    ..TcTuning::default()
                },
            ),
            (
                "f16_tensor_core_l1",
                TcTuning {
                    l1_activations: true,
                    ..TcTuning::default()
                },
            ),
            (
                "f16_tensor_core_programmatic",
                TcTuning {
                    programmatic_launch: true,
                    ..TcTuning::default()
                },
            ),
            (
                "f16_tensor_core_deep",
                TcTuning {
                    deep_pipeline: true,
                    ..TcTuning::default()
                },
            ),
        ] {
            hot_convs(c, name, &|x, l, p, runs| {
                tc.time_conv_tc(x, l, p, tuning, 3, runs).unwrap()
            });
        }
    }
}

/// All of W32's exchange units (every output branch of every module), fused and unfused:
/// each iteration is the sum of the units' median device times.
fn exchange_units(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let model = Model::random(&HrnetConfig::preset("w32-256x192").unwrap(), 2019).unwrap();
    let mut g = c.benchmark_group("gpu_exchange_units_w32_f16");
    g.sample_size(10);
    for n in [1, 32] {
        for fused in [true, false] {
            let name = format!("{}_batch{n}", if fused { "fused" } else { "unfused" });
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let units = time_exchange_units(&model, n, 3, 20).unwrap();
                    let ms: f64 = units
                        .iter()
                        .map(|u| if fused { u.fused_ms } else { u.unfused_ms })
                        .sum();
                    Duration::from_secs_f64(ms * iters as f64 / 1000.0)
                });
            });
        }
    }
    g.finish();
}

fn network(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let model = Model::random(&config, 2019).unwrap();
    for (precision, kernels) in [
        (Precision::F32, Kernels::Direct),
        (Precision::F32, Kernels::TensorCore),
        (Precision::F16, Kernels::Direct),
        (Precision::F16, Kernels::TensorCore),
    ] {
        let mut engine = CudaEngine::on_device(&model, precision, kernels, 0).unwrap();
        let mut g = c.benchmark_group(format!("gpu_w32_256x192_{precision}_{kernels}"));
        g.measurement_time(Duration::from_secs(5));
        for n in [1, 8, 32, 64] {
            let x =
                Tensor::random_normal(Nchw::batch(n, model.graph.input_shape()), rand::random());
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("batch{n}"), |b| {
                b.iter_custom(|iters| device_time(iters, |runs| engine.time(&x, 3, runs).unwrap()));
            });
        }
        g.finish();
    }
}

criterion_group!(benches, convs, exchange_units, network);
criterion_main!(benches);
