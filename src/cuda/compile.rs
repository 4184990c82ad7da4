//! Compiling the embedded kernel files with NVRTC to CUBIN for one architecture, once
//! per process, and reading back what ptxas reports for each kernel.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use super::probe::{Headers, headers, require_nvrtc};
use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Every kernel file as `(stem, source)`; `common.cuh` is compiled in front of each.
#[must_use]
pub fn kernel_files() -> &'static [(&'static str, &'static str)] {
    embedded::KERNEL_FILES
}

/// What ptxas reports for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelInfo {
    /// The kernel's C name, e.g. `conv_k3s1_f16`.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared: u32,
    /// Stack frame per thread, bytes.
    pub stack: u32,
    /// Bytes spilled to local memory.
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
}

/// One kernel file compiled for one architecture.
#[derive(Clone, Debug)]
pub struct CompiledFile {
    /// The file's stem (`conv` for kernels/conv.cu).
    pub file: &'static str,
    /// The target, e.g. `sm_90`.
    pub arch: String,
    /// Machine code for that target.
    pub cubin: Vec<u8>,
    /// Per-kernel resource usage.
    pub kernels: Vec<KernelInfo>,
    /// NVRTC's full log (with ptxas's report).
    pub log: String,
}

/// NVRTC options: the target, the headers, line info for compute-sanitizer, and
/// ptxas's verbose resource report.
fn options(arch: &str, h: &Headers) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", h.include.display()),
        "--std=c++17".into(),
        "--generate-line-info".into(),
        "--ptxas-options=-v".into(),
    ]
}

fn nvrtc_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        what: what.to_string(),
        reason: format!("{e:?}"),
    }
}

fn cstr_lossy(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles one kernel file (with `common.cuh` in front) for `arch` (e.g. `sm_90`).
pub fn compile_file(file: &'static str, source: &str, arch: &str) -> Result<CompiledFile> {
    require_nvrtc()?;
    let h = headers()?;
    let text = format!("{}\n#line 1 \"{file}.cu\"\n{source}", embedded::COMMON);
    let src = CString::new(text).map_err(|_| nvrtc_err("kernel source", "NUL byte"))?;
    let name =
        CString::new(format!("{file}.cu")).map_err(|_| nvrtc_err("kernel name", "NUL byte"))?;
    let prog = nvrtc::create_program(&src, Some(name.as_c_str()))
        .map_err(|e| nvrtc_err("nvrtcCreateProgram", e))?;
    // SAFETY: `prog` was just created and is destroyed exactly once, below, after its last use.
    let compiled = unsafe { nvrtc::compile_program(prog, &options(arch, &h)) };
    // SAFETY: as above; the log is readable whether or not compilation succeeded.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| cstr_lossy(&l))
        .unwrap_or_default();
    let cubin = compiled.map_err(|_| Error::KernelCompile {
        file: file.to_string(),
        arch: arch.to_string(),
        log: log.trim().to_string(),
    });
    let cubin = cubin.and_then(|()| {
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully; the out-pointer is valid for writes.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetCUBINSize", e))?;
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported for this program's CUBIN.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| nvrtc_err("nvrtcGetCUBIN", e))?;
        Ok(buf)
    });
    // SAFETY: `prog` is not used after this.
    unsafe { nvrtc::destroy_program(prog) }.map_err(|e| nvrtc_err("nvrtcDestroyProgram", e))?;
    Ok(CompiledFile {
        file,
        arch: arch.to_string(),
        cubin: cubin?,
        kernels: parse_ptxas(&log),
        log,
    })
}

/// Reads ptxas's `-v` report: per kernel, "Function properties for NAME" followed by the
/// stack/spill line, and "Compiling entry function 'NAME'" followed by the
/// "Used N registers ... M bytes smem" line.
#[must_use]
pub fn parse_ptxas(log: &str) -> Vec<KernelInfo> {
    fn number_before(line: &str, unit: &str) -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    }
    let mut kernels: Vec<KernelInfo> = Vec::new();
    let mut current: Option<usize> = None;
    let slot = |kernels: &mut Vec<KernelInfo>, name: &str| -> usize {
        match kernels.iter().position(|k| k.name == name) {
            Some(i) => i,
            None => {
                kernels.push(KernelInfo {
                    name: name.to_string(),
                    ..KernelInfo::default()
                });
                kernels.len() - 1
            }
        }
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            current = Some(slot(&mut kernels, name));
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(slot(&mut kernels, rest.trim()));
        } else if let Some(i) = current {
            let k = &mut kernels[i];
            if line.contains("stack frame") {
                k.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    kernels.retain(|k| k.name.ends_with("_f32") || k.name.ends_with("_f16"));
    kernels
}

/// Every kernel file compiled for `arch`, compiled on first use and then shared for the
/// rest of the process.
pub fn compiled(arch: &str) -> Result<Arc<Vec<CompiledFile>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<CompiledFile>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(arch) {
        return Ok(hit.clone());
    }
    // One NVRTC program per file, compiled side by side (NVRTC is thread-safe across
    // programs): the first GPU call of a process waits for the slowest file, not the sum.
    let files: Vec<CompiledFile> = std::thread::scope(|scope| {
        let jobs: Vec<_> = kernel_files()
            .iter()
            .map(|&(file, source)| scope.spawn(move || compile_file(file, source, arch)))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| {
                    Err(nvrtc_err(
                        "compiling the kernels",
                        "a compiler thread panicked",
                    ))
                })
            })
            .collect::<Result<_>>()
    })?;
    let files = Arc::new(files);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(arch.to_string(), files.clone());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'conv_k3s1_f16' for 'sm_90'\n\
            ptxas info    : Function properties for conv_k3s1_f16\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 64 registers, used 1 barriers, 20256 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'fill_nan_f32' for 'sm_90'\n\
            ptxas info    : Function properties for fill_nan_f32\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 8 registers, used 0 barriers, 372 bytes cmem[0]\n";
        let k = parse_ptxas(log);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KernelInfo {
                name: "conv_k3s1_f16".into(),
                registers: 64,
                shared: 20256,
                stack: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!((k[1].registers, k[1].shared, k[1].stack), (8, 0, 0));
    }

    #[test]
    fn every_kernel_file_is_embedded() {
        let names: Vec<&str> = kernel_files().iter().map(|f| f.0).collect();
        for f in [
            "argmax",
            "bn_relu",
            "conv",
            "conv_tc",
            "exchange",
            "fill",
            "flip_merge",
            "unfused",
        ] {
            assert!(names.contains(&f), "{f}");
        }
        assert!(embedded::COMMON.contains("HRNET_F32_F16"));
    }
}
