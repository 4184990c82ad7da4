//! Compiling the embedded kernel files with NVRTC to CUBIN for one architecture, once
//! per process (and, through [`super::cache`], once per machine), and reading back what
//! ptxas reports for each kernel. A file that defines `HRNET_PARTS n` is compiled as n
//! programs side by side, `HRNET_PART` set to 0..n in each, so that its compile time is
//! spread over the cores.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use super::cache;
use super::probe::{headers, nvrtc_version, require_nvrtc};
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

/// One kernel file (or one part of it) compiled for one architecture.
#[derive(Clone, Debug)]
pub struct CompiledFile {
    /// The file's stem (`conv` for kernels/conv.cu).
    pub file: &'static str,
    /// Which of the file's `HRNET_PARTS` programs, for a file compiled in parts.
    pub part: Option<u32>,
    /// Whether the machine code came from the kernel cache rather than NVRTC.
    pub cached: bool,
    /// The target, e.g. `sm_90`.
    pub arch: String,
    /// Machine code for that target.
    pub cubin: Vec<u8>,
    /// Per-kernel resource usage.
    pub kernels: Vec<KernelInfo>,
    /// NVRTC's full log (with ptxas's report).
    pub log: String,
}

impl CompiledFile {
    /// The program's name: the file's stem, and its part if it has parts (`conv_tc.2`).
    #[must_use]
    pub fn name(&self) -> String {
        program_name(self.file, self.part)
    }
}

fn program_name(file: &str, part: Option<u32>) -> String {
    part.map_or_else(|| file.to_string(), |p| format!("{file}.{p}"))
}

/// How many programs a kernel file is compiled as: its `#define HRNET_PARTS n`, else 1.
#[must_use]
pub fn parts(source: &str) -> u32 {
    source
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define HRNET_PARTS "))
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// NVRTC options: the target, line info for compute-sanitizer, ptxas's verbose resource
/// report, the part, and last the headers (the only option that names a place on this
/// machine, and so the only one the kernel cache does not compare).
fn options(arch: &str, part: Option<u32>, include: &Path) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--generate-line-info".into(),
        "--ptxas-options=-v".into(),
    ];
    o.extend(part.map(|p| format!("-DHRNET_PART={p}")));
    o.push(format!("--include-path={}", include.display()));
    o
}

/// The program NVRTC compiles for a file: `common.cuh`, then the file.
fn program_text(file: &str, source: &str) -> String {
    format!("{}\n#line 1 \"{file}.cu\"\n{source}", embedded::COMMON)
}

/// A checksum of the CUDA headers the kernels include (`common.cuh` includes
/// `cuda_fp16.h`, which includes `cuda_fp16.hpp`), once per process.
fn header_checksum(include: &Path) -> u32 {
    static SUM: OnceLock<u32> = OnceLock::new();
    *SUM.get_or_init(|| {
        let mut h = crc32fast::Hasher::new();
        for name in ["cuda_fp16.h", "cuda_fp16.hpp"] {
            h.update(name.as_bytes());
            h.update(&std::fs::read(include.join(name)).unwrap_or_default());
        }
        h.finalize()
    })
}

