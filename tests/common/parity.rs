//! Kernel checks shared by the GPU parity tests and the emulated driver's test: fresh
//! random inputs, the reference computed on the values the kernel sees (rounded through
//! its storage type), outputs checked for unwritten elements.

use hrnet::cuda::{CudaEngine, CudaOps, GpuElem, Kernels, TcTuning};
use hrnet::decode::peaks;
use hrnet::tensor::relative_l2;
use hrnet::{Model, Nchw, Tensor};

pub fn seed() -> u64 {
    rand::random()
}

/// Rounds through the storage type, so that the reference sees what the GPU sees.
pub fn stored<T: GpuElem>(x: &[f32]) -> Vec<f64> {
    x.iter()
        .map(|&v| f64::from(T::from_f32(v).to_f32()))
        .collect()
}

/// Tolerance of one kernel against the f64 reference on the same stored operands.
pub fn tolerance<T: GpuElem>() -> f64 {
    if T::SUFFIX == "_f32" { 1e-6 } else { 2e-3 }
}

pub fn check(what: &str, out: &Tensor, reference: &[f64], tol: f64) {
    if let Some(i) = out.data().iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: element {i} is {} (unwritten or overflow)",
            out.data()[i]
        );
    }
    let rel = relative_l2(out.data(), reference).expect("same length");
    assert!(rel <= tol, "{what}: relative L2 {rel:.3e} > {tol:.0e}");
}

/// Standalone BN(+ReLU), with and without the ReLU, on `n` images of each `(c, h, w)` for
/// each `n` of `batches`.
pub fn bn_relu<T: GpuElem>(gpu: &CudaOps<T>, shapes: &[(usize, usize, usize)], batches: &[usize]) {
    for &(c, h, w) in shapes {
        for &n in batches {
            let x = Tensor::random_normal(Nchw { n, c, h, w }, seed());
            let v = |s| {
                Tensor::random_normal(
                    Nchw {
                        n: 1,
                        c: 1,
                        h: 1,
                        w: c,
                    },
                    s,
                )
                .into_data()
            };
            let (gamma, beta, mean) = (v(seed()), v(seed()), v(seed()));
            let var: Vec<f32> = v(seed()).iter().map(|x| x.abs() + 0.1).collect();
            for relu in [false, true] {
                let got = gpu
                    .bn_relu(&x, [&gamma, &beta, &mean, &var], 1e-5, relu)
                    .unwrap();
                let xs = stored::<T>(x.data());
                let want: Vec<f64> = xs
                    .iter()
                    .enumerate()
                    .map(|(i, &xv)| {
                        let ch = (i / (h * w)) % c;
                        let y = (xv - f64::from(mean[ch])) / (f64::from(var[ch]) + 1e-5).sqrt()
                            * f64::from(gamma[ch])
                            + f64::from(beta[ch]);
                        if relu { y.max(0.0) } else { y }
                    })
                    .collect();
                check(
                    &format!("bn_relu{} {c}x{h}x{w} n={n}", T::SUFFIX),
                    &got,
                    &want,
                    tolerance::<T>(),
                );
            }
        }
    }
}

/// The input laid out on the GPU, NCHW and NHWC (channels padded to a multiple of 8),
/// plain and mirrored, against the host's rounding of each value, bit for bit, padding zero; with values at
/// f16's edges among the random ones: subnormal, halfway between two f16, the largest
/// f16, the first value that rounds past it, negative zero. Each layout also from the
/// input already rounded to T (`input_pad`, as a chunked front pads its compact input):
/// the same bits.
pub fn input_layout<T: GpuElem>(gpu: &CudaOps<T>, shapes: &[Nchw]) {
    let edges = [
        6.0e-8,
        -3.0e-5,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        -65520.0,
        -0.0,
        1e-9,
    ];
    for &s in shapes {
        let mut data = Tensor::random_normal(s, seed()).into_data();
        for (k, &e) in edges.iter().enumerate() {
            let at = (k * 7919) % data.len();
            data[at] = e;
        }
        let x = Tensor::new(s, data).unwrap();
        let hw = s.h * s.w;
        for (nhwc, mirror) in [(false, false), (true, false), (false, true), (true, true)] {
            let cp = if nhwc { s.c.next_multiple_of(8) } else { s.c };
            let got = gpu.input_layout(&x, nhwc, mirror).unwrap();
            assert_eq!(got.len(), s.n * hw * cp);
            let padded = gpu.input_pad(&x, nhwc, mirror).unwrap();
            assert!(
                padded.len() == got.len()
                    && got
                        .iter()
                        .zip(&padded)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "input_pad{} {s} nhwc={nhwc} mirror={mirror}: not input_layout's bits",
                T::SUFFIX
            );
            for (i, g) in got.iter().enumerate() {
                let (img, ch, p) = if nhwc {
                    (i / (hw * cp), i % cp, (i / cp) % hw)
                } else {
                    (i / (hw * cp), (i / hw) % cp, i % hw)
                };
                let p = if mirror {
                    p / s.w * s.w + (s.w - 1 - p % s.w)
                } else {
                    p
                };
                let want = if ch < s.c {
                    T::from_f32(x.data()[(img * s.c + ch) * hw + p]).to_f32()
                } else {
                    0.0
                };
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "input_layout{} {s} nhwc={nhwc} mirror={mirror}: element {i} (image {img}, \
                     channel {ch}, source pixel {p}) is {g}, the host rounds to {want}",
                    T::SUFFIX
                );
            }
        }
    }
}

