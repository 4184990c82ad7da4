//! The CPU reference's speed: W32 256×192 at batch 1 (the bound is 1 s on a 2-core
//! machine) in f32 and in f64 (the official model in float64), and the four 3×3
//! stride-1 conv shapes that carry 77% of its FLOPs.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrnet::cpu::ops::conv2d;
use hrnet::graph::{Chw, ConvLayer};
use hrnet::{CpuEngine, CpuF64Engine, HrnetConfig, Model, Nchw, Tensor};

fn forward(c: &mut Criterion) {
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let engine = CpuEngine::new(Model::random(&config, 2019).unwrap());
    let macs = engine.model().graph.summary().conv_macs as u64;
    let x = Tensor::random_normal(
        Nchw::batch(1, engine.model().graph.input_shape()),
        rand::random(),
    );
    let mut g = c.benchmark_group("cpu_forward");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(2 * macs));
    g.bench_function("w32_256x192_batch1_f32", |b| {
        b.iter(|| engine.forward(&x).unwrap())
    });
    let exact = CpuF64Engine::new(engine.model());
    g.bench_function("w32_256x192_batch1_f64", |b| {
        b.iter(|| exact.forward(&x).unwrap())
    });
    g.finish();
}

fn hot_convs(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_conv3x3");
    g.sample_size(20);
    for (ch, h, w) in [(32, 64, 48), (64, 32, 24), (128, 16, 12), (256, 8, 6)] {
        let l = ConvLayer {
            name: "bench".into(),
            bn: None,
            cin: ch,
            cout: ch,
            kernel: 3,
            stride: 1,
        };
        let s = Chw { c: ch, h, w };
        let x = Tensor::random_normal(Nchw::batch(1, s), rand::random()).into_data();
        let wt = Tensor::random_normal(
            Nchw {
                n: ch,
                c: ch,
                h: 3,
                w: 3,
            },
            rand::random(),
        )
        .into_data();
        let bias = vec![0.1; ch];
        let mut out = vec![f32::NAN; s.len()];
        let mut col = Vec::new();
        g.throughput(Throughput::Elements(2 * (l.weight_len() * h * w) as u64));
        g.bench_function(format!("{ch}ch_{h}x{w}"), |b| {
            b.iter(|| conv2d(&x, s, &l, &wt, &bias, &mut out, &mut col));
        });
    }
    g.finish();
}

criterion_group!(benches, forward, hot_convs);
criterion_main!(benches);