/// What a program's machine code is made from, as the kernel cache compares it.
fn material(text: &str, options: &[String], include: &Path) -> Result<Vec<u8>> {
    let (major, minor) = nvrtc_version()?;
    let mut m = format!(
        "nvrtc {major}.{minor}\nheaders {:08x}\n",
        header_checksum(include)
    );
    for o in &options[..options.len() - 1] {
        m.push_str(o);
        m.push('\n');
    }
    m.push_str(text);
    Ok(m.into_bytes())
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

/// Compiles one kernel file (with `common.cuh` in front), or one part of it, for `arch`
/// (e.g. `sm_90`) with NVRTC.
pub fn compile_file(
    file: &'static str,
    source: &str,
    part: Option<u32>,
    arch: &str,
) -> Result<CompiledFile> {
    require_nvrtc()?;
    let h = headers()?;
    let src = CString::new(program_text(file, source))
        .map_err(|_| nvrtc_err("kernel source", "NUL byte"))?;
    let name =
        CString::new(format!("{file}.cu")).map_err(|_| nvrtc_err("kernel name", "NUL byte"))?;
    let prog = nvrtc::create_program(&src, Some(name.as_c_str()))
        .map_err(|e| nvrtc_err("nvrtcCreateProgram", e))?;
    // SAFETY: `prog` was just created and is destroyed exactly once, below, after its last use.
    let compiled = unsafe { nvrtc::compile_program(prog, &options(arch, part, &h.include)) };
    // SAFETY: as above; the log is readable whether or not compilation succeeded.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| cstr_lossy(&l))
        .unwrap_or_default();
    let cubin = compiled.map_err(|_| Error::KernelCompile {
        file: program_name(file, part),
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
        part,
        cached: false,
        arch: arch.to_string(),
        cubin: cubin?,
        kernels: parse_ptxas(&log),
        log,
    })
}

/// [`compile_file`] through the kernel cache: the stored machine code if an entry holds
/// this very program, else NVRTC's, then stored (a folder that cannot be written to only
/// means the next process compiles again).
fn compile_cached(
    file: &'static str,
    source: &str,
    part: Option<u32>,
    arch: &str,
) -> Result<CompiledFile> {
    let Some(dir) = cache::dir() else {
        return compile_file(file, source, part, arch);
    };
    let h = headers()?;
    let material = material(
        &program_text(file, source),
        &options(arch, part, &h.include),
        &h.include,
    )?;
    let name = program_name(file, part);
    if let Some((cubin, log)) = cache::load(&dir, &name, arch, &material) {
        return Ok(CompiledFile {
            file,
            part,
            cached: true,
            arch: arch.to_string(),
            cubin,
            kernels: parse_ptxas(&log),
            log,
        });
    }
    let compiled = compile_file(file, source, part, arch)?;
    let _ = cache::store(&dir, &name, arch, &material, &compiled.cubin, &compiled.log);
    Ok(compiled)
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

/// Every kernel program (each file, or each part of one) compiled for `arch` on first use,
/// through the kernel cache, and then shared for the rest of the process.
pub fn compiled(arch: &str) -> Result<Arc<Vec<CompiledFile>>> {
    static COMPILED: OnceLock<Mutex<HashMap<String, Arc<Vec<CompiledFile>>>>> = OnceLock::new();
    let done = COMPILED.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = done.lock().unwrap_or_else(|p| p.into_inner()).get(arch) {
        return Ok(hit.clone());
    }
    let files = Arc::new(compile_all(arch)?);
    done.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(arch.to_string(), files.clone());
    Ok(files)
}

/// One NVRTC program per file or part, through the kernel cache, compiled side by side
/// (NVRTC is thread-safe across programs): the first GPU call of a process waits for the
/// slowest program, not the sum.
fn compile_all(arch: &str) -> Result<Vec<CompiledFile>> {
    let programs: Vec<(&'static str, &'static str, Option<u32>)> = kernel_files()
        .iter()
        .flat_map(|&(file, source)| match parts(source) {
            1 => vec![(file, source, None)],
            n => (0..n).map(|p| (file, source, Some(p))).collect(),
        })
        .collect();
    std::thread::scope(|scope| {
        let jobs: Vec<_> = programs
            .iter()
            .map(|&(file, source, part)| {
                scope.spawn(move || compile_cached(file, source, part, arch))
            })
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
            .collect()
    })
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
            "input",
            "unfused",
        ] {
            assert!(names.contains(&f), "{f}");
        }
        assert!(embedded::COMMON.contains("HRNET_F32_F16"));
    }

    #[test]
    fn files_name_their_parts() {
        assert_eq!(parts("__global__ void k() {}"), 1);
        assert_eq!(parts("// x\n#define HRNET_PARTS 6\n"), 6);
        assert_eq!(parts("#define HRNET_PARTS 0\n"), 1);
        let tc = kernel_files().iter().find(|f| f.0 == "conv_tc").unwrap().1;
        assert!(parts(tc) > 1, "conv_tc.cu is compiled in parts");
        assert_eq!(program_name("conv_tc", Some(2)), "conv_tc.2");
        assert_eq!(program_name("conv", None), "conv");
    }
}