/// Peaks of 17 maps an image, for each `(n, h, w)`, against the CPU decode: random maps and
/// crafted ones (maxima on the edges and next to them, a tie, all negative, all zero).
pub fn argmax<T: GpuElem>(gpu: &CudaOps<T>, shapes: &[(usize, usize, usize)]) {
    for &(n, h, w) in shapes {
        let mut data = Tensor::random_normal(Nchw { n, c: 17, h, w }, seed()).into_data();
        let map = h * w;
        // Crafted maps: peaks on every edge and next to it, ties, all-negative, all-zero.
        let crafted = [0, 1, w - 2, w - 1, (h - 2) * w + 3, (h - 1) * w + w - 1];
        for (k, &at) in crafted.iter().enumerate() {
            let m = &mut data[k * map..(k + 1) * map];
            m[at] = 10.0;
        }
        data[6 * map + 7] = 9.0;
        data[6 * map + 3] = 9.0; // a tie: the first (row-major) wins
        data[7 * map..8 * map]
            .iter_mut()
            .for_each(|v| *v = -v.abs() - 1.0);
        data[8 * map..9 * map].iter_mut().for_each(|v| *v = 0.0);
        // Round through the storage type so both sides see the same values.
        let data: Vec<f32> = data.iter().map(|&v| T::from_f32(v).to_f32()).collect();
        let hm = Tensor::new(Nchw { n, c: 17, h, w }, data).unwrap();
        let got = gpu.argmax(&hm).unwrap();
        assert_eq!(got, peaks(&hm), "argmax{} {n}x17x{h}x{w}", T::SUFFIX);
    }
}

/// The flip test on the GPU (`forward_flip_peaks` on `x` followed by its mirror) against
/// the CPU merge and decode of the same engine's maps of the same batch of 2N, and
/// `flip_peaks` on `x` alone (the mirror made on the GPU) against it. The same
/// batch: with split K, an image's maps depend on the batch size (by f32 rounding).
pub fn flip(gpu: &mut CudaEngine, x: &Tensor, pairs: &[(usize, usize)], what: &str) {
    let n = x.shape().n;
    let both = Tensor::concat(&[x, &hrnet::pose::flip_images(x)]).unwrap();
    let (merged, gpu_peaks) = gpu.forward_flip_peaks(&both, pairs).unwrap();
    let maps = gpu.forward(&both).unwrap();
    let half = |range: std::ops::Range<usize>| {
        let mut s = maps.shape();
        s.n = n;
        let data = range.flat_map(|i| maps.image(i).to_vec()).collect();
        Tensor::new(s, data).unwrap()
    };
    let want = hrnet::pose::merge_flipped(&half(0..n), &half(n..2 * n), pairs).unwrap();
    assert_eq!(merged, want, "{what}: merged heatmaps");
    assert_eq!(gpu_peaks, peaks(&want), "{what}: peaks");
    // The merged maps (f32) are held beside the batch's buffers, and counted.
    let least = gpu.memory_for(2 * n).unwrap() + size_of_val(merged.data());
    assert!(
        gpu.arena_bytes() >= least,
        "{what}: arena_bytes {} B, the batch's and the merged maps' {least} B",
        gpu.arena_bytes()
    );
    // The mirrored half made on the GPU from the plain crops: the same batch, the same bits.
    assert_eq!(
        gpu.flip_peaks(x, pairs).unwrap(),
        gpu_peaks,
        "{what}: flip_peaks, the mirror made on the GPU"
    );
}

