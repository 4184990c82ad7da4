//! The `hrnet` command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use hrnet::accuracy::{self, F16Floor};
use hrnet::config::{parse_size, size_in_name};
use hrnet::cuda::{
    CudaEngine, DEFAULT_FRONT_CHUNK, Kernels, Precision, STREAMS, TcTuning, compiled, gpus, probe,
};
use hrnet::pose::coco_eval::{GroundTruth, STAT_NAMES, evaluate_keypoints, load_keypoint_results};
use hrnet::pose::io::{
    CocoResult, OFFICIAL_MIN_DETECTION_SCORE, find_image, load_boxes, load_detections, load_image,
    load_image_list, parse_bbox, parse_ground_truth, write_results,
};
use hrnet::pose::mpii::{MpiiGroundTruth, MpiiPerson, MpiiResult, PCKH_NAMES, evaluate_pckh};
use hrnet::pose::{self, Person, PersonBox, PoseEstimator, draw::draw_poses};
use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::weights::random_checkpoint;
use hrnet::{CpuEngine, CpuF64Engine, Error, HrnetConfig, Model, Nchw, Result, Tensor, npy};
use serde_json::Value;

/// HRNet pose estimation: an inference engine with a CPU reference.
#[derive(Parser)]
#[command(name = "hrnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The f32 CPU reference engine.
    Cpu,
    /// The CUDA engine (hand-written kernels, GPU 0).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Prec {
    /// 32-bit floats.
    F32,
    /// 16-bit storage, f32 accumulation (CUDA only).
    F16,
    /// 64-bit floats, parameters folded in f64: the official model in float64 (CPU only).
    F64,
}

impl TryFrom<Prec> for Precision {
    type Error = Error;

    fn try_from(p: Prec) -> Result<Self> {
        match p {
            Prec::F32 => Ok(Precision::F32),
            Prec::F16 => Ok(Precision::F16),
            Prec::F64 => Err(Error::Input(
                "f64 runs on the CPU only (--device cpu); the GPU runs f32 or f16".into(),
            )),
        }
    }
}

