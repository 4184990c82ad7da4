//! The pose pipeline around the network, with the official semantics: person boxes to
//! normalised crops, the flip test, and heatmaps back to keypoints in image coordinates.
//!
//! ```
//! use hrnet::pose::{Device, PersonBox, PoseEstimator};
//! use hrnet::{HrnetConfig, Model};
//!
//! let mut config = HrnetConfig::official("tiny", 4, 17, 256, 192);
//! config.stages[1].modules = 1;
//! config.stages[2].modules = 1;
//! // `Model::load("w32.safetensors", None)` for real weights.
//! let estimator = PoseEstimator::new(Model::random(&config, 1)?, Device::Cpu)?;
//! let image = image::RgbImage::from_pixel(320, 240, image::Rgb([90, 120, 150]));
//! let poses = estimator.estimate(&image, &[PersonBox::new(40.0, 20.0, 120.0, 200.0, 0.9)])?;
//! assert_eq!(poses[0].keypoints.len(), 17);
//! # Ok::<(), hrnet::Error>(())
//! ```

pub mod affine;
pub mod coco_eval;
pub mod crop;
pub mod draw;
pub mod io;
pub mod joints;
pub mod mpii;
pub mod nms;
mod numpy;

use std::sync::Mutex;

use image::RgbImage;

use crate::cpu::ops::Element;
use crate::cpu::{CpuEngine, CpuF64Engine};
use crate::cuda::{CudaEngine, Precision};
use crate::decode::Peak;
use crate::error::{Error, Result};
use crate::parallel;
use crate::tensor::{Nchw, Tensor};
use crate::weights::Model;
use affine::Crop;
use joints::JointSet;

/// The official visibility threshold: keypoints scoring above it count towards a
/// person's score (`TEST.IN_VIS_THRE`).
pub const VISIBLE: f32 = 0.2;

/// A person box in image pixels, `(x, y)` its top-left corner, with its detection score.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PersonBox {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
    /// Detection score (1 for a box given by hand).
    pub score: f64,
}

impl PersonBox {
    /// A box `(x, y, w, h)` with a detection score.
    #[must_use]
    pub fn new(x: f64, y: f64, w: f64, h: f64, score: f64) -> Self {
        PersonBox { x, y, w, h, score }
    }

    /// The whole image as one box.
    #[must_use]
    pub fn whole(image: &RgbImage) -> Self {
        PersonBox::new(
            0.0,
            0.0,
            f64::from(image.width()),
            f64::from(image.height()),
            1.0,
        )
    }

    /// Checks that the box is finite, has an area and overlaps a `width × height` image.
    pub fn check(&self, width: u32, height: u32) -> Result<()> {
        let b = self;
        if ![b.x, b.y, b.w, b.h, b.score].iter().all(|v| v.is_finite()) {
            return Err(Error::Input(format!(
                "box {b:?} has a value that is not a finite number"
            )));
        }
        if b.w <= 0.0 || b.h <= 0.0 {
            return Err(Error::Input(format!(
                "box at ({}, {}) has zero area ({} × {})",
                b.x, b.y, b.w, b.h
            )));
        }
        if b.x >= f64::from(width)
            || b.y >= f64::from(height)
            || b.x + b.w <= 0.0
            || b.y + b.h <= 0.0
        {
            return Err(Error::Input(format!(
                "box ({}, {}, {}, {}) lies outside the {width}×{height} image",
                b.x, b.y, b.w, b.h
            )));
        }
        Ok(())
    }
}

/// A person to find the keypoints of: a [`PersonBox`], cropped as the official COCO code
/// crops a box, or a [`Crop`] given as it is (as MPII's annotations give them).
pub trait Person {
    /// An error naming what is wrong when the person cannot be cropped from a
    /// `width × height` image.
    fn check(&self, width: u32, height: u32) -> Result<()>;

    /// The box the person is reported in and the crop the network sees, for a network
    /// input of aspect ratio `aspect` (width / height).
    fn place(&self, aspect: f64) -> (PersonBox, Crop);
}

impl Person for PersonBox {
    fn check(&self, width: u32, height: u32) -> Result<()> {
        PersonBox::check(self, width, height)
    }

    fn place(&self, aspect: f64) -> (PersonBox, Crop) {
        (
            *self,
            Crop::from_box(self.x, self.y, self.w, self.h, aspect),
        )
    }
}