/// The tensor-core engine's tunings on `x`, whose result with the default tuning is `out`:
/// activations through L1 with the deep pipeline (both change only how operands reach
/// shared memory), programmatic launches, and grouped launches (each with one of the
/// two, so that both grouped kernels run) give the same bits (two forwards, so that the
/// emulated engine's CI time stays small); grouped, the same chain, and at batch 1 fewer
/// launches.
/// Returned is the result with K unsplit, which differs by rounding only, for the caller
/// to bound. The engine is left with the default tuning.
pub fn tunings(gpu: &mut CudaEngine, x: &Tensor, out: &Tensor) -> Tensor {
    let default = gpu.tuning();
    assert_eq!(default, TcTuning::default());
    let n = x.shape().n;
    let (launches, chain) = gpu.launches(n);
    for (l1_and_deep, programmatic) in [(true, false), (false, true)] {
        let t = TcTuning {
            l1_activations: l1_and_deep,
            programmatic_launch: programmatic,
            deep_pipeline: l1_and_deep,
            grouped: true,
            ..default
        };
        gpu.set_tuning(t);
        assert_eq!(&gpu.forward(x).unwrap(), out, "{t}: other bits");
        let (grouped, grouped_chain) = gpu.launches(n);
        // At batch 1 every launch of a group takes the smallest tile: it runs as one.
        assert!(
            (grouped < launches || n > 1 && grouped == launches) && grouped_chain == chain,
            "{t}: {grouped} launches, chain {grouped_chain}; ungrouped {launches}, chain {chain}"
        );
        println!(
            "grouped launches at batch {n}: {grouped} of {launches}, chain {chain}, same bits"
        );
    }
    gpu.set_tuning(TcTuning {
        split_k: false,
        ..default
    });
    assert_eq!(gpu.split_k_launches(x.shape().n), 0);
    let unsplit = gpu.forward(x).unwrap();
    gpu.set_tuning(default);
    unsplit
}

/// The front in chunks of `chunk` images (`x` holds more, and not a multiple, so that
/// the last chunk is smaller; enough that chunking saves memory at its batch) against
/// the whole batch at once: with K unsplit the same
/// bits, poisoned (every chunk writes every element of its values) and unpoisoned after
/// a run on `other` (chunks find their images, the rest finds every chunk's); and less
/// memory at batch 64. Returned is the result with split K (the default), which differs
/// by rounding only, for the caller to bound. The engine is left unpoisoned, with the
/// default tuning and front chunk.
pub fn front_chunks(
    gpu: &mut CudaEngine,
    x: &Tensor,
    other: &Tensor,
    chunk: usize,
    what: &str,
) -> Tensor {
    let n = x.shape().n;
    assert!(
        n > chunk && !n.is_multiple_of(chunk),
        "{n} images in chunks of {chunk}"
    );
    let tuning = gpu.tuning();
    gpu.set_tuning(TcTuning {
        split_k: false,
        ..tuning
    });
    gpu.set_front_chunk(0);
    assert_eq!(gpu.front_chunks(n), None);
    let whole = gpu.forward(x).unwrap();
    let whole_64 = gpu.memory_for(64).unwrap();
    gpu.set_front_chunk(chunk);
    let (steps, images) = gpu
        .front_chunks(n)
        .unwrap_or_else(|| panic!("{what}: the front of {n} images runs in chunks of {chunk}"));
    assert_eq!(images, chunk);
    assert_eq!(
        gpu.front_chunks(chunk),
        None,
        "a batch of one chunk runs whole"
    );
    gpu.set_poison(true);
    let poisoned = gpu.forward(x).unwrap();
    assert_eq!(
        poisoned, whole,
        "{what}: front in chunks of {chunk}, poisoned"
    );
    gpu.set_poison(false);
    gpu.forward(other).unwrap();
    let chunked = gpu.forward(x).unwrap();
    assert_eq!(chunked, whole, "{what}: front in chunks of {chunk}");
    let chunked_64 = gpu.memory_for(64).unwrap();
    assert!(
        chunked_64 < whole_64,
        "{what}: {chunked_64} B chunked, {whole_64} B whole"
    );
    gpu.set_tuning(tuning);
    let split = gpu.forward(x).unwrap();
    println!(
        "{what}: the front ({steps} steps) in chunks of {chunk} at batch {n}: the whole \
         batch's bits with K unsplit; batch 64 needs {chunked_64} B, {whole_64} B at once"
    );
    gpu.set_front_chunk(hrnet::cuda::DEFAULT_FRONT_CHUNK);
    split
}

