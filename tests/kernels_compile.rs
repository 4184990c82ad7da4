//! Every kernel compiles to sm_90 machine code with NVRTC (no GPU needed), with no
//! local-memory spills, and what the kernel cache gives back is what NVRTC makes.
//! scripts/test installs NVRTC 13.0 from PyPI when CUDA is absent and sets
//! HRNET_REQUIRE_NVRTC=1, so in CI this test runs rather than skips.
//!
//! The programs are checked as every process gets them, through the kernel cache: an entry
//! is used only for byte-identical source, options, headers and NVRTC version, so it is
//! NVRTC's output for this very program (under scripts/test the first test to need the
//! kernels, `hrnet doctor` in tests/cli.rs, has just compiled them all into a fresh cache).
//! Then one program of each file is compiled again now and must equal what the cache gave:
//! the whole set again would take a minute on two cores, each of the tensor-core kernel's
//! larger parts 14 to 16 s.

mod common;

use hrnet::cuda::compile::{compile_file, parts};
use hrnet::cuda::{compiled, kernel_files, probe};

#[test]
fn every_kernel_compiles_for_sm90_without_spills() {
    if !probe::nvrtc_present() || probe::headers().is_err() {
        let why = probe::require_nvrtc()
            .and_then(|()| probe::headers().map(|_| ()))
            .unwrap_err();
        assert!(
            std::env::var_os("HRNET_REQUIRE_NVRTC").is_none(),
            "HRNET_REQUIRE_NVRTC is set but: {why}"
        );
        common::skip("every_kernel_compiles_for_sm90_without_spills", &why);
        return;
    }
    let (major, minor) = probe::nvrtc_version().unwrap();
    let h = probe::headers().unwrap();
    println!(
        "NVRTC {major}.{minor}, headers {} (via {})",
        h.include.display(),
        h.via
    );
    let files = compiled("sm_90").unwrap_or_else(|e| panic!("{e}"));
    let cached = files.iter().filter(|f| f.cached).count();
    println!(
        "kernel cache {:?}: {cached} of {} programs from it",
        hrnet::cuda::cache::dir(),
        files.len()
    );
    let programs: u32 = kernel_files().iter().map(|(_, s)| parts(s)).sum();
    assert_eq!(files.len(), programs as usize);
    let mut kernels = 0;
    for f in files.iter() {
        assert!(f.cubin.len() > 100, "{}: no machine code", f.file);
        // A CUBIN is an ELF file.
        assert_eq!(&f.cubin[..4], b"\x7fELF", "{}", f.file);
        assert!(
            !f.kernels.is_empty(),
            "{}: ptxas reported no kernels:\n{}",
            f.file,
            f.log
        );
        for k in &f.kernels {
            println!(
                "{:<18} {:>3} regs {:>6} B smem {:>4} B stack {:>4} B spill",
                k.name, k.registers, k.shared, k.stack, k.spill_stores
            );
            assert_eq!(
                (k.spill_stores, k.spill_loads),
                (0, 0),
                "{} spills to local memory",
                k.name
            );
            assert_eq!(k.stack, 0, "{} uses a stack frame", k.name);
            kernels += 1;
        }
    }
    // conv (3 shapes), exchange (NCHW, NHWC), bn_relu, argmax, flip_merge, fill_nan,
    // input_layout, input_pad, upsample_nhwc, add, relu, each in f32 and f16; conv_tc (3
    // shapes × 5 tiles in f16, × 2 tiles in f32, and each type's deep 32×32 and grouped
    // 32×32, 3-stage and deep).
    assert_eq!(kernels, 2 * 14 + 3 * (5 + 2 + 2 + 4));
    // NVRTC now against what the cache gave (or NVRTC made, with no entry): each file's
    // program, a file in parts by its last part (conv_tc's f32 1×1 kernels), side by side.
    let sources = kernel_files();
    let again: Vec<_> = files
        .iter()
        .filter_map(|kept| {
            let source = sources.iter().find(|(f, _)| *f == kept.file).unwrap().1;
            let last = kept.part.is_none_or(|p| p + 1 == parts(source));
            last.then_some((kept, source))
        })
        .collect();
    assert_eq!(again.len(), sources.len());
    std::thread::scope(|scope| {
        for (kept, source) in again {
            scope.spawn(move || {
                let fresh = compile_file(kept.file, source, kept.part, "sm_90").unwrap();
                assert!(
                    fresh.cubin == kept.cubin,
                    "{}: the cache's machine code differs from NVRTC's",
                    kept.name()
                );
                assert_eq!(fresh.kernels, kept.kernels, "{}", kept.name());
            });
        }
    });
    // Compiled once per process: the second call is the same.
    assert!(std::sync::Arc::ptr_eq(&files, &compiled("sm_90").unwrap()));
}