impl Person for Crop {
    /// Any finite crop of positive size is taken, also one reaching past the image (what
    /// lies outside is black, as in the official crop).
    fn check(&self, _width: u32, _height: u32) -> Result<()> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "crop {self:?} needs a finite center and a positive, finite scale"
            )))
        }
    }

    /// The crop's rectangle is the box, with score 1 (the official score of an annotated
    /// person).
    fn place(&self, _aspect: f64) -> (PersonBox, Crop) {
        let ([cx, cy], [w, h]) = (self.center(), self.size_px());
        (PersonBox::new(cx - w * 0.5, cy - h * 0.5, w, h, 1.0), *self)
    }
}

/// One keypoint in image coordinates with its heatmap maximum as score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keypoint {
    /// Column in image pixels.
    pub x: f32,
    /// Row in image pixels.
    pub y: f32,
    /// The heatmap's maximum.
    pub score: f32,
}

/// A person's keypoints, the box they were found in, the crop taken from it, and the
/// person's score: the box score times the mean of the keypoint scores above [`VISIBLE`]
/// (0 when none is), computed as the official evaluation does (the mean in float32).
#[derive(Clone, Debug, PartialEq)]
pub struct Pose {
    /// One per joint, in the model's joint order.
    pub keypoints: Vec<Keypoint>,
    /// The box (for a person given by a [`Crop`], the crop's own rectangle, score 1).
    pub bbox: PersonBox,
    /// The crop the network saw (the official `center` and `scale`): for a box, the box
    /// padded to the model's aspect ratio and enlarged 1.25×.
    pub crop: Crop,
    /// The person's score.
    pub score: f64,
}

impl Pose {
    /// `[x, y, score]` per joint, flattened, as results files hold keypoints.
    #[must_use]
    pub fn flat_keypoints(&self) -> Vec<f32> {
        self.keypoints
            .iter()
            .flat_map(|k| [k.x, k.y, k.score])
            .collect()
    }
}

/// Where the network runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU reference engine (f32).
    Cpu,
    /// The CPU in f64 ([`CpuF64Engine`]), the flip test's merge and the peaks too: the
    /// official pipeline with its model in float64, to f64 rounding. About twice the time
    /// of [`Device::Cpu`].
    CpuF64,
    /// GPU 0 with the hand-written kernels, in the given storage precision.
    Cuda(Precision),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu (f32)"),
            Device::CpuF64 => f.write_str("cpu (f64)"),
            Device::Cuda(p) => write!(f, "cuda ({p})"),
        }
    }
}

// One per estimator, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Cpu(CpuEngine),
    CpuF64(CpuF64Engine),
    Cuda(Mutex<CudaEngine>),
}

/// HRNet pose estimation, loaded once and then called per image. `Send` and `Sync`: one
/// estimator may serve many threads (GPU calls are serialised by an internal lock).
pub struct PoseEstimator {
    backend: Backend,
    device: Device,
    joints: &'static JointSet,
    input: (usize, usize),
    flip: bool,
    batch: usize,
    threads: usize,
}

/// Crops per network call unless [`PoseEstimator::with_batch`] says otherwise.
const DEFAULT_BATCH: usize = 32;

impl PoseEstimator {
    /// Puts `model` on `device`, with batches of 32 crops, crops cut on every core, and the
    /// flip test on (for COCO or MPII joints; off for other joint layouts, whose left/right
    /// pairs are unknown).
    pub fn new(model: Model, device: Device) -> Result<Self> {
        let config = &model.graph.config;
        let joints = JointSet::for_joints(config.num_joints);
        let input = (config.input_height, config.input_width);
        let backend = match device {
            Device::Cpu => Backend::Cpu(CpuEngine::new(model)),
            Device::CpuF64 => Backend::CpuF64(CpuF64Engine::new(&model)),
            Device::Cuda(p) => Backend::Cuda(Mutex::new(CudaEngine::new(&model, p)?)),
        };
        Ok(PoseEstimator {
            backend,
            device,
            joints,
            input,
            flip: joints.is_known(),
            batch: DEFAULT_BATCH,
            threads: parallel::available(),
        })
    }

    /// Turns the flip test on or off. It needs left/right joint pairs: a model whose joints
    /// are neither COCO's 17 nor MPII's 16 cannot use it.
    pub fn with_flip(mut self, on: bool) -> Result<Self> {
        if on && !self.joints.is_known() {
            return Err(Error::Input(
                "the flip test needs left/right joint pairs, known for 17 (COCO) or 16 (MPII) joints".into(),
            ));
        }
        self.flip = on;
        Ok(self)
    }

