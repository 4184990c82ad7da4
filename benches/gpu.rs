//! The CUDA engine's speed, timed on the device with CUDA events (no host copies): the four
//! 3×3 stride-1 conv shapes that carry 77% of W32's FLOPs at batch 1 and 32 (time and
//! FLOP/s as criterion's throughput), direct and tensor-core in f32 and f16 (f16 also with
//! each tuning switch); W32's exchange units, fused against the unfused sequence, summed
//! over all units; and the whole W32 256×192 network at batch 1, 8, 32 and 64, direct and
//! tensor-core in f32 and f16.
//! Beside criterion's report, one line per measurement with the median device time: for
//! the convolutions also TFLOP/s and the fraction of the measured fp16 matrix-product rate
//! (`HRNET_PEAK_TFLOPS`, which scripts/device-validate measures with PyTorch first), for
//! the network also images/s and device memory (weights and activation arena).
//! Without a GPU it prints one skip line.

use std::cell::RefCell;
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

/// Sums `iters` device times of `time` (milliseconds per run) into criterion's duration,
/// keeping each run's time in `all`.
fn device_time(
    iters: u64,
    all: &RefCell<Vec<f64>>,
    time: impl FnOnce(usize) -> Vec<f64>,
) -> Duration {
    let ms = time(iters as usize);
    let total = ms.iter().sum::<f64>();
    all.borrow_mut().extend(ms);
    Duration::from_secs_f64(total / 1000.0)
}

/// The median of the runs kept, emptying them for the next measurement.
fn take_median(all: &RefCell<Vec<f64>>) -> f64 {
    let mut ms = std::mem::take(&mut *all.borrow_mut());
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The measured fp16 matrix-product rate, TFLOP/s, from `HRNET_PEAK_TFLOPS`.
fn measured_peak() -> Option<f64> {
    let v = std::env::var("HRNET_PEAK_TFLOPS").ok()?;
    let peak = v.trim().parse::<f64>().ok().filter(|p| *p > 0.0);
    if peak.is_none() {
        eprintln!("HRNET_PEAK_TFLOPS={v:?} is not a rate in TFLOP/s; fractions of peak left out");
    }
    peak
}

/// A conv runner: device milliseconds of `runs` launches after a warm-up.
type ConvTimer<'a> = dyn Fn(&Tensor, &ConvLayer, &ConvParams, usize) -> Vec<f64> + 'a;

fn hot_convs(c: &mut Criterion, name: &str, time: &ConvTimer<'_>) {
    let mut g = c.benchmark_group(format!("gpu_conv3x3_{name}"));
    let runs = RefCell::new(Vec::new());
    let peak = measured_peak();
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
            let flop = 2 * (layer.weight_len() * h * w * n) as u64;
            g.throughput(Throughput::Elements(flop));
            let id = format!("{ch}ch_{h}x{w}_batch{n}");
            g.bench_function(&id, |b| {
                b.iter_custom(|iters| device_time(iters, &runs, |r| time(&x, &layer, &p, r)));
            });
            let median = take_median(&runs);
            let tflops = flop as f64 / median / 1e9;
            let of_peak = peak
                .map(|p| format!(", {:.1}% of the measured {p:.0}", 100.0 * tflops / p))
                .unwrap_or_default();
            println!("hot conv {name} {id}: median {median:.4} ms, {tflops:.1} TFLOP/s{of_peak}");
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
            let runs = RefCell::new(Vec::new());
            g.bench_function(format!("batch{n}"), |b| {
                b.iter_custom(|iters| {
                    device_time(iters, &runs, |r| engine.time(&x, 3, r).unwrap())
                });
            });
            let median = take_median(&runs);
            println!(
                "network w32-256x192 {precision} {kernels} batch {n}: median {median:.4} ms, {:.1} images/s, {:.1} MiB of device memory",
                n as f64 * 1000.0 / median,
                (engine.weight_bytes() + engine.arena_bytes()) as f64 / 1048576.0
            );
        }
        g.finish();
    }
}

criterion_group!(benches, convs, exchange_units, network);
criterion_main!(benches);