/// Where `--device` and `--precision` run the network.
fn run_on(device: Device, precision: Prec) -> Result<pose::Device> {
    match (device, precision) {
        (Device::Cpu, Prec::F32) => Ok(pose::Device::Cpu),
        (Device::Cpu, Prec::F64) => Ok(pose::Device::CpuF64),
        (Device::Cpu, Prec::F16) => Err(Error::Input(
            "the CPU runs f32 or f64; use --device cuda for f16".into(),
        )),
        (Device::Cuda, p) => Ok(pose::Device::Cuda(p.try_into()?)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KernelsArg {
    /// kernels/conv.cu, NCHW, f32 or f16.
    Direct,
    /// kernels/conv_tc.cu, NHWC on tensor cores with fused exchange units (f16; f32 split
    /// exactly into three bf16 parts, six products, f64 totals).
    TensorCore,
}

impl From<KernelsArg> for Kernels {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Direct => Kernels::Direct,
            KernelsArg::TensorCore => Kernels::TensorCore,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Run the network on a normalised float32 NCHW batch and write the heatmaps.
    Forward {
        /// Checkpoint with the official key names: safetensors, or PyTorch .pth (read
        /// without running its code).
        #[arg(long)]
        weights: PathBuf,
        /// Input batch, float32 (or float64) N×3×H×W, already normalised.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the N×joints×H/4×W/4 heatmaps: float32, or float64 with
        /// --precision f64.
        #[arg(long)]
        output: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        /// Precision: f32 (CPU or GPU), f16 storage (GPU), or f64 (CPU: the official
        /// model in float64, a float64 input kept as it is).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Prec,
        /// GPU convolution kernels (default: tensor-core for f16, direct for f32).
        #[arg(long, value_enum)]
        kernels: Option<KernelsArg>,
    },
    /// Keypoints for the people in an image (boxes given, or the whole image), or in a
    /// folder of images with a COCO detections file; COCO keypoint results as JSON.
    Pose {
        /// Checkpoint with the official key names: safetensors, or PyTorch .pth (read
        /// without running its code).
        #[arg(long)]
        weights: PathBuf,
        /// An image file, or a folder of images (with --detections).
        #[arg(long)]
        image: PathBuf,
        /// Boxes for the image: JSON [[x, y, w, h], ...] or [{"bbox": [...], "score": s}].
        #[arg(long, conflicts_with_all = ["bbox", "detections"])]
        boxes: Option<PathBuf>,
        /// A box x,y,w,h (repeatable).
        #[arg(long, value_name = "X,Y,W,H", conflicts_with = "detections")]
        bbox: Vec<String>,
        /// COCO detections for a folder of images ([{"image_id", "category_id", "bbox", "score"}]).
        #[arg(long)]
        detections: Option<PathBuf>,
        /// File names by image id ({"images": [{"id", "file_name"}]}, e.g. a COCO annotation
        /// file); default: COCO naming, the id zero-padded to 12 digits.
        #[arg(long, requires = "detections")]
        image_list: Option<PathBuf>,
        /// Detections scoring below this are not run (the official TEST.IMAGE_THRE).
        #[arg(long, value_name = "SCORE", requires = "detections", default_value_t = OFFICIAL_MIN_DETECTION_SCORE)]
        min_score: f64,
        /// The people of a folder of images from an annotation file: COCO keypoint
        /// annotations, whose boxes are taken as the official evaluation takes them with
        /// TEST.USE_GT_BBOX (cleaned, score 1) and whose "images" list names the files; or
        /// MPII's (annot/valid.json: [{"image", "center", "scale"}]), each person cropped as
        /// the official MPII code crops it and written in the file's order.
        #[arg(long, conflicts_with_all = ["detections", "boxes", "bbox", "image_list"])]
        annotations: Option<PathBuf>,
        /// Where to run.
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
        /// Precision: f64 (CPU, the default there: the official pipeline with its model in
        /// float64, flip test and peaks in f64 too, so that no rounding decides a
        /// maximum), f32 (CPU, twice as fast; the default on the GPU) or f16 storage (GPU).
        #[arg(long, value_enum)]
        precision: Option<Prec>,
        /// Turn the flip test off.
        #[arg(long)]
        no_flip: bool,
        /// OKS non-maximum suppression per image, as the official evaluation applies it
        /// before writing its results (0.9 there): of people whose keypoints overlap more
        /// than this, only the best-scored is kept, and each image's people come best first.
        #[arg(long, value_name = "THRESHOLD")]
        oks_nms: Option<f64>,
        /// Crops per network call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// CPU threads that decode the images and cut the crops (default: as many as the
        /// process may run at once); the results do not depend on it.
        #[arg(long)]
        threads: Option<usize>,
        /// Input size HEIGHTxWIDTH (default: the one an official file name states, as in
        /// pose_hrnet_w48_384x288.pth; else the dataset's official one, 256x192 for COCO).
        #[arg(long)]
        input_size: Option<String>,
        /// Where to write the COCO keypoint results (JSON); for MPII's annotations, JSON
        /// or, named *.mat, the official pred.mat.
        #[arg(long)]
        output: PathBuf,
        /// Draw the poses: a PNG file (one image) or a folder of PNGs (a folder of images).
        #[arg(long)]
        draw: Option<PathBuf>,
    },
    /// Time the CUDA engine: device time of the whole network per batch size and precision
    /// (CUDA-event medians after warm-up), images/s and device memory; JSON lines, the
    /// same fields as scripts/peer_pytorch.py --time prints for PyTorch.
    Bench {
        /// Preset (seeded random weights) unless --weights is given.
        #[arg(long, default_value = "w32-256x192")]
        model: String,
        /// A checkpoint to time instead.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Precisions, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,f16")]
        precision: Vec<Prec>,
        /// Convolution kernels, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "direct,tensor-core"
        )]
        kernels: Vec<KernelsArg>,
        /// Split K of the tensor-core convolutions that give too few tiles to fill the GPU,
        /// comma-separated to time both (`on,off`); no effect on the direct kernels.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
        split_k: Vec<Switch>,
        /// Copy the tensor-core convolutions' activations through L1 (`on`), from L2 only
        /// (`off`), or time both (`off,on`); no effect on the direct kernels.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
        l1_activations: Vec<Switch>,
        /// Launch the tensor-core convolutions with programmatic stream serialization
        /// (`on`; sm_90 and newer), plainly (`off`), or time both (`off,on`).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
        programmatic_launch: Vec<Switch>,
        /// Run the launches in the smallest tile (32×32: all of batch 1) with the 8-stage
        /// copy pipeline (`on`), the 3-stage one (`off`), or time both (`off,on`).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
        deep_pipeline: Vec<Switch>,
        /// Launch the convolutions of one kernel that could run at once (a module's
        /// branches, block by block) together, one launch where all take the smallest tile
        /// (`on`), each on its own (`off`), or time both (`off,on`).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
        grouped: Vec<Switch>,
        /// Time every exchange unit instead, fused (tensor-core, f16) against the unfused
        /// sequence (conv, BN, ReLU, upsample, add, ReLU as separate kernels).
        #[arg(long)]
        exchange: bool,
        /// Also time each launch of the forward alone (as the forward makes it, repeated
        /// back to back): a JSON line per launch (`"bench": "profile"`: kernel, tile,
        /// multiply-adds, bytes it must move, ms, TFLOP/s, GB/s), then one per kernel and
        /// output shapes (`"profile-class"`) and the launches' sum against the forward's
        /// median (`"profile-total"`).
        #[arg(long, conflicts_with = "exchange")]
        profile: bool,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        batch: Vec<usize>,
        /// Most images per chunk of the front (stem, layer1, transition1) when a batch is
        /// larger; 0 runs every batch whole; comma-separated to time several (`0,8`).
        #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_FRONT_CHUNK])]
        front_chunk: Vec<usize>,
        /// The most streams a forward's launches are spread over (1 to 16): 16 keeps the
        /// longest chain of dependent launches the data's own, 1 puts every launch after
        /// the one before; comma-separated to time several (`16,1`).
        #[arg(long, value_delimiter = ',', default_values_t = [STREAMS])]
        streams: Vec<usize>,
        /// Timed runs per configuration.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// Report the CUDA driver, NVRTC, headers and GPU, compile every kernel and print each
    /// kernel's registers, shared memory, stack frame and spills.
    Doctor {
        /// Target architecture when there is no GPU (e.g. sm_90); default: the GPU's.
        #[arg(long)]
        arch: Option<String>,
        /// Also write each file's machine code as DIR/FILE.SM.cubin (to read with nvdisasm).
        #[arg(long, value_name = "DIR")]
        cubin_dir: Option<PathBuf>,
    },
    /// Print the layer table and the totals (parameters, multiply-adds, convolutions).
    Summary {
        /// A preset: w32-256x192, w32-384x288, w48-256x192, w48-384x288,
        /// w32-256x256-mpii, w48-256x256-mpii, w18-256x192.
        #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
        model: Option<String>,
        /// A checkpoint, whose shapes give the configuration.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Input size HEIGHTxWIDTH (default: the preset's; for a checkpoint, the one its
        /// official file name states, else the dataset's official size).
        #[arg(long)]
        input_size: Option<String>,
        /// Print only the totals.
        #[arg(long)]
        totals: bool,
    },
    /// The main job on an embedded default: seeded random weights, a fresh random batch,
    /// the CPU reference (f32) and, when there is a GPU, the CUDA engine (f32 and f16),
    /// each checked against the same network evaluated in f64.
    Verify {
        /// Preset to verify.
        #[arg(long, default_value = "w32-256x192")]
        model: String,
        /// Images in the random batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Seed of the weights (the input is fresh each run unless --input-seed is given).
        #[arg(long, default_value_t = 2019)]
        seed: u64,
        /// Seed of the input batch.
        #[arg(long)]
        input_seed: Option<u64>,
    },
    /// COCO keypoint AP and AR of a results file against an annotation file, as
    /// pycocotools computes them for the official evaluation; or MPII's PCKh, as the
    /// official MPII evaluation computes it, against its ground truth (a .mat file).
    Evaluate {
        /// COCO keypoint annotation file (person_keypoints_val2017.json), or MPII's
        /// ground truth (annot/gt_valid.mat).
        #[arg(long)]
        annotations: PathBuf,
        /// COCO keypoint results ([{"image_id", "category_id", "keypoints", "score"}]), as
        /// `hrnet pose` or the official code writes them; for MPII, `hrnet pose`'s results
        /// for annot/valid.json, or the official pred.mat.
        #[arg(long)]
        results: PathBuf,
        /// Also write the figures as JSON, by their official names.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Compare heatmaps with reference heatmaps: relative L2 error and argmax agreement.
    Compare {
        /// Heatmaps to check (.npy, N×K×H×W).
        output: PathBuf,
        /// Reference heatmaps (.npy, float64 or float32, same shape).
        reference: PathBuf,
        /// Fail (exit 1) above this relative L2 error or on any argmax disagreement.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
    },
    /// Write a seeded random checkpoint (official key names, calibrated BN statistics).
    InitWeights {
        /// Preset.
        #[arg(long)]
        model: String,
        /// Seed.
        #[arg(long, default_value_t = 2019)]
        seed: u64,
        /// Output .safetensors file.
        #[arg(long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message, without its usage block, on one line.
            let text = e.to_string();
            let words: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see hrnet --help)", words.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Forward {
            weights,
            input,
            output,
            device,
            precision,
            kernels,
        } => {
            forward(
                &weights,
                &input,
                &output,
                run_on(device, precision)?,
                kernels,
            )?;
        }
        Command::Summary {
            model,
            weights,
            input_size,
            totals,
        } => {
            let size = input_size.as_deref().map(parse_size).transpose()?;
            let config = match (model, weights) {
                (Some(name), _) => {
                    let c = HrnetConfig::preset(&name)?;
                    match size {
                        Some((h, w)) => c.with_input(h, w),
                        None => c,
                    }
                }
                (None, Some(path)) => hrnet::Checkpoint::load(&path)?
                    .infer_config(checkpoint_size(input_size.as_deref(), &path)?)?,
                (None, None) => unreachable!("clap requires --model or --weights"),
            };
            let summary = hrnet::Graph::new(&config)?.summary();
            if totals {
                emit(&format!("{}\n{}\n", summary.config, summary.totals()));
            } else {
                emit(&format!("{summary}\n"));
            }
        }
        Command::Verify {
            model,
            batch,
            seed,
            input_seed,
        } => return verify(&model, batch, seed, input_seed),
        Command::Compare {
            output,
            reference,
            tolerance,
        } => {
            let (s_out, out) = npy::read_f64(&output)?;
            let (s_ref, r) = npy::read_f64(&reference)?;
            if s_out != s_ref {
                return Err(Error::Input(format!(
                    "shapes differ: {s_out:?} vs reference {s_ref:?}"
                )));
            }
            let map = s_out.iter().skip(2).product::<usize>();
            let rel = relative_l2(&out, &r).expect("same length");
            let agree = argmax_agreement(&out, &r, map);
            let max_abs = out
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!(
                "relative L2 {rel:.3e}  max |diff| {max_abs:.3e}  argmax agreement {agree:.4}"
            );
            if rel > tolerance || agree < 1.0 {
                println!("FAIL: tolerance {tolerance:.1e}, argmax agreement must be 1");
                return Ok(ExitCode::FAILURE);
            }
            println!("ok: within {tolerance:.1e} with identical argmax");
        }
        Command::Evaluate {
            annotations,
            results,
            output,
        } => {
            let (names, figures): (&[&str], Vec<f64>) = if is_mat(&annotations) {
                let gt = MpiiGroundTruth::load(&annotations)?;
                let preds = if is_mat(&results) {
                    pose::mpii::predictions_from_mat(&results)?
                } else {
                    pose::mpii::predictions(&pose::mpii::load_results(&results)?)
                };
                let e = evaluate_pckh(&gt, &preds)?;
                eprintln!(
                    "{} predictions for the {} people of {}",
                    preds.len(),
                    gt.people,
                    annotations.display()
                );
                let arch = results.file_stem().unwrap_or_default().to_string_lossy();
                emit(&format!("{}\n", e.table(&arch)));
                (&PCKH_NAMES, e.figures.to_vec())
            } else {
                let gt = GroundTruth::load(&annotations)?;
                let results = load_keypoint_results(&results)?;
                let e = evaluate_keypoints(&gt, &results)?;
                eprintln!(
                    "{} results on the {} images of {}",
                    results.len(),
                    gt.images().len(),
                    annotations.display()
                );
                emit(&format!("{}\n", e.summary().join("\n")));
                (&STAT_NAMES, e.stats.to_vec())
            };
            if let Some(path) = output {
                // By their official names, in the official order (NaN as null).
                let figures: Vec<String> = names
                    .iter()
                    .zip(figures)
                    .map(|(name, v)| format!("  {}: {}", Value::from(*name), Value::from(v)))
                    .collect();
                let text = format!("{{\n{}\n}}\n", figures.join(",\n"));
                std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            }
        }
        Command::Doctor { arch, cubin_dir } => doctor(arch, cubin_dir.as_deref())?,
        Command::Bench {
            model,
            weights,
            exchange: true,
            batch,
            runs,
            warmup,
            ..
        } => bench_exchange(&model, weights.as_deref(), &batch, runs.max(1), warmup)?,
        Command::Bench {
            model,
            weights,
            precision,
            kernels,
            split_k,
            l1_activations,
            programmatic_launch,
            deep_pipeline,
            grouped,
            exchange: false,
            profile,
            batch,
            front_chunk,
            streams,
            runs,
            warmup,
        } => bench(
            &bench_model(&model, weights.as_deref())?,
            &precision,
            &kernels,
            &tunings(
                &split_k,
                &l1_activations,
                &programmatic_launch,
                &deep_pipeline,
                &grouped,
            ),
            &batch,
            (&front_chunk, &streams),
            (runs.max(1), warmup, profile),
        )?,
        Command::Pose {
            weights,
            image,
            boxes,
            bbox,
            detections,
            image_list,
            min_score,
            annotations,
            device,
            precision,
            no_flip,
            oks_nms,
            batch,
            threads,
            input_size,
            output,
            draw,
        } => {
            if threads == Some(0) {
                return Err(Error::Input("--threads takes at least 1".into()));
            }
            let threads = threads.unwrap_or_else(hrnet::parallel::available);
            if let Some(t) = oks_nms
                && !(0.0..=1.0).contains(&t)
            {
                return Err(Error::Input(format!(
                    "--oks-nms takes an OKS between 0 and 1, not {t}"
                )));
            }
            if min_score.is_nan() {
                return Err(Error::Input("--min-score takes a number, not NaN".into()));
            }
            let size = checkpoint_size(input_size.as_deref(), &weights)?;
            let model = Model::load(&weights, size)?;
            let joints = model.graph.config.num_joints;
            if oks_nms.is_some() && joints != pose::nms::COCO_SIGMAS_X10.len() {
                return Err(Error::Input(format!(
                    "--oks-nms needs COCO's 17 joints (their OKS sigmas); this model has {joints}"
                )));
            }
            let exact_on_cpu = match device {
                Device::Cpu => Prec::F64,
                Device::Cuda => Prec::F32,
            };
            let device = run_on(device, precision.unwrap_or(exact_on_cpu))?;
            let estimator = PoseEstimator::new(model, device)?
                .with_flip(!no_flip)?
                .with_batch(batch)
                .with_threads(threads);
            let job = PoseJob {
                estimator: &estimator,
                output: &output,
                draw: draw.as_deref(),
                oks_nms,
            };
            return match (detections, annotations) {
                (Some(det), _) => job.coco_folder(
                    &image,
                    &load_detections(det, min_score)?,
                    image_list.map(load_image_list).transpose()?.as_ref(),
                ),
                (None, Some(ann)) => {
                    let text = std::fs::read_to_string(&ann).map_err(|e| Error::io(&ann, e))?;
                    // MPII's annotation files are JSON lists, COCO's are objects.
                    if text.trim_start().starts_with('[') {
                        if oks_nms.is_some() {
                            return Err(Error::Input(
                                "--oks-nms is COCO's last step; MPII's evaluation takes every annotated person".into(),
                            ));
                        }
                        job.mpii_folder(&image, &pose::mpii::parse_annotations(&text, &ann)?)
                    } else {
                        job.coco_folder(
                            &image,
                            &parse_ground_truth(&text, &ann)?,
                            Some(&load_image_list(&ann)?),
                        )
                    }
                }
                (None, None) => job.single(&image, boxes.as_deref(), &bbox),
            };
        }
        Command::InitWeights {
            model,
            seed,
            output,
        } => {
            let config = HrnetConfig::preset(&model)?;
            random_checkpoint(&config, seed)?.save(&output)?;
            eprintln!("wrote {} ({model}, seed {seed})", output.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hrnet forward`: the heatmaps of a normalised .npy batch, written as .npy; on the CPU in
/// f64 the input is read (a float32 file widened) and the heatmaps written in float64.
fn forward(
    weights: &Path,
    input: &Path,
    output: &Path,
    on: pose::Device,
    kernels: Option<KernelsArg>,
) -> Result<()> {
    let model_for = |s: Nchw| {
        if s.c != 3 {
            return Err(Error::Input(format!(
                "input has shape {s}; images need 3 channels (N×3×H×W)"
            )));
        }
        Model::load(weights, Some((s.h, s.w)))
    };
    let (secs, shape, on) = if on == pose::Device::CpuF64 {
        let (s, x) = npy::read_batch_f64(input)?;
        let engine = CpuF64Engine::new(&model_for(s)?);
        let start = Instant::now();
        let maps = engine.forward_wide(s, x)?;
        let secs = start.elapsed().as_secs_f64();
        let shape = Nchw::batch(s.n, engine.graph().output_shape());
        npy::write_f64(output, shape, &maps)?;
        (secs, shape, "cpu (f64)".to_string())
    } else {
        let x = npy::read_tensor(input)?;
        let model = model_for(x.shape())?;
        let start = Instant::now();
        let (maps, on) = match on {
            pose::Device::Cuda(p) => {
                let k = kernels.map_or(Kernels::default_for(p, &model.graph), Kernels::from);
                let mut engine = CudaEngine::on_device(&model, p, k, 0)?;
                let on = format!(
                    "{} ({}, {} kernels)",
                    engine.gpu().name,
                    engine.precision(),
                    engine.kernels()
                );
                (engine.forward(&x)?, on)
            }
            _ => (CpuEngine::new(model).forward(&x)?, "cpu".to_string()),
        };
        let secs = start.elapsed().as_secs_f64();
        npy::write_tensor(output, &maps)?;
        (secs, maps.shape(), on)
    };
    eprintln!(
        "{} -> {} heatmaps {shape} on {on} in {secs:.3} s",
        input.display(),
        output.display(),
    );
    Ok(())
}

/// The input size for a checkpoint: `--input-size` when given, else the one an official
/// file name states (said on stderr, as it decides every crop), else None (the official
/// size for the joint count).
fn checkpoint_size(given: Option<&str>, weights: &Path) -> Result<Option<(usize, usize)>> {
    if let Some(s) = given {
        return parse_size(s).map(Some);
    }
    let named = size_in_name(weights);
    if let Some((h, w)) = named {
        eprintln!(
            "input size {h}x{w}, from the checkpoint's file name (--input-size to choose another)"
        );
    }
    Ok(named)
}

/// Writes to stdout; a closed pipe (`hrnet summary | head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// One engine's row in `verify`: its heatmaps measured against the f64 evaluation.
struct Row {
    device: String,
    precision: &'static str,
    kernels: &'static str,
    secs: f64,
    rel_f64: f64,
    rel_cpu: Option<f64>,
    argmax: f64,
    bound: f64,
    min_argmax: f64,
    /// For the GPU: whether the run with outputs written over their inputs (the
    /// unpoisoned arena) gave the poisoned run's bits.
    in_place_same: bool,
    /// For the GPU at a batch of 2 or more: relative L2 against f64 and argmax agreement
    /// of a run with the front laid out the other way (in chunks, or whole when the
    /// batch is already chunked by default).
    other_front: Option<(f64, f64)>,
}

impl Row {
    /// The f16-storage floor is shown, not judged.
    fn judged(&self) -> bool {
        self.bound.is_finite()
    }

    fn within(&self, rel_f64: f64, argmax: f64) -> bool {
        rel_f64 <= self.bound && argmax >= self.min_argmax
    }

    fn pass(&self) -> bool {
        self.within(self.rel_f64, self.argmax)
            && self.in_place_same
            && self
                .other_front
                .is_none_or(|(rel, argmax)| self.within(rel, argmax))
    }
}

fn verify(preset: &str, batch: usize, seed: u64, input_seed: Option<u64>) -> Result<ExitCode> {
    if batch == 0 {
        return Err(Error::Input("--batch must be at least 1".into()));
    }
    let config = HrnetConfig::preset(preset)?;
    let input_seed = input_seed.unwrap_or_else(rand_seed);
    println!("hrnet verify: {config}");
    println!(
        "weights: seeded random (seed {seed}), input: {batch} random images (seed {input_seed})"
    );
    let start = Instant::now();
    let model = Model::random(&config, seed)?;
    println!(
        "weights generated and calibrated in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let cpu = CpuEngine::new(model.clone());
    let x = Tensor::random_normal(Nchw::batch(batch, model.graph.input_shape()), input_seed);
    let t = Instant::now();
    let reference = cpu.forward_f64(&x)?;
    let t64 = t.elapsed().as_secs_f64();
    let map = {
        let o = model.graph.output_shape();
        o.h * o.w
    };
    let t = Instant::now();
    let cpu_out = cpu.forward(&x)?;
    let mut rows = vec![Row {
        device: "cpu".into(),
        precision: "f32",
        kernels: "-",
        secs: t.elapsed().as_secs_f64(),
        rel_f64: relative_l2(cpu_out.data(), &reference).expect("same shape"),
        rel_cpu: None,
        argmax: argmax_agreement(cpu_out.data(), &reference, map),
        bound: accuracy::CPU_F32,
        min_argmax: 1.0,
        in_place_same: true,
        other_front: None,
    }];
    let t = Instant::now();
    let floor = F16Floor::measure(&cpu, &x, &reference)?;
    rows.push(Row {
        device: "cpu".into(),
        precision: "f16",
        kernels: "storage",
        secs: t.elapsed().as_secs_f64(),
        rel_f64: floor.rel_l2,
        rel_cpu: None,
        argmax: floor.argmax,
        bound: f64::INFINITY,
        min_argmax: 0.0,
        in_place_same: true,
        other_front: None,
    });
    let cpu_wide: Vec<f64> = cpu_out.data().iter().map(|&v| f64::from(v)).collect();
    let mut gpu_note = None;
    let tensor_cores = Kernels::default_for(Precision::F16, &model.graph) == Kernels::TensorCore;
    if !tensor_cores {
        println!("tensor-core kernels skipped: the channel counts are not all multiples of 8");
    }
    for (precision, kernels, bound, min_argmax) in [
        (Precision::F32, Kernels::Direct, accuracy::CUDA_F32, 1.0),
        (Precision::F32, Kernels::TensorCore, accuracy::CUDA_F32, 1.0),
        (
            Precision::F16,
            Kernels::Direct,
            floor.bound(),
            floor.min_argmax(),
        ),
        (
            Precision::F16,
            Kernels::TensorCore,
            floor.bound(),
            floor.min_argmax(),
        ),
    ] {
        if kernels == Kernels::TensorCore && !tensor_cores {
            continue;
        }
        let mut engine = match CudaEngine::on_device(&model, precision, kernels, 0) {
            Ok(e) => e,
            Err(Error::CudaUnavailable(why)) => {
                gpu_note = Some(format!("cuda: skipped, {why}"));
                break;
            }
            Err(e) => return Err(e),
        };
        engine.set_poison(true);
        engine.forward(&x)?; // warm-up: module load, arena allocation
        let t = Instant::now();
        let out = engine.forward(&x)?;
        let secs = t.elapsed().as_secs_f64();
        // The arena as `forward` plans it, block sums written over their inputs.
        engine.set_poison(false);
        let in_place_same = engine.forward(&x)? == out;
        // The front laid out the other way: the whole batch at once where the default
        // runs it in chunks, else in the largest chunks that hold less at this batch
        // (none: it runs whole however chunked).
        let other = match engine.front_chunks(batch) {
            Some((steps, chunk)) => Some((0, steps, chunk)),
            None => (1..batch).rev().find_map(|c| {
                engine.set_front_chunk(c);
                engine.front_chunks(batch).map(|(steps, _)| (c, steps, c))
            }),
        };
        let mut front = String::new();
        let mut other_front = None;
        if let Some((setting, steps, chunk)) = other {
            engine.set_poison(true);
            engine.set_front_chunk(setting);
            let o = engine.forward(&x)?;
            other_front = Some((
                relative_l2(o.data(), &reference).expect("same shape"),
                argmax_agreement(o.data(), &reference, map),
            ));
            front = if setting == 0 {
                format!(
                    "; the front ({steps} steps) runs in chunks of {chunk} images, and once \
                     more over the whole batch, within the same bound"
                )
            } else {
                format!(
                    "; each run once more with the front ({steps} steps) in chunks of \
                     {chunk} images, within the same bound"
                )
            };
        }
        engine.set_front_chunk(DEFAULT_FRONT_CHUNK);
        gpu_note = Some(format!(
            "cuda: {} (sm_{}{}), outputs poisoned with NaN before each launch; each run \
             again unpoisoned (block sums written over their inputs) must give the same \
             bits{front}",
            engine.gpu().name,
            engine.gpu().compute_capability.0,
            engine.gpu().compute_capability.1
        ));
        rows.push(Row {
            device: "cuda".into(),
            precision: if precision == Precision::F32 {
                "f32"
            } else {
                "f16"
            },
            kernels: if kernels == Kernels::Direct {
                "direct"
            } else {
                "tensor-core"
            },
            secs,
            rel_f64: relative_l2(out.data(), &reference).expect("same shape"),
            rel_cpu: relative_l2(out.data(), &cpu_wide),
            argmax: argmax_agreement(out.data(), &reference, map),
            bound,
            min_argmax,
            in_place_same,
            other_front,
        });
    }
    println!();
    println!(
        "{:<6} {:<9} {:<11} {:>10} {:>13} {:>15} {:>8} {:>8}  result",
        "device",
        "precision",
        "kernels",
        "time",
        "rel L2 (f64)",
        "rel L2 (cpu f32)",
        "argmax",
        "bound",
    );
    println!(
        "{:<6} {:<9} {:<11} {:>8.3} s {:>13} {:>15} {:>8} {:>8}",
        "cpu", "f64", "-", t64, "reference", "-", "-", "-"
    );
    for r in &rows {
        println!(
            "{:<6} {:<9} {:<11} {:>8.4} s {:>13.3e} {:>16} {:>8.4} {:>8}  {}",
            r.device,
            r.precision,
            r.kernels,
            r.secs,
            r.rel_f64,
            r.rel_cpu.map_or("-".to_string(), |v| format!("{v:.3e}")),
            r.argmax,
            if r.judged() {
                format!("{:.2e}", r.bound)
            } else {
                "-".into()
            },
            match (r.judged(), r.pass()) {
                (false, _) => "floor",
                (true, true) => "PASS",
                (true, false) if !r.in_place_same => "FAIL: unpoisoned bits differ",
                (true, false) if r.within(r.rel_f64, r.argmax) => "FAIL: front laid out again",
                (true, false) => "FAIL",
            }
        );
    }
    println!(
        "f16 storage alone moves this network {:.3e} from f64 (argmax {:.4}): an f16 engine \
         passes within {:.2e}\n(the larger of {:.0e} and {}x the floor) with argmax agreement \
         at least {:.4}",
        floor.rel_l2,
        floor.argmax,
        floor.bound(),
        accuracy::CUDA_F16,
        accuracy::F16_FLOOR_FACTOR,
        floor.min_argmax()
    );
    if let Some(note) = gpu_note {
        println!("{note}");
    }
    let pass = rows.iter().all(Row::pass);
    println!();
    println!(
        "{}: relative L2 against the network in f64 within each bound{}",
        if pass { "PASS" } else { "FAIL" },
        if pass { "" } else { " is required" }
    );
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench_model(preset: &str, weights: Option<&std::path::Path>) -> Result<Model> {
    match weights {
        Some(w) => Model::load(w, None),
        None => Model::random(&HrnetConfig::preset(preset)?, 2019),
    }
}

/// `hrnet bench --exchange`: one JSON line per exchange-unit output branch and batch, then
/// the totals over all units.
fn bench_exchange(
    preset: &str,
    weights: Option<&std::path::Path>,
    batches: &[usize],
    runs: usize,
    warmup: usize,
) -> Result<()> {
    let model = bench_model(preset, weights)?;
    let name = model.graph.config.name.clone();
    let gpu = gpus()?.remove(0).name;
    for &n in batches {
        let units = hrnet::cuda::time_exchange_units(&model, n, warmup, runs)?;
        for u in &units {
            println!(
                "{{\"engine\": \"hrnet\", \"bench\": \"exchange\", \"config\": \"{name}\", \"unit\": \"{}\", \"batch\": {n}, \"fused_ms\": {:.5}, \"unfused_ms\": {:.5}, \"fused_launches\": {}, \"unfused_launches\": {}, \"rel_l2\": {:.2e}, \"gpu\": \"{gpu}\", \"runs\": {runs}}}",
                u.name, u.fused_ms, u.unfused_ms, u.fused_launches, u.unfused_launches, u.rel_l2
            );
        }
        let fused: f64 = units.iter().map(|u| u.fused_ms).sum();
        let unfused: f64 = units.iter().map(|u| u.unfused_ms).sum();
        println!(
            "{{\"engine\": \"hrnet\", \"bench\": \"exchange-total\", \"config\": \"{name}\", \"units\": {}, \"batch\": {n}, \"fused_ms\": {fused:.5}, \"unfused_ms\": {unfused:.5}, \"speedup\": {:.3}, \"gpu\": \"{gpu}\"}}",
            units.len(),
            unfused / fused
        );
    }
    Ok(())
}

/// Every combination of the tensor-core switches asked for.
fn tunings(
    split_k: &[Switch],
    l1: &[Switch],
    programmatic: &[Switch],
    deep: &[Switch],
    grouped: &[Switch],
) -> Vec<TcTuning> {
    type Set = fn(&mut TcTuning, bool);
    let fields: [(&[Switch], Set); 5] = [
        (split_k, |t, on| t.split_k = on),
        (l1, |t, on| t.l1_activations = on),
        (programmatic, |t, on| t.programmatic_launch = on),
        (deep, |t, on| t.deep_pipeline = on),
        (grouped, |t, on| t.grouped = on),
    ];
    fields
        .iter()
        .fold(vec![TcTuning::default()], |all, &(switches, set)| {
            all.iter()
                .flat_map(|&t| {
                    switches.iter().map(move |&s| {
                        let mut t = t;
                        set(&mut t, s == Switch::On);
                        t
                    })
                })
                .collect()
        })
}

/// `hrnet bench`: one JSON line per configuration, front chunk, stream count and batch,
/// each followed by the forward's profile when asked (`runs`: timed, warm-up, profile).
fn bench(
    model: &Model,
    precisions: &[Prec],
    kernels: &[KernelsArg],
    tunings: &[TcTuning],
    batches: &[usize],
    (front_chunks, streams): (&[usize], &[usize]),
    (runs, warmup, profile): (usize, usize, bool),
) -> Result<()> {
    if batches.contains(&0) {
        return Err(Error::Input("batch sizes must be at least 1".into()));
    }
    if let Some(&s) = streams.iter().find(|&&s| !(1..=STREAMS).contains(&s)) {
        return Err(Error::Input(format!(
            "--streams {s}: a forward runs on 1 to {STREAMS} streams"
        )));
    }
    let name = model.graph.config.name.clone();
    let tensor_cores = Kernels::default_for(Precision::F16, &model.graph) == Kernels::TensorCore;
    let mut configs = Vec::new();
    for &p in precisions {
        for &k in kernels {
            if k == KernelsArg::TensorCore && !tensor_cores {
                eprintln!(
                    "{name}: tensor-core kernels skipped (its channel counts are not all multiples of 8)"
                );
                continue;
            }
            // The tuning applies to the tensor-core kernels only.
            if k == KernelsArg::TensorCore {
                configs.extend(tunings.iter().map(|&t| (p, k, Some(t))));
            } else {
                configs.push((p, k, None));
            }
        }
    }
    for (p, k, tuning) in configs {
        let mut engine = CudaEngine::on_device(model, p.try_into()?, k.into(), 0)?;
        if let Some(t) = tuning {
            engine.set_tuning(t);
        }
        let t = tuning.unwrap_or(TcTuning {
            split_k: false,
            l1_activations: false,
            programmatic_launch: false,
            deep_pipeline: false,
            grouped: false,
        });
        for (&chunk, &k, &n) in front_chunks.iter().flat_map(|c| {
            streams
                .iter()
                .flat_map(move |k| batches.iter().map(move |n| (c, k, n)))
        }) {
            engine.set_front_chunk(chunk);
            engine.set_streams(k);
            let x = Tensor::random_normal(Nchw::batch(n, model.graph.input_shape()), rand_seed());
            let mut ms = engine.time(&x, warmup, runs)?;
            ms.sort_by(f64::total_cmp);
            let median = ms[ms.len() / 2];
            // Host to host, as a caller of `forward` waits: the input's copy and layout,
            // the network, the heatmaps' copy back and widening to f32.
            let mut wall = (0..runs.clamp(1, 20))
                .map(|_| {
                    let t = std::time::Instant::now();
                    engine.forward(&x).map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<Vec<f64>>>()?;
            wall.sort_by(f64::total_cmp);
            let forward = wall[wall.len() / 2];
            let mib = (engine.weight_bytes() + engine.arena_bytes()) as f64 / 1048576.0;
            let (launches, path) = engine.launches(n);
            // The chunk the front ran in at this batch (0: the whole batch at once).
            let chunked = engine.front_chunks(n).map_or(0, |(_, c)| c);
            // What every line of this configuration and batch says.
            let tags = format!(
                "\"engine\": \"hrnet\", \"config\": \"{name}\", \"precision\": \"{}\", \"kernels\": \"{}\", \"split_k\": {}, \"l1_activations\": {}, \"programmatic_launch\": {}, \"deep_pipeline\": {}, \"grouped\": {}, \"graphs\": {}, \"front_chunk\": {chunk}, \"front_chunked\": {chunked}, \"streams\": {k}, \"batch\": {n}, \"gpu\": \"{}\"",
                engine.precision(),
                engine.kernels(),
                t.split_k,
                t.l1_activations,
                t.programmatic_launch,
                t.deep_pipeline,
                t.grouped,
                engine.graph_fallback().is_none(),
                engine.gpu().name
            );
            println!(
                "{{{tags}, \"split_k_launches\": {}, \"launches\": {launches}, \"critical_path\": {path}, \"median_ms\": {median:.5}, \"forward_ms\": {forward:.4}, \"images_per_s\": {:.1}, \"peak_mib\": {mib:.1}, \"runs\": {runs}}}",
                engine.split_k_launches(n),
                n as f64 * 1000.0 / median,
            );
            if profile {
                // 20 back to back: the graph's own replay a small share of each run.
                let launches = engine.profile(&x, 20, runs.min(20))?;
                print_profile(&tags, &launches, median);
            }
        }
    }
    Ok(())
}

/// `hrnet bench --profile`'s lines for one configuration and batch (`tags`, the fields
/// they share): each launch, then per kernel and output shapes, then the total against
/// the forward's median `forward_ms`.
fn print_profile(tags: &str, launches: &[hrnet::cuda::LaunchProfile], forward_ms: f64) {
    use serde_json::json;
    let line = |fields: Value| {
        let body = fields.to_string();
        println!("{{{tags}, {}", &body[1..]);
    };
    let mut classes: Vec<(String, f64, u64, u64, usize)> = Vec::new();
    for (i, l) in launches.iter().enumerate() {
        let outputs: Vec<String> = l.outputs.iter().map(ToString::to_string).collect();
        let (tile, splits, blocks) = l.tiles.map_or((Value::Null, 1, Value::Null), |t| {
            (
                json!(format!("{}x{}", t.tile.0, t.tile.1)),
                t.splits,
                json!(t.blocks),
            )
        });
        line(json!({
            "bench": "profile", "launch": i, "steps": l.steps.join(" "),
            "outputs": outputs.join(" "), "kernel": l.kernel, "images": l.images,
            "kernels": l.kernels, "tile": tile, "splits": splits, "blocks": blocks,
            "multiply_adds": l.multiply_adds, "bytes": l.bytes, "ms": l.ms,
            "tflops": l.tflops(), "gb_per_s": l.gb_per_s(),
        }));
        let class = format!("{} {}", l.kernel, outputs.join(" "));
        match classes.iter_mut().find(|c| c.0 == class) {
            Some(c) => {
                (c.1, c.2, c.3, c.4) = (c.1 + l.ms, c.2 + l.multiply_adds, c.3 + l.bytes, c.4 + 1)
            }
            None => classes.push((class, l.ms, l.multiply_adds, l.bytes, 1)),
        }
    }
    classes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = launches.iter().map(|l| l.ms).sum();
    for (class, ms, macs, bytes, count) in classes {
        line(json!({
            "bench": "profile-class", "class": class, "launches": count, "ms": ms,
            "share": ms / total, "tflops": 2.0 * macs as f64 / (ms * 1e9),
            "gb_per_s": bytes as f64 / (ms * 1e6),
        }));
    }
    let macs: u64 = launches.iter().map(|l| l.multiply_adds).sum();
    let bytes: u64 = launches.iter().map(|l| l.bytes).sum();
    line(json!({
        "bench": "profile-total", "launches": launches.len(), "launches_ms": total,
        "forward_ms": forward_ms, "tflops": 2.0 * macs as f64 / (total * 1e9),
        "gb_per_s": bytes as f64 / (total * 1e6),
    }));
}

fn doctor(arch: Option<String>, cubin_dir: Option<&std::path::Path>) -> Result<()> {
    println!(
        "driver   {}",
        if probe::driver_present() {
            "libcuda.so loadable"
        } else {
            "libcuda.so not found"
        }
    );
    let gpu = match gpus() {
        Ok(list) => {
            for g in &list {
                println!(
                    "gpu {}    {}, compute capability {}.{}, {} SMs, {:.1} GiB, driver CUDA {}.{}",
                    g.ordinal,
                    g.name,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.multiprocessors,
                    g.memory as f64 / (1u64 << 30) as f64,
                    g.driver_version / 1000,
                    g.driver_version % 1000 / 10
                );
            }
            list.into_iter().next()
        }
        Err(e) => {
            println!("gpu      none ({e})");
            None
        }
    };
    let (major, minor) = probe::nvrtc_version()?;
    let lib = probe::nvrtc_location().map_or("found by the system loader".into(), |p| {
        p.display().to_string()
    });
    println!("nvrtc    {major}.{minor}, {lib}");
    let h = probe::headers()?;
    println!("headers  {} (via {})", h.include.display(), h.via);
    let arch = match (arch, &gpu) {
        (Some(a), _) => a,
        (None, Some(g)) => g.arch(),
        (None, None) => {
            return Err(Error::CudaUnavailable(
                "no GPU to compile for: give --arch, e.g. --arch sm_90".into(),
            ));
        }
    };
    let start = Instant::now();
    let files = compiled(&arch)?;
    let cached = files.iter().filter(|f| f.cached).count();
    println!(
        "cache    {}",
        hrnet::cuda::cache::dir().map_or_else(
            || format!("off ({} is off)", hrnet::cuda::cache::ENV),
            |d| format!(
                "{} ({cached} of {} programs from it)",
                d.display(),
                files.len()
            )
        )
    );
    let secs = start.elapsed().as_secs_f64();
    if cached == files.len() {
        // What NVRTC made for the same source, options, compiler and headers: say so, and
        // how to see NVRTC compile them here.
        println!(
            "loaded   {} kernel programs for {arch} from the cache in {secs:.2} s \
             ({}=off compiles them afresh)",
            files.len(),
            hrnet::cuda::cache::ENV
        );
    } else {
        println!(
            "compiled {} kernel programs for {arch} in {secs:.2} s",
            files.len() - cached
        );
    }
    println!();
    // As wide as the longest kernel name (the tensor-core ones run to 34 characters).
    let wide = files
        .iter()
        .flat_map(|f| f.kernels.iter().map(|k| k.name.len()))
        .max()
        .unwrap_or(0)
        .max("kernel".len());
    println!(
        "{:<16} {:<wide$} {:>9} {:>12} {:>12} {:>13} {:>12}",
        "program", "kernel", "registers", "shared (B)", "stack (B)", "spill st (B)", "spill ld (B)"
    );
    for f in files.iter() {
        for k in &f.kernels {
            println!(
                "{:<16} {:<wide$} {:>9} {:>12} {:>12} {:>13} {:>12}",
                f.name(),
                k.name,
                k.registers,
                k.shared,
                k.stack,
                k.spill_stores,
                k.spill_loads
            );
        }
        if let Some(dir) = cubin_dir {
            let path = dir.join(format!("{}.{arch}.cubin", f.name()));
            std::fs::write(&path, &f.cubin).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// `hrnet pose`: one image with its boxes, or a folder with a detections file. A bad image
/// or box is reported on its own line and the rest still processed; the exit code says
/// whether anything failed.
struct PoseJob<'a> {
    estimator: &'a PoseEstimator,
    output: &'a std::path::Path,
    draw: Option<&'a std::path::Path>,
    oks_nms: Option<f64>,
}

/// The poses found in one image, by the image's index in the job.
type ImagePoses = (usize, Vec<pose::Pose>);

/// Images decoded together (on every core) and handed to the network together (their
/// boxes share batches).
const IMAGES_PER_STEP: usize = 32;

impl PoseJob<'_> {
    /// Keeps the people that can be cropped from the image; reports the others.
    fn usable<P: Person + Copy>(
        image: &image::RgbImage,
        people: &[P],
        name: &str,
        failures: &mut usize,
    ) -> Vec<P> {
        people
            .iter()
            .filter(|p| match p.check(image.width(), image.height()) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    *failures += 1;
                    false
                }
            })
            .copied()
            .collect()
    }

    fn draw_to(
        &self,
        path: &std::path::Path,
        image: &image::RgbImage,
        poses: &[pose::Pose],
    ) -> Result<()> {
        draw_poses(image, poses, self.estimator.joints())
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| Error::Image {
                path: path.to_path_buf(),
                reason: format!("cannot write the drawing ({e})"),
            })
    }

    /// One image's poses after `--oks-nms`, best first; all of them, in box order, without.
    fn suppress(&self, poses: Vec<pose::Pose>) -> Result<Vec<pose::Pose>> {
        let Some(t) = self.oks_nms else {
            return Ok(poses);
        };
        Ok(pose::nms::oks_nms(&poses, t)?
            .into_iter()
            .map(|i| poses[i].clone())
            .collect())
    }

    /// Writes the results (JSON) and reports; the exit code says whether anything failed.
    fn finish<R: serde::Serialize>(&self, results: &[R], failures: usize) -> Result<ExitCode> {
        write_results(self.output, results)?;
        self.report(results.len(), failures)
    }

    fn report(&self, people: usize, failures: usize) -> Result<ExitCode> {
        eprintln!(
            "wrote {people} people to {} (network on {})",
            self.output.display(),
            self.estimator.device()
        );
        if failures > 0 {
            eprintln!("error: {failures} image(s) or box(es) could not be processed (see above)");
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn single(
        &self,
        path: &std::path::Path,
        boxes: Option<&std::path::Path>,
        bbox: &[String],
    ) -> Result<ExitCode> {
        let image = load_image(path)?;
        let given = match boxes {
            Some(file) => load_boxes(file)?,
            None if bbox.is_empty() => vec![PersonBox::whole(&image)],
            None => bbox.iter().map(|b| parse_bbox(b)).collect::<Result<_>>()?,
        };
        let mut failures = 0;
        let name = path.display().to_string();
        let usable = Self::usable(&image, &given, &name, &mut failures);
        let poses = self.suppress(self.estimator.estimate(&image, &usable)?)?;
        let id = image_id(path);
        let results: Vec<CocoResult> = poses.iter().map(|p| CocoResult::new(id, p)).collect();
        if let Some(d) = self.draw {
            self.draw_to(d, &image, &poses)?;
        }
        self.finish(&results, failures)
    }

    /// A folder of images with the people of each image (boxes from detections or ground
    /// truth, or MPII's crops), images in the given order, each found by `locate`. The
    /// poses of every image that could be read, by its index in `images`, and the count of
    /// images and people that could not be processed (each reported on its own line).
    fn folder<K: std::fmt::Display + Sync, P: Person + Copy + Sync>(
        &self,
        dir: &std::path::Path,
        images: &[(K, Vec<P>)],
        locate: impl Fn(&K) -> Result<PathBuf> + Sync,
    ) -> Result<(Vec<ImagePoses>, usize)> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{} is not a folder; --detections and --annotations need a folder of images",
                dir.display()
            )));
        }
        if let Some(d) = self.draw {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let bar = indicatif::ProgressBar::new(images.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let (mut found, mut failures) = (Vec::new(), 0usize);
        for (first, step) in (0..)
            .step_by(IMAGES_PER_STEP)
            .zip(images.chunks(IMAGES_PER_STEP))
        {
            let read = hrnet::parallel::map(
                step.iter().collect(),
                self.estimator.threads(),
                |(key, _)| locate(key).and_then(|p| load_image(&p).map(|img| (p, img))),
            );
            let mut loaded = Vec::with_capacity(step.len());
            for ((i, (key, people)), read) in (first..).zip(step).zip(read) {
                match read {
                    Ok((path, img)) => {
                        let people =
                            Self::usable(&img, people, &path.display().to_string(), &mut failures);
                        loaded.push((i, path, img, people));
                    }
                    Err(e) => {
                        bar.suspend(|| eprintln!("error: image {key}: {e}"));
                        failures += 1;
                    }
                }
            }
            let items: Vec<(&image::RgbImage, &[P])> = loaded
                .iter()
                .map(|(_, _, img, p)| (img, p.as_slice()))
                .collect();
            let poses = self.estimator.estimate_many(&items)?;
            for ((i, path, img, _), poses) in loaded.iter().zip(poses) {
                let poses = self.suppress(poses)?;
                if let Some(d) = self.draw {
                    let stem = path
                        .file_stem()
                        .map_or_else(|| i.to_string(), |s| s.to_string_lossy().into_owned());
                    self.draw_to(&d.join(format!("{stem}.png")), img, &poses)?;
                }
                found.push((*i, poses));
            }
            bar.inc(step.len() as u64);
        }
        bar.finish_and_clear();
        Ok((found, failures))
    }

    /// [`PoseJob::folder`] for COCO: boxes by image id, files from `list` or COCO's naming.
    fn coco_folder(
        &self,
        dir: &std::path::Path,
        dets: &[(u64, Vec<PersonBox>)],
        list: Option<&std::collections::BTreeMap<u64, String>>,
    ) -> Result<ExitCode> {
        let (found, failures) = self.folder(dir, dets, |id| find_image(dir, *id, list))?;
        let results: Vec<CocoResult> = found
            .iter()
            .flat_map(|(i, poses)| poses.iter().map(|p| CocoResult::new(dets[*i].0, p)))
            .collect();
        self.finish(&results, failures)
    }

    /// [`PoseJob::folder`] for an MPII annotation file: one result per person, in the
    /// file's order (each image read once).
    fn mpii_folder(&self, dir: &std::path::Path, people: &[MpiiPerson]) -> Result<ExitCode> {
        let groups = pose::mpii::by_image(people);
        let images: Vec<(&str, Vec<pose::affine::Crop>)> = groups
            .iter()
            .map(|g| (g.image.as_str(), g.crops.clone()))
            .collect();
        let (found, failures) = self.folder(dir, &images, |name| Ok(dir.join(name)))?;
        // Back in the file's order (crops that parsed are never refused, so each image
        // that was read has all its people).
        let mut placed: Vec<Option<MpiiResult>> = vec![None; people.len()];
        for (i, poses) in &found {
            let g = &groups[*i];
            for (&at, p) in g.indices.iter().zip(poses) {
                placed[at] = Some(MpiiResult::new(&g.image, p));
            }
        }
        let results: Vec<MpiiResult> = placed.into_iter().flatten().collect();
        if is_mat(self.output) {
            // The official pred.mat.
            pose::mpii::save_predictions(self.output, &results)?;
            return self.report(results.len(), failures);
        }
        self.finish(&results, failures)
    }
}

/// Whether a path names a MAT-file (MPII's ground truth and `pred.mat`).
fn is_mat(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mat"))
}

/// The COCO id in a file name like `000000000785.jpg`, else 0.
fn image_id(path: &std::path::Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A seed that differs between runs.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
        .unwrap_or(0x5eed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_listed_in_help_exist() {
        for p in hrnet::config::PRESETS {
            HrnetConfig::preset(p).unwrap();
        }
        Cli::try_parse_from(["hrnet", "summary", "--model", "w32-256x192"]).unwrap();
        assert!(Cli::try_parse_from(["hrnet", "summary"]).is_err());
        assert!(Cli::try_parse_from(["hrnet", "forward", "--device", "tpu"]).is_err());
        assert!(Cli::try_parse_from(["hrnet", "doctor", "--arch", "sm_90"]).is_ok());
        assert!(Cli::try_parse_from(["hrnet", "bench", "--profile", "--batch", "1,64"]).is_ok());
        assert!(Cli::try_parse_from(["hrnet", "bench", "--profile", "--exchange"]).is_err());
    }

    #[test]
    fn bench_times_every_combination_of_the_switches() {
        use Switch::{Off, On};
        let all = tunings(&[On, Off], &[Off], &[Off, On], &[On], &[Off, On]);
        assert_eq!(all.len(), 8);
        for split_k in [true, false] {
            for programmatic_launch in [false, true] {
                for grouped in [false, true] {
                    let t = TcTuning {
                        split_k,
                        l1_activations: false,
                        programmatic_launch,
                        deep_pipeline: true,
                        grouped,
                    };
                    assert_eq!(all.iter().filter(|&&x| x == t).count(), 1, "{t}");
                }
            }
        }
        assert_eq!(
            tunings(&[On], &[Off], &[Off], &[Off], &[Off]),
            [TcTuning::default()]
        );
    }
}
