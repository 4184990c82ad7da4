//! Every CUDA kernel against the CPU reference, on fresh random inputs, for every HRNet
//! shape (widths 32/64/128/256 and 48/96/192/384 at each branch resolution, stride 1 and 2,
//! batch 1 and 3), outputs poisoned with NaN before each launch; then the whole network.
//! Without a GPU each test prints one skip line.

mod common;

use common::gpu_or_skip;
use common::parity::{self, check, seed, stored, tolerance};
use hrnet::accuracy::{self, F16Floor};
use hrnet::cpu::ops::{conv2d, relu_in_place, upsample_add};
use hrnet::cuda::{CudaEngine, CudaOps, GpuElem, Kernels, Precision, TcTuning};
use hrnet::decode::peaks;
use hrnet::graph::{Chw, ConvLayer};
use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::weights::ConvParams;
use hrnet::{CpuEngine, Error, HrnetConfig, Model, Nchw, Tensor};

/// The kernels of one precision (the caller has checked that there is a GPU).
fn ops<T: GpuElem>() -> CudaOps<T> {
    CudaOps::<T>::open().unwrap_or_else(|e| panic!("{e}"))
}

/// A test that runs `$check` for f32 and then f16, or prints its skip line without a GPU.
macro_rules! both_precisions {
    ($name:ident, $check:ident) => {
        #[test]
        fn $name() {
            if gpu_or_skip(stringify!($name)) {
                $check::<f32>();
                $check::<half::f16>();
            }
        }
    };
}

/// Every convolution shape of W32 and W48 at 256×192 (stem, layer1, transitions, branches,
/// exchange-unit 1×1 and strided 3×3 steps, head), with and without residual and ReLU.
fn hrnet_convs() -> Vec<(ConvLayer, Chw, bool, bool)> {
    let conv = |cin, cout, kernel, stride| ConvLayer {
        name: format!("{cin}->{cout} k{kernel} s{stride}"),
        bn: None,
        cin,
        cout,
        kernel,
        stride,
    };
    let chw = |c, h, w| Chw { c, h, w };
    let mut v = vec![
        (conv(3, 64, 3, 2), chw(3, 256, 192), false, true),
        (conv(64, 64, 3, 2), chw(64, 128, 96), false, true),
        (conv(64, 64, 1, 1), chw(64, 64, 48), false, true),
        (conv(64, 64, 3, 1), chw(64, 64, 48), false, true),
        (conv(64, 256, 1, 1), chw(64, 64, 48), true, true),
        (conv(256, 64, 1, 1), chw(256, 64, 48), false, true),
    ];
    for w in [32, 48] {
        let (h0, w0) = (64, 48);
        v.push((conv(256, w, 3, 1), chw(256, h0, w0), false, true));
        v.push((conv(256, 2 * w, 3, 2), chw(256, h0, w0), false, true));
        v.push((conv(w, 17, 1, 1), chw(w, h0, w0), false, false));
        for b in 0..4 {
            let c = w << b;
            let s = Chw {
                c,
                h: h0 >> b,
                w: w0 >> b,
            };
            v.push((conv(c, c, 3, 1), s, false, true)); // BasicBlock conv1
            v.push((conv(c, c, 3, 1), s, true, true)); // BasicBlock conv2 + shortcut
            if b < 3 {
                v.push((conv(c, c, 3, 2), s, false, true)); // intermediate strided step
                v.push((conv(c, 2 * c, 3, 2), s, false, false)); // last strided step / transition
            }
            for i in 0..b {
                v.push((conv(c, w << i, 1, 1), s, false, false)); // exchange 1×1 to branch i
            }
            for i in b + 2..4 {
                v.push((conv(c, w << i, 3, 2), s, false, false)); // two-step chains' last step
            }
        }
    }
    v
}

/// Folded parameters for `layer`: weights scaled by 1/fan-in, biases standard normal.
fn random_params(layer: &ConvLayer) -> ConvParams {
    let fan_in = (layer.cin * layer.kernel * layer.kernel) as f32;
    let row = |len| Nchw {
        n: 1,
        c: 1,
        h: 1,
        w: len,
    };
    ConvParams {
        weight: Tensor::random_normal(row(layer.weight_len()), seed())
            .data()
            .iter()
            .map(|v| v / fan_in)
            .collect(),
        bias: Tensor::random_normal(row(layer.cout), seed()).into_data(),
    }
}

