//! The CUDA backend: hand-written kernels (kernels/*.cu) compiled at run time by NVRTC
//! for the GPU's own architecture, and the executor that runs the graph with them.
//! Everything here checks for the driver, NVRTC and a GPU before its first CUDA call.

pub mod cache;
pub mod compile;
mod engine;
mod exchange_bench;
mod gpu;
mod ops;
pub mod probe;
mod schedule;
mod tc;

pub use compile::{CompiledFile, KernelInfo, compiled, kernel_files};
pub use engine::{CudaEngine, DEFAULT_FRONT_CHUNK, Kernels, LaunchProfile, Precision};
pub use exchange_bench::{ExchangeTiming, time_exchange_units};
pub use gpu::GpuElem;
pub use ops::{CudaOps, TcSource};
pub use probe::{GpuInfo, Headers, gpus, headers};
pub use schedule::STREAMS;
pub use tc::{TcTuning, Tiles};