    /// Crops per network call (at least 1).
    #[must_use]
    pub fn with_batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// CPU threads that cut the crops (at least 1; by default, as many as the process may
    /// run at once). The results do not depend on it.
    #[must_use]
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// CPU threads that cut the crops.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Where the network runs.
    #[must_use]
    pub fn device(&self) -> Device {
        self.device
    }

    /// The joints the model predicts.
    #[must_use]
    pub fn joints(&self) -> &'static JointSet {
        self.joints
    }

    /// Heatmaps for a normalised `N × 3 × H × W` batch (on [`Device::CpuF64`], rounded
    /// to f32 at the end).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.backend {
            Backend::Cpu(e) => e.forward(x),
            Backend::CpuF64(e) => {
                let maps = e.forward(x)?;
                let s = Nchw::batch(x.shape().n, e.graph().output_shape());
                Tensor::new(s, maps.into_iter().map(|v| v as f32).collect())
            }
            Backend::Cuda(e) => e.lock().unwrap_or_else(|p| p.into_inner()).forward(x),
        }
    }

    /// The poses of `people` (one per person, in order): [`PersonBox`]es or [`Crop`]s.
    pub fn estimate<P: Person>(&self, image: &RgbImage, people: &[P]) -> Result<Vec<Pose>> {
        Ok(self
            .estimate_many(&[(image, people)])?
            .pop()
            .unwrap_or_default())
    }

    /// [`PoseEstimator::estimate`] for many images, all people of all images going through
    /// the network together in batches.
    pub fn estimate_many<P: Person>(&self, items: &[(&RgbImage, &[P])]) -> Result<Vec<Vec<Pose>>> {
        let (h, w) = self.input;
        let aspect = w as f64 / h as f64;
        let mut crops: Vec<Placed> = Vec::new();
        for (image, people) in items {
            for (i, p) in people.iter().enumerate() {
                p.check(image.width(), image.height())
                    .map_err(|e| match e {
                        Error::Input(why) => Error::Input(format!("person {i}: {why}")),
                        other => other,
                    })?;
                let (b, crop) = p.place(aspect);
                crops.push((*image, b, crop));
            }
        }
        let batches: Vec<&[Placed]> = crops.chunks(self.batch).collect();
        let mut poses: Vec<Pose> = Vec::with_capacity(crops.len());
        // Each batch is cropped (on every core) while the network runs the one before it.
        let mut pending = batches.first().map(|b| self.crop_batch(b));
        for (i, batch) in batches.iter().enumerate() {
            let Some(x) = pending.take() else { break };
            let x = x?;
            let (found, next) = std::thread::scope(|scope| {
                let next = batches
                    .get(i + 1)
                    .map(|b| scope.spawn(|| self.crop_batch(b)));
                let found = self.peaks(&x);
                let next = next.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                (found, next)
            });
            pending = next;
            let (peaks, s) = found?;
            for ((_, b, crop), peaks) in batch.iter().zip(peaks.chunks_exact(s.c)) {
                poses.push(to_pose(peaks, *b, *crop, s.w, s.h)?);
            }
        }
        let mut it = poses.into_iter();
        Ok(items
            .iter()
            .map(|(_, people)| it.by_ref().take(people.len()).collect())
            .collect())
    }
}

/// A person placed in an image: the box it came from and its crop.
type Placed<'a> = (&'a RgbImage, PersonBox, Crop);

impl PoseEstimator {
    /// The normalised crops of a batch, cut on up to [`PoseEstimator::with_threads`]
    /// threads.
    fn crop_batch(&self, batch: &[Placed]) -> Result<Tensor> {
        let (h, w) = self.input;
        let mut x = vec![0.0f32; batch.len() * 3 * h * w];
        let work: Vec<_> = batch.iter().zip(x.chunks_exact_mut(3 * h * w)).collect();
        parallel::map(work, self.threads, |((image, _, crop), dst)| {
            let rgb = crop
                .transform(w, h, false)
                .and_then(|t| crop::warp_affine(image, &t, w, h))
                .ok_or_else(|| Error::Input("a box too small to crop".into()))?;
            crop::normalise_into(&rgb, w, h, dst);
            Ok(())
        })
        .into_iter()
        .collect::<Result<()>>()?;
        Tensor::new(
            Nchw {
                n: batch.len(),
                c: 3,
                h,
                w,
            },
            x,
        )
    }

