//! hrnet: an inference engine for HRNet pose estimation (Sun et al., CVPR 2019).
//!
//! The network is built once from an [`HrnetConfig`] into an explicit [`Graph`], loaded
//! from an official checkpoint (safetensors or PyTorch `.pth`, official key names) into a
//! [`Model`] with every BN folded, and executed by a backend: [`cpu::CpuEngine`] is the
//! reference.
//!
//! ```
//! use hrnet::{CpuEngine, HrnetConfig, Model, Nchw, Tensor};
//!
//! // A reduced-width network with seeded random weights; `Model::load("w.pth", None)`
//! // reads an official checkpoint instead.
//! let mut config = HrnetConfig::official("tiny", 8, 17, 64, 64);
//! config.stages[1].modules = 1;
//! config.stages[2].modules = 1;
//! let model = Model::random(&config, 7)?;
//! let engine = CpuEngine::new(model);
//! let images = Tensor::random_normal(Nchw { n: 2, c: 3, h: 64, w: 64 }, 1);
//! let heatmaps = engine.forward(&images)?;
//! assert_eq!(heatmaps.shape(), Nchw { n: 2, c: 17, h: 16, w: 16 });
//! # Ok::<(), hrnet::Error>(())
//! ```

pub mod accuracy;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod decode;
pub mod error;
pub mod graph;
pub mod matfile;
pub mod npy;
pub mod parallel;
pub mod pose;
pub mod tensor;
pub mod weights;

pub use config::HrnetConfig;
pub use cpu::{CpuEngine, CpuF64Engine};
pub use error::{Error, Result};
pub use graph::Graph;
/// The `image` crate, whose `RgbImage` the pose API takes.
pub use image;
pub use tensor::{Nchw, Tensor};
pub use weights::{Checkpoint, Model};
