//! The `hrnet` command line, run as a user would.

mod common;

use std::process::{Command, Output};

use common::{compare, official_tiny, scratch};
use hrnet::{Nchw, Tensor, npy};

fn hrnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrnet"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure: non-zero exit, one line on stderr that says `what`.
fn fails_with(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "'{what}' not in: {err}");
}

#[test]
fn summary_prints_the_official_totals() {
    for (preset, params, macs) in [
        ("w32-256x192", "28,536,113", "7,645,003,776"),
        ("w48-384x288", "63,595,745", "35,306,606,592"),
        ("w32-256x256-mpii", "28,536,080", "10,193,207,296"),
    ] {
        let o = hrnet(&["summary", "--model", preset]);
        assert!(o.status.success());
        let text = stdout(&o);
        assert!(text.contains(&format!("params        {params}")), "{text}");
        assert!(text.contains(&format!("conv mult-adds {macs} per image")));
        assert!(text.contains("convolutions  293"));
        assert!(text.contains("stage4.2.fuse.0"), "the layer table");
    }
    let o = hrnet(&[
        "summary",
        "--weights",
        official_tiny()
            .join("weights.safetensors")
            .to_str()
            .unwrap(),
        "--totals",
    ]);
    assert!(stdout(&o).contains("W4 COCO (17 joints)"), "{}", stdout(&o));
    // An official model-zoo name states the input size, which then decides the crops.
    let named = scratch("cli-named").join("pose_hrnet_w4_384x288.safetensors");
    std::fs::copy(official_tiny().join("weights.safetensors"), &named).unwrap();
    let named = named.to_str().unwrap();
    let o = hrnet(&["summary", "--weights", named, "--totals"]);
    assert!(stdout(&o).contains("W4 384x288 input"), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("input size 384x288, from the checkpoint's file name")
    );
    let o = hrnet(&[
        "summary",
        "--weights",
        named,
        "--input-size",
        "128x96",
        "--totals",
    ]);
    assert!(
        stdout(&o).contains("W4 128x96 input") && o.stderr.is_empty(),
        "{}",
        stdout(&o)
    );
}