    /// The peak of every heatmap of a batch of crops (flip test included) and the heatmaps'
    /// shape. On the GPU the merge and the peaks are computed there too.
    fn peaks(&self, x: &Tensor) -> Result<(Vec<Peak>, Nchw)> {
        let pairs = self.joints.flip_pairs;
        match &self.backend {
            Backend::Cpu(e) => {
                let mut heatmaps = e.forward(x)?;
                if self.flip {
                    heatmaps = merge_flipped(&heatmaps, &e.forward(&flip_images(x))?, pairs)?;
                }
                Ok((crate::decode::peaks(&heatmaps), heatmaps.shape()))
            }
            Backend::CpuF64(e) => {
                let s = Nchw::batch(x.shape().n, e.graph().output_shape());
                let mut heatmaps = e.forward(x)?;
                if self.flip {
                    let flipped = e.forward(&flip_images(x))?;
                    merge_flipped_into(&mut heatmaps, &flipped, s, pairs);
                }
                Ok((crate::decode::peaks_of(&heatmaps, s), s))
            }
            Backend::Cuda(e) => {
                let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                // The mirrored crops are made on the GPU; only the peaks come back.
                let peaks = if self.flip {
                    e.flip_peaks(x, pairs)?
                } else {
                    e.peaks(x)?
                };
                Ok((peaks, Nchw::batch(x.shape().n, e.heatmap_shape())))
            }
        }
    }
}

/// Heatmap peaks to image coordinates (official `transform_preds`, float32 results) and
/// the person's score.
fn to_pose(peaks: &[Peak], bbox: PersonBox, crop: Crop, hm_w: usize, hm_h: usize) -> Result<Pose> {
    let back = crop
        .transform(hm_w, hm_h, true)
        .ok_or_else(|| Error::Input(format!("box {bbox:?} is too small to map back")))?;
    let keypoints = peaks
        .iter()
        .map(|p| {
            let (x, y) = back.apply(f64::from(p.x), f64::from(p.y));
            Keypoint {
                x: x as f32,
                y: y as f32,
                score: p.score,
            }
        })
        .collect();
    // coco.py's evaluate: a float32 sum of the visible scores, divided in float32, times
    // the box score in float64.
    let visible: Vec<f32> = peaks
        .iter()
        .map(|p| p.score)
        .filter(|&s| s > VISIBLE)
        .collect();
    let mean = if visible.is_empty() {
        0.0
    } else {
        visible.iter().fold(0.0f32, |a, &s| a + s) / visible.len() as f32
    };
    Ok(Pose {
        keypoints,
        bbox,
        crop,
        score: f64::from(mean) * bbox.score,
    })
}

/// The batch mirrored left to right (`input.flip(3)`).
#[must_use]
pub fn flip_images(x: &Tensor) -> Tensor {
    let s = x.shape();
    let mut out = x.data().to_vec();
    for row in out.chunks_exact_mut(s.w) {
        row.reverse();
    }
    Tensor::new(s, out).expect("same shape")
}

/// The official flip test's merge: the flipped heatmaps are mirrored back, left and right
/// joints swapped (`flip_back`), shifted one pixel right with column 0 kept
/// (`SHIFT_HEATMAP`), and averaged with the plain ones: `(plain + flipped) × 0.5`.
pub fn merge_flipped(plain: &Tensor, flipped: &Tensor, pairs: &[(usize, usize)]) -> Result<Tensor> {
    let s = plain.shape();
    if flipped.shape() != s {
        return Err(Error::Input(format!(
            "flipped heatmaps {} differ from {s}",
            flipped.shape()
        )));
    }
    let mut out = plain.data().to_vec();
    merge_flipped_into(&mut out, flipped.data(), s, pairs);
    Tensor::new(s, out)
}