/// A forward spread over fewer streams than the default 16 (1 and 4) gives `expected`
/// (the default's bits) after a run on `other`, and its chain of dependent launches is
/// no shorter: with one stream, every launch. The engine is left on 16 streams.
pub fn streams(gpu: &mut CudaEngine, x: &Tensor, other: &Tensor, expected: &Tensor, what: &str) {
    let n = x.shape().n;
    let (launches, path) = gpu.launches(n);
    for k in [1, 4] {
        gpu.set_streams(k);
        gpu.forward(other).unwrap();
        assert_eq!(&gpu.forward(x).unwrap(), expected, "{what}: on {k} streams");
        let (l, p) = gpu.launches(n);
        assert_eq!(l, launches, "{what}: launches on {k} streams");
        assert!(p >= path, "{what}: chain {p} on {k} streams, {path} on 16");
        if k == 1 {
            assert_eq!(p, launches, "{what}: one stream chains every launch");
        }
        println!("{what}: {k} streams, chain {p} of {launches} launches (16: {path}), same bits");
    }
    gpu.set_streams(hrnet::cuda::STREAMS);
    assert_eq!(
        gpu.launches(n),
        (launches, path),
        "{what}: back on 16 streams"
    );
}

/// The profile of a forward (`CudaEngine::profile`) of `model` on `gpu` at batch `n`,
/// with grouped launches or not and the front in chunks of `chunk`: every step of the
/// program in exactly one launch, as many kernels as the forward launches, every
/// multiply-add of the network counted once, tiles exactly for the tensor-core program,
/// and a forward after it giving the bits it gave before.
pub fn profile(gpu: &mut CudaEngine, model: &Model, n: usize, grouped: bool, chunk: usize) {
    let graph = &model.graph;
    let tensor_core = gpu.kernels() == Kernels::TensorCore;
    let steps = if tensor_core {
        hrnet::graph::fused::FusedPlan::new(graph).steps.len()
    } else {
        graph.ops.len()
    };
    gpu.set_tuning(TcTuning {
        grouped,
        ..TcTuning::default()
    });
    gpu.set_front_chunk(chunk);
    let x = Tensor::random_normal(Nchw::batch(n, graph.input_shape()), seed());
    let before = gpu.forward(&x).unwrap();
    let launches = gpu.profile(&x, 1, 1).unwrap();
    assert!(gpu.graph_fallback().is_none(), "{:?}", gpu.graph_fallback());
    let what = format!("{} {} n={n}", gpu.precision(), gpu.kernels());
    let stepped: usize = launches.iter().map(|l| l.steps.len()).sum();
    assert_eq!(stepped, steps, "{what}: steps");
    let macs = graph.summary().conv_macs as u64 * n as u64;
    let counted: u64 = launches.iter().map(|l| l.multiply_adds).sum();
    assert_eq!(counted, macs, "{what}: multiply-adds");
    assert!(
        launches
            .iter()
            .all(|l| l.bytes > 0 && l.ms.is_finite() && l.ms >= 0.0),
        "{what}: bytes and times"
    );
    assert!(launches.iter().map(|l| l.ms).sum::<f64>() > 0.0, "{what}");
    assert!(
        launches
            .iter()
            .all(|l| l.tiles.is_some() == (tensor_core && l.kernel.starts_with("conv_tc"))),
        "{what}: tiles"
    );
    let kernels: usize = launches.iter().map(|l| l.kernels).sum();
    match gpu.front_chunks(n) {
        None => {
            assert_eq!(kernels, gpu.launches(n).0, "{what}: kernels");
            assert!(launches.iter().all(|l| l.images == n), "{what}: images");
            if grouped && tensor_core && n == 1 {
                assert!(launches.len() < steps, "{what}: no grouped launch");
            }
        }
        Some((front, chunk)) => {
            // The front's launches run once per chunk, each over at most `chunk` images.
            let chunks = n.div_ceil(chunk);
            let front_steps: usize = launches
                .iter()
                .filter(|l| l.images == chunk)
                .map(|l| l.steps.len())
                .sum();
            assert_eq!(front_steps, front, "{what}: the front's steps");
            assert!(
                launches
                    .iter()
                    .all(|l| (l.images == chunk && l.kernels % chunks == 0) || l.images == n),
                "{what}: the front's launches"
            );
        }
    }
    println!(
        "profile {what}: {} launches, {kernels} kernels, {:.1} µs in all",
        launches.len(),
        launches.iter().map(|l| l.ms).sum::<f64>() * 1e3
    );
    assert_eq!(
        gpu.forward(&x).unwrap(),
        before,
        "{what}: the forward after a profile"
    );
}
