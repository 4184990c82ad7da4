//! Thread safety as stated: `CpuEngine`, `CpuF64Engine` and `PoseEstimator` are
//! `Send + Sync` and give bitwise the same results shared by many threads, owned by each
//! thread, or run alone; repeated runs on the same input are bitwise equal.

use std::sync::Arc;

use hrnet::pose::{Device, PersonBox, PoseEstimator};
use hrnet::{CpuEngine, CpuF64Engine, HrnetConfig, Model, Nchw, Tensor, image};

/// A small network (every module kind once) for many fast forwards.
fn small() -> Model {
    let mut c = HrnetConfig::official("small", 4, 17, 64, 64);
    c.stages.iter_mut().for_each(|s| {
        s.modules = 1;
        s.blocks.iter_mut().for_each(|b| *b = 1);
    });
    Model::random(&c, 11).unwrap()
}

const THREADS: usize = 4;
const PER_THREAD: usize = 300;
/// The f64 engine, twice as slow, runs fewer.
const PER_THREAD_F64: usize = 60;

fn inputs() -> Vec<Tensor> {
    (0..8)
        .map(|i| {
            Tensor::random_normal(
                Nchw {
                    n: 1 + i % 3,
                    c: 3,
                    h: 64,
                    w: 64,
                },
                rand::random(),
            )
        })
        .collect()
}

/// Engines made by `make` and run by `run`: shared by many threads (`per_thread` runs
/// each), owned by each (half as many), or alone, every result bitwise equal to one
/// thread's, and repeated runs alone too.
fn engines_agree_bitwise_with_one_thread<E, O>(
    name: &str,
    per_thread: usize,
    make: fn(Model) -> E,
    run: fn(&E, &Tensor) -> O,
) where
    E: Send + Sync + 'static,
    O: PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    let model = small();
    let xs = Arc::new(inputs());
    let alone = make(model.clone());
    let expected: Arc<Vec<O>> = Arc::new(xs.iter().map(|x| run(&alone, x)).collect());
    for (x, e) in xs.iter().zip(expected.iter()) {
        assert_eq!(&run(&alone, x), e);
    }
    let shared = Arc::new(make(model.clone()));
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (xs, expected, shared) = (xs.clone(), expected.clone(), shared.clone());
        handles.push(std::thread::spawn(move || {
            for i in 0..per_thread {
                let k = (t + i) % xs.len();
                assert_eq!(
                    run(&shared, &xs[k]),
                    expected[k],
                    "shared engine, thread {t}, run {i}"
                );
            }
        }));
    }
    for t in 0..THREADS {
        let (xs, expected, model) = (xs.clone(), expected.clone(), model.clone());
        handles.push(std::thread::spawn(move || {
            let own = make(model);
            for i in 0..per_thread / 2 {
                let k = (t * 3 + i) % xs.len();
                assert_eq!(
                    run(&own, &xs[k]),
                    expected[k],
                    "own engine, thread {t}, run {i}"
                );
            }
        }));
    }
    for h in handles {
        h.join().expect("no thread panicked");
    }
    println!(
        "{name}: {} forwards on {} threads, all bitwise equal to one thread's",
        THREADS * per_thread * 3 / 2,
        2 * THREADS
    );
}

#[test]
fn shared_and_owned_engines_agree_bitwise_with_one_thread() {
    engines_agree_bitwise_with_one_thread("CpuEngine", PER_THREAD, CpuEngine::new, |e, x| {
        e.forward(x).unwrap()
    });
}

#[test]
fn shared_and_owned_f64_engines_agree_bitwise_with_one_thread() {
    engines_agree_bitwise_with_one_thread(
        "CpuF64Engine",
        PER_THREAD_F64,
        |m| CpuF64Engine::new(&m),
        |e, x| e.forward(x).unwrap(),
    );
}

#[test]
fn one_estimator_serves_many_threads() {
    let estimator = Arc::new(PoseEstimator::new(small(), Device::Cpu).unwrap());
    let image = Arc::new(image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 2) as u8, ((x + y) % 256) as u8])
    }));
    let boxes = [
        PersonBox::new(20.0, 10.0, 60.0, 100.0, 0.9),
        PersonBox::new(90.0, 5.0, 50.0, 110.0, 0.8),
    ];
    let expected = estimator.estimate(&image, &boxes).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (estimator, image, expected) = (estimator.clone(), image.clone(), expected.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    assert_eq!(estimator.estimate(&image, &boxes).unwrap(), expected);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no thread panicked");
    }
}
