//! The CUDA engine under pressure: a batch too large for the GPU is a clear error, the
//! engine stays usable at a smaller batch and leaks nothing; threads sharing an engine
//! (behind a lock) or owning one get bitwise the single-threaded results.
//! `HRNET_STRESS_ROUNDS` (default 250) sets each thread's rounds: scripts/device-validate
//! lowers it under compute-sanitizer, which runs every kernel many times slower.

mod common;

use std::sync::{Arc, Mutex};

use common::gpu_or_skip;
use hrnet::cuda::{CudaEngine, Precision};
use hrnet::{Error, HrnetConfig, Model, Nchw, Tensor};

fn w32() -> Model {
    Model::random(&HrnetConfig::preset("w32-256x192").unwrap(), 2019).unwrap()
}

#[test]
fn out_of_memory_is_an_error_and_the_engine_recovers() {
    if !gpu_or_skip("out_of_memory_is_an_error_and_the_engine_recovers") {
        return;
    }
    let mut gpu = CudaEngine::new(&w32(), Precision::F16).unwrap();
    let x = Tensor::random_normal(
        Nchw {
            n: 2,
            c: 3,
            h: 256,
            w: 192,
        },
        rand::random(),
    );
    let before = gpu.forward(&x).unwrap();
    let (free_before, total) = gpu.memory().unwrap();
    let held = gpu.memory_for(2).unwrap();
    assert!(held >= gpu.arena_bytes() && gpu.arena_bytes() > 0);
    // Far more than any GPU holds: refused before allocating, naming the sizes.
    let e = gpu.reserve(1 << 22).unwrap_err();
    println!("{e}");
    match &e {
        Error::OutOfMemory {
            needed, available, ..
        } => assert!(needed > available && *available <= total),
        other => panic!("expected OutOfMemory, got {other}"),
    }
    assert!(e.to_string().contains("MiB are free"));
    // Just over what is free: also refused, and the old arena is gone with the attempt.
    let too_many = gpu.largest_batch_within(free_before + held) + 16;
    assert!(
        matches!(gpu.reserve(too_many), Err(Error::OutOfMemory { .. })),
        "{too_many} images"
    );
    // Usable again at the old batch, with the same result and the memory back.
    assert_eq!(gpu.forward(&x).unwrap(), before);
    let (free_after, _) = gpu.memory().unwrap();
    let drift = free_before.abs_diff(free_after);
    println!("free before {free_before} B, after {free_after} B, drift {drift} B");
    assert!(
        drift <= 64 << 20,
        "device memory not back to its level: {drift} B apart"
    );
}

#[test]
fn threads_sharing_or_owning_gpu_engines_agree_bitwise() {
    if !gpu_or_skip("threads_sharing_or_owning_gpu_engines_agree_bitwise") {
        return;
    }
    let model = w32();
    let xs: Arc<Vec<Tensor>> = Arc::new(
        (0..4)
            .map(|i| {
                Tensor::random_normal(
                    Nchw {
                        n: 1 + i,
                        c: 3,
                        h: 256,
                        w: 192,
                    },
                    rand::random(),
                )
            })
            .collect(),
    );
    let mut alone = CudaEngine::new(&model, Precision::F16).unwrap();
    let expected: Arc<Vec<Tensor>> =
        Arc::new(xs.iter().map(|x| alone.forward(x).unwrap()).collect());
    let shared = Arc::new(Mutex::new(CudaEngine::new(&model, Precision::F16).unwrap()));
    let rounds: usize = std::env::var("HRNET_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    println!("4 threads x {rounds} rounds x 2 forwards (a shared engine and an own one)");
    let mut handles = Vec::new();
    for t in 0..4 {
        let (xs, expected, shared, model) =
            (xs.clone(), expected.clone(), shared.clone(), model.clone());
        handles.push(std::thread::spawn(move || {
            let mut own = CudaEngine::new(&model, Precision::F16).unwrap();
            for i in 0..rounds {
                let k = (t + i) % xs.len();
                assert_eq!(
                    shared.lock().unwrap().forward(&xs[k]).unwrap(),
                    expected[k],
                    "shared, thread {t}"
                );
                assert_eq!(own.forward(&xs[k]).unwrap(), expected[k], "own, thread {t}");
            }
        }));
    }
    for h in handles {
        h.join().expect("no thread panicked");
    }
}
