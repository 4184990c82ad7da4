//! scripts/bench_table.py, the device run's one table and benches/results JSON, on bench
//! lines of the shape `hrnet bench` and `scripts/peer_pytorch.py --time` print.

mod common;

use std::process::Command;

use common::{scratch, skip};
use serde_json::{Value, json};

fn hrnet_row(batch: usize, median_ms: f64, deep: bool) -> Value {
    json!({
        "engine": "hrnet", "precision": "f16", "kernels": "tensor-core", "split_k": true,
        "l1_activations": false, "programmatic_launch": false, "deep_pipeline": deep,
        "grouped": false, "graphs": true, "front_chunk": 8, "streams": 16, "batch": batch,
        "median_ms": median_ms, "forward_ms": median_ms + 0.05,
        "images_per_s": batch as f64 * 1000.0 / median_ms, "peak_mib": 60.0,
    })
}

#[test]
fn a_configuration_timed_twice_keeps_its_slower_median() {
    let dir = scratch("bench-table");
    let lines = |rows: &[Value]| rows.iter().map(|r| format!("{r}\n")).collect::<String>();
    // The grid's default tuning, then the same configuration again before its profile,
    // in a second log, as scripts/device-validate runs them.
    let grid = dir.join("bench-hrnet.log");
    std::fs::write(
        &grid,
        format!(
            "a line that is not JSON\n{}",
            lines(&[hrnet_row(1, 0.30, false), hrnet_row(1, 0.28, true)])
        ),
    )
    .unwrap();
    let profile = dir.join("bench-hrnet-profile.log");
    std::fs::write(&profile, lines(&[hrnet_row(1, 0.36, false)])).unwrap();
    let pytorch = dir.join("bench-pytorch.log");
    let peer = json!({
        "engine": "pytorch", "config": "cuda_graph_fp16", "precision": "f16", "batch": 1,
        "median_ms": 1.08, "images_per_s": 925.9, "peak_mib": 120.0,
    });
    std::fs::write(&pytorch, lines(&[peer])).unwrap();
    let out = dir.join("gpu.json");
    let run = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_table.py"
        ))
        .args([&profile, &grid, &pytorch])
        .arg("--json")
        .arg(&out)
        .output();
    let run = match run {
        Ok(run) => run,
        Err(e) => return skip("bench_table", &format!("python3 does not start: {e}")),
    };
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("timed twice: hrnet f16 tensor-core, batch 1: 0.3000 and 0.3600 ms"),
        "{text}"
    );
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "hrnet f16 tensor-core",
            "hrnet f16 tensor-core, deep",
            "pytorch cuda_graph_fp16"
        ]
    );
    assert_eq!(rows[0]["median_ms"], 0.36, "the slower of the two");
    // The speed-up over the best PyTorch configuration and the memory fraction come from
    // the kept row: 1.08 / 0.36 and 60 / 120.
    let kept = text
        .lines()
        .find(|l| l.contains("hrnet f16 tensor-core ") && !l.contains("deep"))
        .unwrap();
    assert!(kept.contains("3.00x") && kept.contains("0.50"), "{kept}");
    assert_eq!(
        text.lines().filter(|l| l.contains("hrnet f16")).count(),
        3,
        "one row a configuration, and the line that says which was timed twice: {text}"
    );
}
