//! Finding the CUDA pieces without touching them first: cudarc loads the driver and NVRTC
//! lazily and panics when a library is missing, so every path into CUDA asks here first.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Whether `libcuda.so` (the NVIDIA driver) can be loaded.
#[must_use]
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names; calls nothing in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether `libnvrtc.so` can be loaded.
#[must_use]
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its known names; calls nothing in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Fails with an actionable message unless NVRTC can be loaded.
pub fn require_nvrtc() -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(Error::CudaUnavailable(
            "NVRTC (libnvrtc.so) not found: install the CUDA toolkit or \
             `pip install nvidia-cuda-nvrtc==13.0.88` and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// The NVRTC version, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the two out-pointers are valid for writes.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| Error::Cuda {
        what: "nvrtcVersion".into(),
        reason: format!("{e:?}"),
    })?;
    Ok((major, minor))
}

/// Where the CUDA headers (`include/cuda_fp16.h`) were found, and through which setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    /// The `include` folder passed to NVRTC.
    pub include: PathBuf,
    /// `CUDA_HOME`, `CUDA_PATH` or `/usr/local/cuda`.
    pub via: &'static str,
}

/// Finds the CUDA headers through `CUDA_HOME`, then `CUDA_PATH`, then `/usr/local/cuda`.
pub fn headers() -> Result<Headers> {
    let mut tried = Vec::new();
    let candidates = [
        (
            "CUDA_HOME",
            std::env::var_os("CUDA_HOME").map(PathBuf::from),
        ),
        (
            "CUDA_PATH",
            std::env::var_os("CUDA_PATH").map(PathBuf::from),
        ),
        ("/usr/local/cuda", Some(PathBuf::from("/usr/local/cuda"))),
    ];
    for (via, root) in candidates {
        let Some(root) = root else { continue };
        let include = root.join("include");
        if include.join("cuda_fp16.h").is_file() {
            return Ok(Headers { include, via });
        }
        tried.push(format!("{via}={}", root.display()));
    }
    Err(Error::CudaUnavailable(format!(
        "CUDA headers (include/cuda_fp16.h) not found; tried {}. Set CUDA_HOME to the CUDA \
         toolkit (or to nvidia/cu13 of `pip install nvidia-cuda-runtime==13.0.96`)",
        if tried.is_empty() {
            "nothing".to_string()
        } else {
            tried.join(", ")
        }
    )))
}

/// The first `libnvrtc.so*` on `LD_LIBRARY_PATH` or in the usual folders, for reports.
#[must_use]
pub fn nvrtc_location() -> Option<PathBuf> {
    let from_env = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let dirs = from_env
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"].map(PathBuf::from));
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(&d) {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_nvrtc(p))
                .collect();
            names.sort();
            if let Some(p) = names.into_iter().next() {
                return Some(p);
            }
        }
    }
    None
}

fn is_nvrtc(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libnvrtc.so"))
}

/// What a GPU is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total memory in bytes.
    pub memory: usize,
    /// Driver version, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    /// Streaming multiprocessors (132 on an H200 SXM): what the conv tile choice fills.
    pub multiprocessors: usize,
}

impl GpuInfo {
    /// The NVRTC target for this GPU, e.g. `sm_90`.
    #[must_use]
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

pub(crate) fn driver_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda {
        what: what.to_string(),
        reason: format!("{e:?}"),
    }
}

/// The GPUs present. Errors (never panics) when the driver is missing or reports none.
pub fn gpus() -> Result<Vec<GpuInfo>> {
    if !driver_present() {
        return Err(Error::CudaUnavailable(
            "no NVIDIA driver (libcuda.so) found: this machine has no usable GPU; use --device cpu"
                .into(),
        ));
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        Error::CudaUnavailable(format!(
            "the NVIDIA driver reports an error ({e:?}); use --device cpu"
        ))
    })?;
    if count <= 0 {
        return Err(Error::CudaUnavailable(
            "the NVIDIA driver reports no GPU; use --device cpu".into(),
        ));
    }
    let mut version = 0;
    // SAFETY: the driver library is loaded (checked above) and initialised by device_count;
    // the out-pointer is valid for writes.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(driver_err("cuDriverGetVersion"))?;
    (0..count as usize)
        .map(|ordinal| {
            let ctx = cudarc::driver::CudaContext::new(ordinal)
                .map_err(driver_err("creating a context"))?;
            Ok(GpuInfo {
                ordinal,
                name: ctx.name().map_err(driver_err("cuDeviceGetName"))?,
                compute_capability: ctx
                    .compute_capability()
                    .map_err(driver_err("compute capability"))?,
                memory: ctx.total_mem().map_err(driver_err("cuDeviceTotalMem"))?,
                driver_version: version,
                multiprocessors: ctx
                    .attribute(
                        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    )
                    .map_err(driver_err("the multiprocessor count"))?
                    .max(1) as usize,
            })
        })
        .collect()
}
