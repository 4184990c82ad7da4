//! kernels/conv_tc.cu run on the CPU: tests/emulate/conv_tc_host.cpp compiles the kernel
//! source with host stand-ins for its PTX instructions (a 32-lane warp emulator following
//! the PTX ISA's ldmatrix and mma.m16n8k16 f16 and bf16 fragment layouts, and
//! cvt.rn.bf16x2's rounding, cp.async copies that land at once or only at their wait, at
//! random, each block's threads taking turns in an order drawn afresh, each block
//! finding its shared memory filled with NaN, and threads waiting at different barriers or
//! warp-wide instructions at once stopping the run) and checks every tile and kernel
//! shape of both element types, the 3- and 8-stage pipelines, several summed sources,
//! upsampled terms, split K and NCHW output against a direct convolution in double (f16
//! within 2e-3, f32 within 2e-7), and every tile of a type against the first on the same
//! operands, bit for bit. It catches indexing, fragment-layout, pipeline-ordering,
//! uninitialised shared-memory and divergent-barrier mistakes without a GPU; timing and
//! the real instructions are the GPU parity tests' job.
//! Needs a C++20 compiler (`CXX`, else `c++`); scripts/test makes it mandatory
//! (HRNET_REQUIRE_CXX=1).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn tensor_core_kernel_matches_a_direct_conv_under_warp_emulation() {
    let name = "tensor_core_kernel_matches_a_direct_conv_under_warp_emulation";
    if !common::cxx_or_skip(name) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let exe = tmp.join("conv_tc_host");
    let kernels = tmp.join("conv_tc_host-kernels");
    let marked = common::emulated_kernels(&kernels).expect("kernels/ copied for the emulator");
    assert!(marked > 0, "no __shared__ declaration found in kernels/");
    let built = Command::new(common::cxx())
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(&kernels)
        .arg("-I")
        .arg(root.join("tests/emulate"))
        .arg(root.join("tests/emulate/conv_tc_host.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("the C++ compiler runs");
    assert!(
        built.status.success(),
        "compiling the emulator failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().expect("the emulator runs");
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    assert!(
        run.status.success(),
        "the emulated kernel disagrees:\n{out}"
    );
    assert!(
        out.contains("ok   scheduler: a missing barrier shows"),
        "{out}"
    );
    let poisoned = out
        .lines()
        .find_map(|l| l.strip_prefix("shared memory: "))
        .and_then(|l| l.split(' ').next()?.parse::<u32>().ok());
    assert!(
        poisoned.is_some_and(|n| n > 0),
        "no shared memory was poisoned:\n{out}"
    );
    assert!(out.contains("PASS: 0 of 189 cases failed"), "{out}");
    // Synccheck's kind of error stops the emulation, naming both places.
    for check in ["divergent-barrier", "divergent-warp"] {
        let run = Command::new(&exe)
            .arg(check)
            .output()
            .expect("the emulator runs");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && err.contains("in divergent code: threads wait at"),
            "{check}: the emulator did not stop\n{}{err}",
            String::from_utf8_lossy(&run.stdout)
        );
        println!("ok   {check}: {}", err.trim());
    }
}