/// `relu?(Σ_s conv(x_s) + Σ_t upsample(t))` in f64 on the operands rounded to T.
fn reference_step<T: GpuElem>(
    sources: &[(&Tensor, &ConvLayer, &ConvParams)],
    terms: &[(&Tensor, usize)],
    relu: bool,
) -> Vec<f64> {
    let (x0, l0, _) = sources[0];
    let s0 = x0.shape();
    let (ho, wo) = l0.out_size(s0.h, s0.w);
    let out = Chw {
        c: l0.cout,
        h: ho,
        w: wo,
    };
    let mut want = vec![0.0f64; s0.n * out.len()];
    let mut part = vec![0.0f64; out.len()];
    let mut col = Vec::new();
    for &(x, layer, p) in sources {
        let (xs, ws) = (stored::<T>(x.data()), stored::<T>(&p.weight));
        let bias: Vec<f64> = p.bias.iter().map(|&b| f64::from(b)).collect();
        let s = x.shape().chw();
        for (xi, oi) in xs
            .chunks_exact(s.len())
            .zip(want.chunks_exact_mut(out.len()))
        {
            conv2d(xi, s, layer, &ws, &bias, &mut part, &mut col);
            oi.iter_mut().zip(&part).for_each(|(o, p)| *o += p);
        }
    }
    for &(t, f) in terms {
        let ts = t.shape().chw();
        let wide = stored::<T>(t.data());
        for (ti, oi) in wide
            .chunks_exact(ts.len())
            .zip(want.chunks_exact_mut(out.len()))
        {
            upsample_add(ti, ts, f, oi);
        }
    }
    if relu {
        relu_in_place(&mut want);
    }
    want
}

fn out_shape(layer: &ConvLayer, x: &Tensor) -> Nchw {
    let s = x.shape();
    let (h, w) = layer.out_size(s.h, s.w);
    Nchw {
        n: s.n,
        c: layer.cout,
        h,
        w,
    }
}

fn conv_parity<T: GpuElem>() {
    let gpu = ops::<T>();
    let tol = tolerance::<T>();
    let mut checked = 0;
    for (layer, s, residual, relu) in hrnet_convs() {
        for n in [1, 3] {
            let x = Tensor::random_normal(Nchw::batch(n, s), seed());
            let p = random_params(&layer);
            let shape = out_shape(&layer, &x);
            let r = residual.then(|| Tensor::random_normal(shape, seed()));
            let got = gpu.conv(&x, &layer, &p, r.as_ref(), relu).unwrap();
            assert_eq!(got.shape(), shape);
            let terms: Vec<(&Tensor, usize)> = r.iter().map(|r| (r, 1)).collect();
            let want = reference_step::<T>(&[(&x, &layer, &p)], &terms, relu);
            check(
                &format!("{}{} {s} n={n}", layer.name, T::SUFFIX),
                &got,
                &want,
                tol,
            );
            checked += 1;
        }
    }
    println!("{checked} conv cases{} within {tol:.0e}", T::SUFFIX);
}

both_precisions!(conv_matches_cpu_on_every_hrnet_shape, conv_parity);

