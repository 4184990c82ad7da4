//! Every kernel compiles to sm_90 machine code with NVRTC (no GPU needed), with no
//! local-memory spills, and what the kernel cache gives back is what NVRTC makes.
//! scripts/test installs NVRTC 13.0 from PyPI when CUDA is absent and sets
//! HRNET_REQUIRE_NVRTC=1, so in CI this test runs rather than skips.

mod common;

use hrnet::cuda::compile::parts;
use hrnet::cuda::{compile_fresh, compiled, kernel_files, probe};

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
    let files = compile_fresh("sm_90").unwrap_or_else(|e| panic!("{e}"));
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
    // Through the kernel cache (HRNET_KERNEL_CACHE, target/kernel-cache under
    // scripts/test, where the emulated engine's processes have filled it by now): the same
    // machine code and report. Then compiled once per process: the second call is the same.
    let through = compiled("sm_90").unwrap();
    let cached = through.iter().filter(|f| f.cached).count();
    println!(
        "kernel cache {:?}: {cached} of {} programs from it",
        hrnet::cuda::cache::dir(),
        through.len()
    );
    for (fresh, kept) in files.iter().zip(through.iter()) {
        assert_eq!(fresh.name(), kept.name());
        assert!(
            fresh.cubin == kept.cubin,
            "{}: the cache's machine code differs",
            kept.name()
        );
        assert_eq!(fresh.kernels, kept.kernels, "{}", kept.name());
    }
    assert!(std::sync::Arc::ptr_eq(
        &through,
        &compiled("sm_90").unwrap()
    ));
}
