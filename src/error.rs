//! The library's one error type: every failure a caller can cause or meet.

use std::path::PathBuf;

/// Everything that can go wrong in hrnet. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The configuration cannot describe an official HRNet.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No preset has this name.
    #[error("unknown model '{name}'; the presets are: {known}")]
    UnknownPreset {
        /// What was asked for.
        name: String,
        /// The preset names.
        known: String,
    },
    /// The checkpoint file is neither a readable safetensors file nor a readable PyTorch
    /// checkpoint.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("checkpoint is missing tensor '{key}' (expected shape {expected:?}){more}")]
    MissingTensor {
        /// Its official key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// ", and N more" when several are missing.
        more: String,
    },
    /// The checkpoint holds a tensor this model has no place for.
    #[error("checkpoint has unexpected tensor '{key}' of shape {shape:?}{more}")]
    UnexpectedTensor {
        /// Its key.
        key: String,
        /// Its shape.
        shape: Vec<usize>,
        /// ", and N more" when there are several.
        more: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Its key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor's element type cannot be used.
    #[error("tensor '{key}' has dtype {dtype}; weights must be F32, F16, BF16 or F64{extra}")]
    Dtype {
        /// Its key.
        key: String,
        /// The dtype in the file.
        dtype: String,
        /// Further detail.
        extra: String,
    },
    /// A value that must be finite is NaN or infinite, or a variance is negative.
    #[error("{what}")]
    NonFinite {
        /// Where, and what was found.
        what: String,
    },
    /// The input tensor does not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// CUDA cannot be used here: no driver, no NVRTC, no GPU or no CUDA headers.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A kernel file did not compile.
    #[error("kernel {file}.cu did not compile for {arch}: {log}")]
    KernelCompile {
        /// The kernel file's stem.
        file: String,
        /// The target, e.g. `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// The GPU has too little free memory for what was asked.
    #[error(
        "out of GPU memory: {what} needs {:.1} MiB, {:.1} MiB are free on the GPU; use a smaller batch",
        *needed as f64 / 1048576.0,
        *available as f64 / 1048576.0
    )]
    OutOfMemory {
        /// What needed it.
        what: String,
        /// Bytes needed.
        needed: usize,
        /// Bytes free when it was asked for.
        available: usize,
    },
    /// A CUDA call failed.
    #[error("CUDA error in {what}: {reason}")]
    Cuda {
        /// What was being done.
        what: String,
        /// What the driver said.
        reason: String,
    },
    /// An image could not be decoded or written.
    #[error("{}: {reason}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A JSON file (boxes, detections, image list) could not be parsed.
    #[error("{}: {reason}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A MAT-file could not be read, or lacks what was looked for in it.
    #[error("{}: {reason}", path.display())]
    Mat {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An .npy file could not be read or written as float32 NCHW.
    #[error("{}: {reason}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// ", and N more" for a list of which only the first is named.
pub(crate) fn and_more(total: usize) -> String {
    if total > 1 {
        format!(", and {} more", total - 1)
    } else {
        String::new()
    }
}
