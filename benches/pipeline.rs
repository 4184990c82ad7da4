//! The pose pipeline's CPU side, which feeds the network: decoding a COCO photograph
//! (640×425 JPEG), and one person's crop (the official warp, then normalisation) for W32
//! 256×192; then the whole COCO sample (4 photographs, the 118 people of its detections
//! file) decoded and cropped on one thread and on every core, as `hrnet pose` does. On
//! the GPU these, not the network, bound `hrnet pose` over a folder unless they run on
//! every core.

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrnet::pose::affine::Crop;
use hrnet::pose::crop::{normalise_into, warp_affine};
use hrnet::pose::io::{decode_image, load_detections, load_image};
use hrnet::pose::{Person, PersonBox};

const SAMPLE: &str = "../shared/data/coco-sample";
const PHOTO: &str = "000000000785.jpg";

fn pipeline(c: &mut Criterion) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE);
    let path = sample.join(PHOTO);
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "SKIPPED pipeline bench: {} not found (../shared beside the project)",
            path.display()
        );
        return;
    };
    let image = decode_image(&bytes, &path).unwrap();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_jpeg_640x425", |b| {
        b.iter(|| decode_image(&bytes, &path).unwrap())
    });
    let (w, h) = (192, 256);
    let crop = Crop::from_box(280.0, 40.0, 220.0, 350.0, w as f64 / h as f64);
    let t = crop.transform(w, h, false).unwrap();
    let mut chw = vec![0.0f32; 3 * w * h];
    g.bench_function("crop_normalise_256x192", |b| {
        b.iter(|| {
            let rgb = warp_affine(&image, &t, w, h).unwrap();
            normalise_into(&rgb, w, h, &mut chw);
        })
    });
    g.finish();

    let detections = load_detections(sample.join("test_coco_det_AP_H_56.json"), 0.0).unwrap();
    let people: usize = detections.iter().map(|(_, b)| b.len()).sum();
    let mut g = c.benchmark_group("pipeline_coco_sample");
    g.throughput(Throughput::Elements(people as u64));
    g.sample_size(20);
    let all = hrnet::parallel::available();
    for threads in [1, all] {
        g.bench_function(format!("decode_and_crop_{threads}_threads"), |b| {
            b.iter(|| sample_crops(&sample, &detections, threads, w, h))
        });
    }
    g.finish();
}

/// Every detection's normalised crop, the images decoded and the people cropped on
/// `threads` threads.
fn sample_crops(
    sample: &Path,
    detections: &[(u64, Vec<PersonBox>)],
    threads: usize,
    w: usize,
    h: usize,
) -> Vec<f32> {
    let images = hrnet::parallel::map(detections.iter().collect(), threads, |(id, _)| {
        load_image(sample.join(format!("{id:012}.jpg"))).unwrap()
    });
    let aspect = w as f64 / h as f64;
    let placed: Vec<_> = images
        .iter()
        .zip(detections)
        .flat_map(|(img, (_, boxes))| boxes.iter().map(move |b| (img, b.place(aspect).1)))
        .collect();
    let mut x = vec![0.0f32; placed.len() * 3 * w * h];
    let work: Vec<_> = placed.iter().zip(x.chunks_exact_mut(3 * w * h)).collect();
    hrnet::parallel::map(work, threads, |((img, crop), dst)| {
        let rgb = warp_affine(img, &crop.transform(w, h, false).unwrap(), w, h).unwrap();
        normalise_into(&rgb, w, h, dst);
    });
    x
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
