//! Embeds the CUDA kernel sources (kernels/*.cu and common.cuh) into the crate, so the
//! binary carries them and NVRTC compiles them at run time for the GPU's own architecture.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
        .map(|e| e.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// Every kernel file: (stem, source).\npub const KERNEL_FILES: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 kernel file name");
        writeln!(
            out,
            "    ({stem:?}, include_str!({:?})),",
            f.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let common = dir.join("common.cuh");
    println!("cargo:rerun-if-changed={}", common.display());
    writeln!(
        out,
        "/// Helpers compiled in front of every kernel file.\npub const COMMON: &str = include_str!({:?});",
        common.display().to_string()
    )
    .unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