#[test]
fn forward_reproduces_the_official_heatmaps() {
    let dir = official_tiny();
    let out = scratch("cli-forward").join("heatmaps.npy");
    let o = hrnet(&[
        "forward",
        "--weights",
        dir.join("weights.safetensors").to_str().unwrap(),
        "--input",
        dir.join("input.npy").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rel, agree) = compare(
        &npy::read_tensor(&out).unwrap(),
        &dir.join("heatmaps_f64.npy"),
    );
    assert!(rel < 1e-4 && agree == 1.0, "{rel:e} {agree}");
    let o = hrnet(&[
        "compare",
        out.to_str().unwrap(),
        dir.join("heatmaps_f64.npy").to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && stdout(&o).contains("argmax agreement 1.0000"),
        "{}",
        stdout(&o)
    );
}

/// `--precision f64` on the CPU: the official model in float64, float64 heatmaps written;
/// f16 on the CPU and f64 on the GPU are refused in one line.
#[test]
fn forward_in_f64_writes_the_official_float64_heatmaps() {
    let dir = official_tiny();
    let out = scratch("cli-forward-f64").join("heatmaps.npy");
    let (w, x, o) = (
        dir.join("weights.safetensors"),
        dir.join("input.npy"),
        out.to_str().unwrap().to_string(),
    );
    let args = |precision: &'static str, device: &'static str| {
        [
            "forward",
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            &o,
            "--precision",
            precision,
            "--device",
            device,
        ]
        .map(String::from)
    };
    let run = |a: [String; 11]| hrnet(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let done = run(args("f64", "cpu"));
    assert!(
        done.status.success() && String::from_utf8_lossy(&done.stderr).contains("on cpu (f64)"),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let reference = dir.join("heatmaps_f64.npy");
    let o = hrnet(&[
        "compare",
        &o,
        reference.to_str().unwrap(),
        "--tolerance",
        "1e-12",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    fails_with(&run(args("f16", "cpu")), "the CPU runs f32 or f64");
    fails_with(&run(args("f64", "cuda")), "f64 runs on the CPU only");
}

#[test]
fn bad_input_gives_one_line_and_a_failing_exit() {
    let dir = official_tiny();
    let tmp = scratch("cli-errors");
    let weights = dir.join("weights.safetensors");
    let w = weights.to_str().unwrap();
    let out = tmp.join("o.npy");
    let o = out.to_str().unwrap();
    let write = |name: &str, shape: Nchw| {
        let p = tmp.join(name);
        npy::write_tensor(&p, &Tensor::random_normal(shape, 1)).unwrap();
        p.to_str().unwrap().to_string()
    };

    let odd = write(
        "odd.npy",
        Nchw {
            n: 1,
            c: 3,
            h: 100,
            w: 64,
        },
    );
    fails_with(
        &hrnet(&["forward", "--weights", w, "--input", &odd, "--output", o]),
        "multiple of 32",
    );
    let gray = write(
        "gray.npy",
        Nchw {
            n: 1,
            c: 1,
            h: 96,
            w: 64,
        },
    );
    fails_with(
        &hrnet(&["forward", "--weights", w, "--input", &gray, "--output", o]),
        "3 channels",
    );
    let good = dir.join("input.npy");
    let good = good.to_str().unwrap();
    fails_with(
        &hrnet(&[
            "forward",
            "--weights",
            "/no/such.safetensors",
            "--input",
            good,
            "--output",
            o,
        ]),
        "No such file",
    );
    let junk = tmp.join("junk.safetensors");
    std::fs::write(&junk, b"\x08\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    fails_with(
        &hrnet(&[
            "forward",
            "--weights",
            junk.to_str().unwrap(),
            "--input",
            good,
            "--output",
            o,
        ]),
        "junk.safetensors",
    );
    fails_with(
        &hrnet(&[
            "forward",
            "--weights",
            w,
            "--input",
            good,
            "--output",
            "/no/such/dir/o.npy",
        ]),
        "/no/such/dir",
    );
    fails_with(
        &hrnet(&["summary", "--model", "w64"]),
        "unknown model 'w64'",
    );
    fails_with(
        &hrnet(&[
            "summary",
            "--model",
            "w32-256x192",
            "--input-size",
            "250x192",
        ]),
        "multiple of 32",
    );
    fails_with(&hrnet(&["forward", "--weights", w]), "--input");
    // Refused before any GPU is looked for.
    fails_with(
        &hrnet(&["bench", "--weights", w, "--streams", "4,0"]),
        "--streams 0: a forward runs on 1 to 16 streams",
    );
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn verify_passes_on_the_default_model() {
    let o = hrnet(&["verify", "--batch", "1"]);
    let text = stdout(&o);
    println!("{text}");
    assert!(o.status.success(), "{text}");
    let row = |device: &str, precision: &str| {
        text.lines()
            .find(|l| l.split_whitespace().take(2).eq([device, precision]))
            .map(str::to_string)
    };
    let cpu = row("cpu", "f32").expect("a cpu f32 row");
    assert!(cpu.ends_with("PASS"), "{cpu}");
    // With a GPU, both CUDA rows; without one, the reason why not.
    match (row("cuda", "f32"), row("cuda", "f16")) {
        (Some(f32_row), Some(f16_row)) => assert!(
            f32_row.ends_with("PASS") && f16_row.ends_with("PASS"),
            "{text}"
        ),
        _ => assert!(text.contains("cuda: skipped, "), "{text}"),
    }
    assert!(text.contains("\nPASS: "), "{text}");
}

/// `hrnet doctor --arch sm_90` (no GPU needed): NVRTC and the headers it found, then one row
/// per kernel with its registers, shared memory, stack and spills, as many rows as the
/// library compiles, none spilling; `--cubin-dir` writes each program's machine code.
/// Without a GPU and without `--arch` it says what to give, in one line.
#[test]
fn doctor_reports_every_kernel_it_compiles() {
    use hrnet::cuda::{compiled, probe};
    if let Err(why) = probe::require_nvrtc().and_then(|()| probe::headers().map(|_| ())) {
        assert!(
            std::env::var_os("HRNET_REQUIRE_NVRTC").is_none(),
            "HRNET_REQUIRE_NVRTC is set but: {why}"
        );
        common::skip("doctor_reports_every_kernel_it_compiles", &why);
        return;
    }
    let dir = scratch("cli-doctor");
    let o = hrnet(&[
        "doctor",
        "--arch",
        "sm_90",
        "--cubin-dir",
        dir.to_str().unwrap(),
    ]);
    let text = stdout(&o);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("nvrtc    13.")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("headers  ")), "{text}");
    let files = compiled("sm_90").unwrap();
    let kernels: Vec<(&str, &str)> = files
        .iter()
        .flat_map(|f| f.kernels.iter().map(move |k| (f.file, k.name.as_str())))
        .collect();
    let header = text
        .lines()
        .position(|l| l.starts_with("program ") && l.contains("registers"))
        .expect("the kernel table");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(header + 1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), kernels.len(), "{text}");
    for (row, (file, name)) in rows.iter().zip(&kernels) {
        assert_eq!(row.len(), 7, "{row:?}");
        assert!(row[0].starts_with(file) && row[1] == *name, "{row:?}");
        assert!(row[2].parse::<u32>().unwrap() > 0, "{row:?}: registers");
        assert_eq!(row[5..], ["0", "0"], "{name} spills");
    }
    for f in files.iter() {
        let cubin = std::fs::read(dir.join(format!("{}.sm_90.cubin", f.name()))).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "{}", f.name());
    }
    if hrnet::cuda::gpus().is_err() {
        fails_with(&hrnet(&["doctor"]), "no GPU to compile for: give --arch");
    }
}
