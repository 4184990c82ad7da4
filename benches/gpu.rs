//! The CUDA engine's speed, timed on the device with CUDA events (no host copies): the four
//! 3×3 stride-1 conv shapes that carry 77% of W32's FLOPs at batch 1 and 32 (time and
//! TFLOP/s), and the whole W32 256×192 network at batch 1, 8, 32 and 64 in f32 and f16.
//! Without a GPU it prints one skip line.

use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrnet::cuda::{CudaEngine, CudaOps, GpuElem, Precision, gpus};
use hrnet::graph::{Chw, ConvLayer};
use hrnet::weights::ConvParams;
use hrnet::{HrnetConfig, Model, Nchw, Tensor};

/// Whether there is a GPU; the skip line is printed once.
fn gpu_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| match gpus() {
        Ok(_) => true,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED gpu benches: {e}");
            false
        }
    })
}

/// Sums `iters` device times of `time` (milliseconds per run) into criterion's duration.
fn device_time(iters: u64, time: impl FnOnce(usize) -> Vec<f64>) -> Duration {
    Duration::from_secs_f64(time(iters as usize).iter().sum::<f64>() / 1000.0)
}

fn hot_convs<T: GpuElem>(c: &mut Criterion, name: &str) {
    let ops = CudaOps::<T>::open().expect("GPU kernels load");
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
                b.iter_custom(|iters| {
                    device_time(iters, |runs| {
                        ops.time_conv(&x, &layer, &p, 3, runs).unwrap()
                    })
                });
            });
        }
    }
    g.finish();
}

fn convs(c: &mut Criterion) {
    if gpu_present() {
        hot_convs::<f32>(c, "f32");
        hot_convs::<half::f16>(c, "f16");
    }
}

fn network(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let model = Model::random(&config, 2019).unwrap();
    for precision in [Precision::F32, Precision::F16] {
        let mut engine = CudaEngine::new(&model, precision).unwrap();
        let mut g = c.benchmark_group(format!("gpu_w32_256x192_{precision}"));
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

criterion_group!(benches, convs, network);
criterion_main!(benches);