/// The tensor-core kernels (kernels/conv_tc.cu, every tile) on every HRNet conv shape,
/// the residual as an epilogue term, written NHWC and NCHW, K split as the engine splits
/// it (the deep branches at small batches) and unsplit; activations copied through L1,
/// programmatic launches and the deep pipeline (the 8-stage 32×32 kernels) give the same
/// bits. f16, and f32 (three bf16 parts, f64 totals) within
/// f32's own tolerance.
fn tensor_core_conv_parity<T: GpuElem>() {
    let gpu = ops::<T>();
    let tol = tolerance::<T>();
    let (mut checked, mut split) = (0, 0);
    for (layer, s, residual, relu) in hrnet_convs() {
        // Batch 1 and 3 pick small tiles; batch 8 the large ones.
        for n in [1, 3, 8] {
            let x = Tensor::random_normal(Nchw::batch(n, s), seed());
            let p = random_params(&layer);
            let r = residual.then(|| Tensor::random_normal(out_shape(&layer, &x), seed()));
            let terms: Vec<(&Tensor, usize)> = r.iter().map(|r| (r, 1)).collect();
            let want = reference_step::<T>(&[(&x, &layer, &p)], &terms, relu);
            let splits = gpu.tc_splits(x.shape(), &layer);
            for split_k in [false, true] {
                if split_k && splits == 1 {
                    continue;
                }
                for nchw in [false, true] {
                    let tuning = TcTuning {
                        split_k,
                        l1_activations: false,
                        programmatic_launch: false,
                        deep_pipeline: false,
                        grouped: false,
                    };
                    let run = |tuning| {
                        gpu.conv_tc(&[(&x, &layer, &p)], &terms, relu, nchw, tuning)
                            .unwrap()
                    };
                    let got = run(tuning);
                    // Launched programmatically right after the poisoning kernel: a block
                    // that did not wait for it would have its output overwritten by NaN.
                    let other_path = run(TcTuning {
                        l1_activations: true,
                        programmatic_launch: true,
                        deep_pipeline: true,
                        ..tuning
                    });
                    assert_eq!(
                        got, other_path,
                        "{} {s} n={n}: L1, programmatic launch and the deep pipeline changed bits",
                        layer.name
                    );
                    assert_eq!(got.shape(), out_shape(&layer, &x));
                    check(
                        &format!(
                            "tensor-core {} {s} n={n} nchw={nchw} split {}",
                            layer.name,
                            if split_k { splits } else { 1 }
                        ),
                        &got,
                        &want,
                        tol,
                    );
                    checked += 1;
                    split += usize::from(split_k);
                }
            }
        }
    }
    assert!(split > 0, "no HRNet shape split its K on this GPU");
    println!(
        "{checked} tensor-core conv cases{} ({split} with K split) within {tol:.0e}",
        T::SUFFIX
    );
}

both_precisions!(
    tensor_core_conv_matches_cpu_on_every_hrnet_shape,
    tensor_core_conv_parity
);