/// [`merge_flipped`] in any float type, into `plain`: both hold a batch of `s`.
fn merge_flipped_into<T: Element>(
    plain: &mut [T],
    flipped: &[T],
    s: Nchw,
    pairs: &[(usize, usize)],
) {
    let (map, w) = (s.h * s.w, s.w);
    let half = T::from_f32(0.5);
    for n in 0..s.n {
        for j in 0..s.c {
            let src = &flipped[(n * s.c + joints::partner(pairs, j)) * map..][..map];
            let dst = &mut plain[(n * s.c + j) * map..][..map];
            for (src_row, dst_row) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
                for (x, d) in dst_row.iter_mut().enumerate() {
                    // Mirrored: column x of the flipped-back map is src[w−1−x]; shifted:
                    // column x takes column x−1 (column 0 keeps its own).
                    let from = x.saturating_sub(1);
                    *d = (*d + src_row[w - 1 - from]) * half;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HrnetConfig;

    #[test]
    fn engines_and_the_estimator_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PoseEstimator>();
        send_sync::<CpuEngine>();
        send_sync::<CpuF64Engine>();
        fn send<T: Send>() {}
        send::<CudaEngine>();
    }

    #[test]
    fn flip_merge_mirrors_swaps_and_shifts() {
        // One image, 3 joints (0 ↔ 2 swapped, 1 alone), 1 × 4 maps.
        let s = Nchw {
            n: 1,
            c: 3,
            h: 1,
            w: 4,
        };
        let plain = Tensor::new(s, vec![0.0; 12]).unwrap();
        let flipped = Tensor::new(
            s,
            vec![
                1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0, 5.0, 6.0, 7.0, 8.0,
            ],
        )
        .unwrap();
        let out = merge_flipped(&plain, &flipped, &[(0, 2)]).unwrap();
        // Joint 0 takes joint 2's map [5 6 7 8], mirrored [8 7 6 5], shifted [8 8 7 6], halved.
        assert_eq!(&out.data()[0..4], &[4.0, 4.0, 3.5, 3.0]);
        assert_eq!(&out.data()[4..8], &[20.0, 20.0, 15.0, 10.0]);
        assert_eq!(&out.data()[8..12], &[2.0, 2.0, 1.5, 1.0]);
        // The same through concatenation: the GPU's flip batch is plain then mirrored.
        let both = Tensor::concat(&[&plain, &flipped]).unwrap();
        assert_eq!(both.shape().n, 2);
        assert_eq!(both.image(1), flipped.data());
        // Flipping twice is the identity.
        let x = Tensor::random_normal(
            Nchw {
                n: 2,
                c: 3,
                h: 4,
                w: 5,
            },
            3,
        );
        assert_eq!(flip_images(&flip_images(&x)), x);
        assert_eq!(flip_images(&x).data()[0], x.data()[4]);
    }

    #[test]
    fn a_bad_box_is_named_once() {
        let mut config = HrnetConfig::official("tiny", 4, 17, 64, 64);
        config.stages.iter_mut().for_each(|s| s.modules = 1);
        let est = PoseEstimator::new(Model::random(&config, 1).unwrap(), Device::Cpu).unwrap();
        let img = RgbImage::new(40, 30);
        let e = est
            .estimate(&img, &[PersonBox::new(1.0, 1.0, 0.0, 5.0, 1.0)])
            .unwrap_err()
            .to_string();
        assert_eq!(e.matches("invalid input").count(), 1, "{e}");
        assert!(e.contains("person 0: box at (1, 1) has zero area"), "{e}");
    }

    #[test]
    fn bad_boxes_are_named() {
        let ok = PersonBox::new(10.0, 10.0, 5.0, 5.0, 1.0);
        assert!(ok.check(20, 20).is_ok());
        let e = PersonBox::new(10.0, 10.0, 0.0, 5.0, 1.0)
            .check(20, 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zero area"), "{e}");
        let e = PersonBox::new(30.0, 10.0, 5.0, 5.0, 1.0)
            .check(20, 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the 20×20 image"), "{e}");
        assert!(
            PersonBox::new(-10.0, 0.0, 10.0, 5.0, 1.0)
                .check(20, 20)
                .is_err()
        );
        assert!(
            PersonBox::new(f64::NAN, 0.0, 1.0, 1.0, 1.0)
                .check(20, 20)
                .is_err()
        );
    }

    #[test]
    fn person_score_averages_visible_keypoints() {
        let peaks = [0.9, 0.1, 0.5].map(|score| Peak {
            x: 1.0,
            y: 1.0,
            score,
        });
        let b = PersonBox::new(0.0, 0.0, 30.0, 40.0, 0.8);
        let c = Crop::from_box(0.0, 0.0, 30.0, 40.0, 0.75);
        let p = to_pose(&peaks, b, c, 48, 64).unwrap();
        approx::assert_relative_eq!(p.score, (0.9f32 as f64 + 0.5f32 as f64) / 2.0 * 0.8);
        let none = [Peak {
            x: 0.0,
            y: 0.0,
            score: 0.1,
        }];
        assert_eq!(to_pose(&none, b, c, 48, 64).unwrap().score, 0.0);
    }
}
