//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod parity;

use std::path::{Path, PathBuf};

use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::{Model, Nchw, Tensor, npy};

/// The committed test data: tests/data, or `HRNET_TEST_DATA` (for test binaries carried
/// to another machine).
pub fn test_data() -> PathBuf {
    std::env::var_os("HRNET_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"))
}

/// The committed case made by `scripts/official_case.py` from the official model.
pub fn official_tiny() -> PathBuf {
    test_data().join("official-tiny")
}

/// A fresh, empty directory for one test's files.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hrnet-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Relative L2 error and argmax agreement of `out` against float64 `reference` heatmaps.
pub fn compare(out: &Tensor, reference: &Path) -> (f64, f64) {
    compare_values(out.data(), out.shape(), reference)
}

/// [`compare`] for heatmaps of `shape` in any float type.
pub fn compare_values<T: Copy + Into<f64> + PartialOrd>(
    out: &[T],
    shape: Nchw,
    reference: &Path,
) -> (f64, f64) {
    let (dims, r) = npy::read_f64(reference).unwrap();
    assert_eq!(dims, shape.dims().to_vec(), "heatmap shape");
    let map = dims[2] * dims[3];
    (
        relative_l2(out, &r).unwrap(),
        argmax_agreement(out, &r, map),
    )
}

/// Loads `weights` for the input size of `input`.
pub fn load_for(weights: &Path, input: &Tensor) -> Model {
    let s = input.shape();
    Model::load(weights, Some((s.h, s.w))).unwrap()
}

/// Prints one skip line that shows even when the test passes (libtest captures `println!`
/// and `eprintln!` of passing tests, but not direct writes to the stderr handle).
pub fn skip(test: &str, why: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether a GPU can be used; prints the skip line for `test` when not, and fails instead
/// under `HRNET_REQUIRE_GPU` (set by scripts/device-validate, where a skip would hide a
/// broken driver setup behind a pass).
pub fn gpu_or_skip(test: &str) -> bool {
    match hrnet::cuda::gpus() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("HRNET_REQUIRE_GPU").is_none(),
                "HRNET_REQUIRE_GPU is set but: {e}"
            );
            skip(test, &e);
            false
        }
    }
}

/// The C++ compiler the host emulations build with: `CXX`, else `c++`.
pub fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Whether the C++ compiler runs; if not, fails under `HRNET_REQUIRE_CXX` (as in CI), else
/// prints the skip line for `test`.
pub fn cxx_or_skip(test: &str) -> bool {
    if std::process::Command::new(cxx())
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    let why = format!("no C++ compiler ({})", cxx());
    assert!(
        std::env::var_os("HRNET_REQUIRE_CXX").is_none(),
        "HRNET_REQUIRE_CXX is set but there is {why}"
    );
    skip(test, &why);
    false
}

/// kernels/ as the host emulators (tests/emulate) compile it, copied into `dir`: each
/// `__shared__` declaration followed on its line by `HRNET_SHARED_FRESH(name);`, which
/// fills the array with 0xff bytes as each block starts (tests/emulate/device.h), and each
/// file opened with a `#line` naming the original, so diagnostics point there. Returns how
/// many declarations it marked, or what it could not read or mark.
pub fn emulated_kernels(dir: &Path) -> Result<usize, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut marked = 0;
    let entries = std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = format!("#line 1 \"{}\"\n", path.display());
        for (n, line) in text.lines().enumerate() {
            out.push_str(line);
            if line.trim_start().starts_with("__shared__") {
                let name = shared_name(line).ok_or_else(|| {
                    format!(
                        "{}:{}: a __shared__ declaration not on one line: {line}",
                        path.display(),
                        n + 1
                    )
                })?;
                out.push_str(&format!(" HRNET_SHARED_FRESH({name});"));
                marked += 1;
            } else if line
                .split("//")
                .next()
                .is_some_and(|code| code.contains("__shared__"))
            {
                return Err(format!(
                    "{}:{}: __shared__ not at the start of a declaration: {line}",
                    path.display(),
                    n + 1
                ));
            }
            out.push('\n');
        }
        let to = dir.join(path.file_name().expect("a file in kernels/"));
        std::fs::write(&to, out).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(marked)
}

/// The name a one-line `__shared__` declaration declares: the last word before its first
/// `[` (an array) or its `;` (a comment may follow).
fn shared_name(line: &str) -> Option<&str> {
    let decl = line.split("//").next()?.trim_end().strip_suffix(';')?;
    let head = decl.split('[').next()?.trim_end();
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &head[start..];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && !head.contains('='))
        .then_some(name)
}

/// The COCO sample photographs and their files: `../shared/data/coco-sample`, or
/// `HRNET_COCO_SAMPLE` (for test binaries carried to another machine); None when absent.
pub fn coco_sample() -> Option<PathBuf> {
    let dir = std::env::var_os("HRNET_COCO_SAMPLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco-sample")
        });
    dir.join("test_coco_det_AP_H_56.json")
        .is_file()
        .then_some(dir)
}

/// The COCO sample folder, or one skip line for `test` and None.
pub fn sample_or_skip(test: &str) -> Option<PathBuf> {
    let sample = coco_sample();
    if sample.is_none() {
        skip(test, &"../shared/data/coco-sample not found");
    }
    sample
}