/// The fused exchange unit (kernels/conv_tc.cu): for every output branch i > 0 of W32's
/// and W48's 2-, 3- and 4-branch units, the strided last steps from the finer branches
/// summed in one GEMM, the identity and the upsampled 1×1 results of the coarser branches
/// in its epilogue, ReLU once; in f16 and f32.
fn fused_exchange_parity<T: GpuElem>() {
    let gpu = ops::<T>();
    let tol = tolerance::<T>();
    let mut checked = 0;
    for w in [32, 48] {
        for branches in 2..=4usize {
            for i in 1..branches {
                let (hi, wi) = (64 >> (i - 1), 48 >> (i - 1));
                for n in [1, 3] {
                    // From branch j < i: the chain's last step reads a tensor of branch
                    // i − 1's size with branch j's width.
                    let layers: Vec<ConvLayer> = (0..i)
                        .map(|j| ConvLayer {
                            name: format!("fuse {j}->{i}"),
                            bn: None,
                            cin: w << j,
                            cout: w << i,
                            kernel: 3,
                            stride: 2,
                        })
                        .collect();
                    let inputs: Vec<Tensor> = layers
                        .iter()
                        .map(|l| {
                            Tensor::random_normal(
                                Nchw {
                                    n,
                                    c: l.cin,
                                    h: hi,
                                    w: wi,
                                },
                                seed(),
                            )
                        })
                        .collect();
                    let params: Vec<ConvParams> = layers.iter().map(random_params).collect();
                    let sources: Vec<(&Tensor, &ConvLayer, &ConvParams)> = inputs
                        .iter()
                        .zip(&layers)
                        .zip(&params)
                        .map(|((x, l), p)| (x, l, p))
                        .collect();
                    let terms: Vec<(Tensor, usize)> = (i..branches)
                        .map(|j| {
                            let f = 1 << (j - i);
                            let t = Nchw {
                                n,
                                c: w << i,
                                h: (hi / 2) / f,
                                w: (wi / 2) / f,
                            };
                            (Tensor::random_normal(t, seed()), f)
                        })
                        .collect();
                    let terms: Vec<(&Tensor, usize)> = terms.iter().map(|(t, f)| (t, *f)).collect();
                    let want = reference_step::<T>(&sources, &terms, true);
                    for split_k in [false, true] {
                        let tuning = TcTuning {
                            split_k,
                            l1_activations: split_k,
                            programmatic_launch: split_k,
                            deep_pipeline: split_k,
                            grouped: false,
                        };
                        let got = gpu.conv_tc(&sources, &terms, true, false, tuning).unwrap();
                        check(
                            &format!(
                                "fused exchange W{w} {branches} branches -> {i} n={n} split_k={split_k}"
                            ),
                            &got,
                            &want,
                            tol,
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    println!(
        "{checked} fused exchange cases{} within {tol:.0e}",
        T::SUFFIX
    );
}

both_precisions!(fused_exchange_unit_matches_cpu, fused_exchange_parity);

fn exchange_parity<T: GpuElem>() {
    let gpu = ops::<T>();
    let tol = tolerance::<T>();
    for w in [32, 48] {
        for branches in 2..=4 {
            for i in 0..branches {
                let (c, h, wd) = (w << i, 64 >> i, 48 >> i);
                for n in [1, 3] {
                    // Identity and strided terms at branch i's size; 1×1 terms from lower branches.
                    let terms: Vec<(Tensor, usize)> = (0..branches)
                        .map(|j| {
                            let f = if j > i { 1 << (j - i) } else { 1 };
                            (
                                Tensor::random_normal(
                                    Nchw {
                                        n,
                                        c,
                                        h: h / f,
                                        w: wd / f,
                                    },
                                    seed(),
                                ),
                                f,
                            )
                        })
                        .collect();
                    let refs: Vec<(&Tensor, usize)> = terms.iter().map(|(t, f)| (t, *f)).collect();
                    let got = gpu.exchange(&refs).unwrap();
                    let s = Chw { c, h, w: wd };
                    let mut want = vec![0.0f64; n * s.len()];
                    for (t, f) in &terms {
                        let ts = Chw {
                            c,
                            h: h / f,
                            w: wd / f,
                        };
                        let wide = stored::<T>(t.data());
                        for (ti, oi) in wide
                            .chunks_exact(ts.len())
                            .zip(want.chunks_exact_mut(s.len()))
                        {
                            upsample_add(ti, ts, *f, oi);
                        }
                    }
                    relu_in_place(&mut want);
                    check(
                        &format!(
                            "exchange{} W{w} {branches} branches → {i}, n={n}",
                            T::SUFFIX
                        ),
                        &got,
                        &want,
                        tol,
                    );
                }
            }
        }
    }
}

both_precisions!(exchange_matches_cpu, exchange_parity);

fn bn_parity<T: GpuElem>() {
    let shapes = [(32, 64, 48), (64, 32, 24), (256, 8, 6), (384, 8, 6)];
    parity::bn_relu(&ops::<T>(), &shapes, &[1, 3]);
}

both_precisions!(bn_relu_matches_cpu, bn_parity);

fn argmax_parity<T: GpuElem>() {
    let shapes = [(1, 64, 48), (3, 64, 48), (2, 96, 72), (1, 6, 5)];
    parity::argmax(&ops::<T>(), &shapes);
}

both_precisions!(argmax_matches_the_official_decoding, argmax_parity);

/// The input's layout (kernels/input.cu) at every preset's size, batch 1 and 3, and odd
/// sizes and channel counts.
fn input_layout_parity<T: GpuElem>() {
    let input = |n, c, h, w| Nchw { n, c, h, w };
    let shapes = [
        input(1, 3, 256, 192),
        input(3, 3, 256, 192),
        input(3, 3, 384, 288),
        input(1, 3, 256, 256),
        input(2, 10, 7, 5),
    ];
    parity::input_layout(&ops::<T>(), &shapes);
}

both_precisions!(input_layout_is_the_hosts_rounding, input_layout_parity);

/// W32 256×192 end to end against the CPU reference evaluated in f64: f32 within 1e-5
/// (the CPU's own f32 is ~1.7e-5 from it), direct or tensor-core, with identical argmax; f16
/// within 3e-2 and argmax agreement ≥ 0.99, or, where f16 storage alone moves this random
/// network further, within 1.15× of what it moves it (`hrnet::accuracy`, measured on each
/// input by the CPU f16-storage engine). Repeated runs are bitwise equal; peaks match the
/// CPU decode; 1 and 4 streams give the bits of 16 ([`parity::streams`]). At batch 5, the
/// front in chunks of 2 gives the whole batch's bits with K
/// unsplit, and meets the same bound with it split ([`parity::front_chunks`]). The CPU
/// references are computed once per batch, for the four engines.
#[test]
fn whole_network_matches_the_cpu_reference() {
    if !gpu_or_skip("whole_network_matches_the_cpu_reference") {
        return;
    }
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let model = Model::random(&config, 2019).unwrap();
    let cpu = CpuEngine::new(model.clone());
    // Per batch: input, other data, the f64 and f32 references, f16 storage's floor.
    let cases: Vec<_> = [1, 5]
        .into_iter()
        .map(|n| {
            let x = Tensor::random_normal(Nchw::batch(n, config_input(&config)), seed());
            let other = Tensor::random_normal(Nchw::batch(n, config_input(&config)), seed());
            let reference = cpu.forward_f64(&x).unwrap();
            let cpu32: Vec<f64> = cpu
                .forward(&x)
                .unwrap()
                .data()
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let floor = F16Floor::measure(&cpu, &x, &reference).unwrap();
            println!(
                "f16 storage n={n}: rel L2 {:.3e} vs f64, argmax {:.4}",
                floor.rel_l2, floor.argmax
            );
            (x, other, reference, cpu32, floor)
        })
        .collect();
    for (precision, kernels) in [
        (Precision::F32, Kernels::Direct),
        (Precision::F32, Kernels::TensorCore),
        (Precision::F16, Kernels::Direct),
        (Precision::F16, Kernels::TensorCore),
    ] {
        let mut gpu =
            CudaEngine::on_device(&model, precision, kernels, 0).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("{precision} {kernels}");
        gpu.set_poison(true);
        for (x, other, reference, cpu32, floor) in &cases {
            let (x, reference, n) = (x, reference.as_slice(), x.shape().n);
            let (bound, min_argmax) = match precision {
                Precision::F32 => (accuracy::CUDA_F32, 1.0),
                Precision::F16 => (floor.bound(), floor.min_argmax()),
            };
            let (out, gpu_peaks) = gpu.forward_peaks(x).unwrap();
            assert!(
                out.data().iter().all(|v| v.is_finite()),
                "unwritten heatmap elements"
            );
            let rel = relative_l2(out.data(), reference).unwrap();
            let rel_cpu32 = relative_l2(out.data(), cpu32).unwrap();
            let agree = argmax_agreement(out.data(), reference, 64 * 48);
            println!(
                "{name} n={n}: rel L2 {rel:.3e} vs f64, {rel_cpu32:.3e} vs cpu f32, argmax {agree:.4}"
            );
            assert!(rel <= bound, "{name} n={n}: {rel:.3e} > {bound:.2e}");
            assert!(
                agree >= min_argmax,
                "{name} n={n}: argmax agreement {agree} < {min_argmax:.4}"
            );
            assert_eq!(
                gpu_peaks,
                peaks(&out),
                "GPU peaks differ from the CPU decode of its heatmaps"
            );
            assert_eq!(
                gpu.peaks(x).unwrap(),
                gpu_peaks,
                "{name}: peaks without the maps"
            );
            let bytes = gpu.arena_bytes();
            assert_eq!(gpu.forward(x).unwrap(), out, "{name}: repeated runs differ");
            assert_eq!(
                gpu.arena_bytes(),
                bytes,
                "no reallocation at a batch size already seen"
            );
            // Unpoisoned (block sums written over their inputs), after a run on other data.
            gpu.set_poison(false);
            gpu.forward(other).unwrap();
            assert_eq!(
                gpu.forward(x).unwrap(),
                out,
                "{name}: unpoisoned, in place, differs"
            );
            println!(
                "{name} n={n}: arena {bytes} B poisoned, {} B in place, same bits",
                gpu.arena_bytes()
            );
            parity::streams(&mut gpu, x, other, &out, &name);
            if n == 5 {
                let split = parity::front_chunks(&mut gpu, x, other, 2, &name);
                let rel = relative_l2(split.data(), reference).unwrap();
                println!("{name} n={n}: front in chunks of 2, rel L2 {rel:.3e} vs f64");
                assert!(
                    rel <= bound,
                    "{name}: front in chunks, {rel:.3e} > {bound:.2e}"
                );
            }
            gpu.set_poison(true);
        }
        let bad = Tensor::random_normal(
            Nchw {
                n: 1,
                c: 3,
                h: 96,
                w: 64,
            },
            1,
        );
        assert!(matches!(gpu.forward(&bad), Err(Error::Input(_))));
    }
}

/// Every preset (the official experiment files' networks, widths 18, 32 and 48, COCO and
/// MPII, each input size) at batch 1 on every engine it runs on, outputs poisoned, against
/// the same network in f64 on the CPU: f32 within [`accuracy::CUDA_F32`] (under the emulated
/// driver the f32 engines landed at 3.9e-6 to 5.6e-6 on W18 and W32, where the CPU
/// reference's own f32 is at 1.6e-5 to 1.9e-5), f16 within what f16 storage allows on
/// that input ([`F16Floor`]). Under compute-sanitizer this is the full forward of every
/// preset that scripts/device-validate's `tests` part checks.
#[test]
fn every_preset_matches_the_cpu_reference() {
    if !gpu_or_skip("every_preset_matches_the_cpu_reference") {
        return;
    }
    for name in hrnet::config::PRESETS {
        let config = HrnetConfig::preset(name).unwrap();
        let model = Model::random(&config, 2019).unwrap();
        let cpu = CpuEngine::new(model.clone());
        let x = Tensor::random_normal(Nchw::batch(1, config_input(&config)), seed());
        let reference = cpu.forward_f64(&x).unwrap();
        let cpu32 = relative_l2(cpu.forward(&x).unwrap().data(), &reference).unwrap();
        let floor = F16Floor::measure(&cpu, &x, &reference).unwrap();
        let map = {
            let o = model.graph.output_shape();
            o.h * o.w
        };
        println!(
            "{name}: cpu f32 {cpu32:.3e} vs f64; f16 storage {:.3e}, argmax {:.4}",
            floor.rel_l2, floor.argmax
        );
        let tensor_cores =
            Kernels::default_for(Precision::F16, &model.graph) == Kernels::TensorCore;
        for (precision, kernels) in [
            (Precision::F32, Kernels::Direct),
            (Precision::F32, Kernels::TensorCore),
            (Precision::F16, Kernels::Direct),
            (Precision::F16, Kernels::TensorCore),
        ] {
            if kernels == Kernels::TensorCore && !tensor_cores {
                continue;
            }
            let (bound, min_argmax) = match precision {
                Precision::F32 => (accuracy::CUDA_F32, 1.0),
                Precision::F16 => (floor.bound(), floor.min_argmax()),
            };
            let mut gpu = CudaEngine::on_device(&model, precision, kernels, 0)
                .unwrap_or_else(|e| panic!("{name} {precision} {kernels}: {e}"));
            gpu.set_poison(true);
            let out = gpu.forward(&x).unwrap();
            assert!(
                out.data().iter().all(|v| v.is_finite()),
                "{name} {precision} {kernels}: unwritten heatmap elements"
            );
            let rel = relative_l2(out.data(), &reference).unwrap();
            let agree = argmax_agreement(out.data(), &reference, map);
            println!(
                "{name} {precision} {kernels}: rel L2 {rel:.3e} vs f64 (bound {bound:.2e}), \
                 argmax {agree:.4}"
            );
            assert!(
                rel <= bound,
                "{name} {precision} {kernels}: {rel:.3e} > {bound:.2e}"
            );
            assert!(
                agree >= min_argmax,
                "{name} {precision} {kernels}: argmax agreement {agree} < {min_argmax:.4}"
            );
        }
    }
}

/// W32 256×192 on the tensor-core engines (f16, and f32 as three bf16 parts) at batch 1 and 3:
/// activations through L1 and programmatic launches give the default's bits; K unsplit
/// differs by rounding only (the deep branches split at batch 1 on any GPU of 32 SMs or
/// more).
#[test]
fn tensor_core_tunings_change_nothing_but_rounding() {
    if !gpu_or_skip("tensor_core_tunings_change_nothing_but_rounding") {
        return;
    }
    let config = HrnetConfig::preset("w32-256x192").unwrap();
    let model = Model::random(&config, 2019).unwrap();
    for (precision, apart_bound) in [(Precision::F16, 3e-2), (Precision::F32, 1e-5)] {
        let mut gpu = CudaEngine::on_device(&model, precision, Kernels::TensorCore, 0).unwrap();
        gpu.set_poison(true);
        for n in [1, 3] {
            let x = Tensor::random_normal(Nchw::batch(n, config_input(&config)), seed());
            let out = gpu.forward(&x).unwrap();
            let splits = gpu.split_k_launches(n);
            if n == 1 {
                assert!(splits > 0, "nothing splits K at batch 1");
            }
            let unsplit = parity::tunings(&mut gpu, &x, &out);
            let wide: Vec<f64> = unsplit.data().iter().map(|&v| f64::from(v)).collect();
            let apart = relative_l2(out.data(), &wide).unwrap();
            println!(
                "W32 {precision} tensor-core n={n}: {splits} launches split K, {apart:.2e} from unsplit"
            );
            assert!(
                apart <= apart_bound,
                "{precision}: split and unsplit {apart:.3e} apart"
            );
        }
    }
}

/// The profile (`hrnet bench --profile`) of W32 256×192 on the GPU ([`parity::profile`]):
/// f16 tensor-core at batch 1 with grouped launches and at batch 3 with the front in
/// chunks of 2, f32 direct at batch 1.
#[test]
fn profile_accounts_for_every_launch() {
    if !gpu_or_skip("profile_accounts_for_every_launch") {
        return;
    }
    let model = Model::random(&HrnetConfig::preset("w32-256x192").unwrap(), 2019).unwrap();
    let mut gpu = CudaEngine::on_device(&model, Precision::F16, Kernels::TensorCore, 0).unwrap();
    parity::profile(&mut gpu, &model, 1, true, 8);
    parity::profile(&mut gpu, &model, 3, false, 2);
    let mut gpu = CudaEngine::on_device(&model, Precision::F32, Kernels::Direct, 0).unwrap();
    parity::profile(&mut gpu, &model, 1, false, 8);
}

fn config_input(c: &HrnetConfig) -> Chw {
    Chw {
        c: 3,
        h: c.input_height,
        w: c.input_width,
    }
}

/// The flip test on the GPU (one batch of plain and mirrored crops, merged and decoded on
/// the device) equals the CPU's merge and decode of the same engine's heatmaps of that
/// batch, bitwise.
#[test]
fn flip_merge_and_peaks_on_the_gpu_match_the_cpu() {
    if !gpu_or_skip("flip_merge_and_peaks_on_the_gpu_match_the_cpu") {
        return;
    }
    let mut config = HrnetConfig::official("tiny", 4, 17, 64, 64);
    config.stages[1].modules = 1;
    config.stages[2].modules = 1;
    let model = Model::random(&config, 3).unwrap();
    let pairs = hrnet::pose::joints::COCO.flip_pairs;
    for precision in [Precision::F32, Precision::F16] {
        let mut gpu = CudaEngine::new(&model, precision).unwrap();
        gpu.set_poison(true);
        let x = Tensor::random_normal(
            Nchw {
                n: 3,
                c: 3,
                h: 64,
                w: 64,
            },
            seed(),
        );
        parity::flip(&mut gpu, &x, pairs, &precision.to_string());
    }
}
