//! The `hrnet` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use hrnet::config::parse_size;
use hrnet::tensor::{argmax_agreement, relative_l2};
use hrnet::weights::random_checkpoint;
use hrnet::{CpuEngine, Error, HrnetConfig, Model, Nchw, Result, Tensor, npy};

/// HRNet pose estimation: an inference engine with a CPU reference.
#[derive(Parser)]
#[command(name = "hrnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Device {
    /// The f32 CPU reference engine.
    Cpu,
}

#[derive(Subcommand)]
enum Command {
    /// Run the network on a normalised float32 NCHW batch and write the heatmaps.
    Forward {
        /// Checkpoint (safetensors with the official key names).
        #[arg(long)]
        weights: PathBuf,
        /// Input batch, float32 (or float64) N×3×H×W, already normalised.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the float32 N×joints×H/4×W/4 heatmaps.
        #[arg(long)]
        output: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value = "cpu")]
        device: Device,
    },
    /// Print the layer table and the totals (parameters, multiply-adds, convolutions).
    Summary {
        /// A preset: w32-256x192, w32-384x288, w48-256x192, w48-384x288,
        /// w32-256x256-mpii, w48-256x256-mpii, w18-256x192.
        #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
        model: Option<String>,
        /// A checkpoint, whose shapes give the configuration.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Input size HEIGHTxWIDTH (default: the preset's, or the dataset's official size).
        #[arg(long)]
        input_size: Option<String>,
        /// Print only the totals.
        #[arg(long)]
        totals: bool,
    },
    /// The main job on an embedded default: seeded random weights, a fresh random batch,
    /// the f32 engine checked against the same network in f64.
    Verify {
        /// Preset to verify.
        #[arg(long, default_value = "w32-256x192")]
        model: String,
        /// Images in the random batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Seed of the weights (the input is fresh each run unless --input-seed is given).
        #[arg(long, default_value_t = 2019)]
        seed: u64,
        /// Seed of the input batch.
        #[arg(long)]
        input_seed: Option<u64>,
    },
    /// Compare heatmaps with reference heatmaps: relative L2 error and argmax agreement.
    Compare {
        /// Heatmaps to check (.npy, N×K×H×W).
        output: PathBuf,
        /// Reference heatmaps (.npy, float64 or float32, same shape).
        reference: PathBuf,
        /// Fail (exit 1) above this relative L2 error or on any argmax disagreement.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
    },
    /// Write a seeded random checkpoint (official key names, calibrated BN statistics).
    InitWeights {
        /// Preset.
        #[arg(long)]
        model: String,
        /// Seed.
        #[arg(long, default_value_t = 2019)]
        seed: u64,
        /// Output .safetensors file.
        #[arg(long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message, without its usage block, on one line.
            let text = e.to_string();
            let words: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see hrnet --help)", words.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Forward {
            weights,
            input,
            output,
            device: Device::Cpu,
        } => {
            let x = npy::read_tensor(&input)?;
            let s = x.shape();
            if s.c != 3 {
                return Err(Error::Input(format!(
                    "input has shape {s}; images need 3 channels (N×3×H×W)"
                )));
            }
            let model = Model::load(&weights, Some((s.h, s.w)))?;
            let start = Instant::now();
            let heatmaps = CpuEngine::new(model).forward(&x)?;
            let secs = start.elapsed().as_secs_f64();
            npy::write_tensor(&output, &heatmaps)?;
            eprintln!(
                "{} -> {} heatmaps {} on cpu in {:.3} s",
                input.display(),
                output.display(),
                heatmaps.shape(),
                secs
            );
        }
        Command::Summary {
            model,
            weights,
            input_size,
            totals,
        } => {
            let size = input_size.as_deref().map(parse_size).transpose()?;
            let config = match (model, weights) {
                (Some(name), _) => {
                    let c = HrnetConfig::preset(&name)?;
                    match size {
                        Some((h, w)) => c.with_input(h, w),
                        None => c,
                    }
                }
                (None, Some(path)) => hrnet::Checkpoint::load(&path)?.infer_config(size)?,
                (None, None) => unreachable!("clap requires --model or --weights"),
            };
            let summary = hrnet::Graph::new(&config)?.summary();
            let all = summary.to_string();
            if totals {
                let lines: Vec<&str> = all.lines().collect();
                emit(&format!(
                    "{}\n{}\n",
                    lines[0],
                    lines[lines.len() - 3..].join("\n")
                ));
            } else {
                emit(&format!("{all}\n"));
            }
        }
        Command::Verify {
            model,
            batch,
            seed,
            input_seed,
        } => return verify(&model, batch, seed, input_seed),
        Command::Compare {
            output,
            reference,
            tolerance,
        } => {
            let (s_out, out) = npy::read_f64(&output)?;
            let (s_ref, r) = npy::read_f64(&reference)?;
            if s_out != s_ref {
                return Err(Error::Input(format!(
                    "shapes differ: {s_out:?} vs reference {s_ref:?}"
                )));
            }
            let map = s_out.iter().skip(2).product::<usize>();
            let narrowed: Vec<f32> = out.iter().map(|&v| v as f32).collect();
            let rel = relative_l2(&narrowed, &r).expect("same length");
            let agree = argmax_agreement(&out, &r, map);
            let max_abs = out
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!(
                "relative L2 {rel:.3e}  max |diff| {max_abs:.3e}  argmax agreement {agree:.4}"
            );
            if rel > tolerance || agree < 1.0 {
                println!("FAIL: tolerance {tolerance:.1e}, argmax agreement must be 1");
                return Ok(ExitCode::FAILURE);
            }
            println!("ok: within {tolerance:.1e} with identical argmax");
        }
        Command::InitWeights {
            model,
            seed,
            output,
        } => {
            let config = HrnetConfig::preset(&model)?;
            random_checkpoint(&config, seed)?.save(&output)?;
            eprintln!("wrote {} ({model}, seed {seed})", output.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`hrnet summary | head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Tolerance of the f32 CPU engine against the f64 evaluation of the same network: the
/// bound the reference must meet against the official model in float64.
const F32_TOLERANCE: f64 = 1e-4;

fn verify(preset: &str, batch: usize, seed: u64, input_seed: Option<u64>) -> Result<ExitCode> {
    if batch == 0 {
        return Err(Error::Input("--batch must be at least 1".into()));
    }
    let config = HrnetConfig::preset(preset)?;
    let input_seed = input_seed.unwrap_or_else(rand_seed);
    println!("hrnet verify: {config}");
    println!(
        "weights: seeded random (seed {seed}), input: {batch} random images (seed {input_seed})"
    );
    let start = Instant::now();
    let engine = CpuEngine::new(Model::random(&config, seed)?);
    println!(
        "weights generated and calibrated in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let s = engine.model().graph.input_shape();
    let x = Tensor::random_normal(Nchw::batch(batch, s), input_seed);
    let t = Instant::now();
    let reference = engine.forward_f64(&x)?;
    let t64 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = engine.forward(&x)?;
    let t32 = t.elapsed().as_secs_f64();
    let o = out.shape();
    let rel = relative_l2(out.data(), &reference).expect("same shape");
    let agree = argmax_agreement(out.data(), &reference, o.h * o.w);
    println!();
    println!(
        "{:<8} {:<10} {:>10} {:>14} {:>16}",
        "device", "precision", "time", "rel L2 vs f64", "argmax agreement"
    );
    println!(
        "{:<8} {:<10} {:>8.3} s {:>14} {:>16}",
        "cpu", "f64", t64, "(reference)", "-"
    );
    println!(
        "{:<8} {:<10} {:>8.3} s {:>14.3e} {:>16.4}",
        "cpu", "f32", t32, rel, agree
    );
    let pass = rel <= F32_TOLERANCE && agree == 1.0;
    println!();
    println!(
        "{}: f32 within {F32_TOLERANCE:.0e} of f64 with identical argmax{}",
        if pass { "PASS" } else { "FAIL" },
        if pass { "" } else { " is required" }
    );
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A seed that differs between runs.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
        .unwrap_or(0x5eed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_listed_in_help_exist() {
        for p in hrnet::config::PRESETS {
            HrnetConfig::preset(p).unwrap();
        }
        Cli::try_parse_from(["hrnet", "summary", "--model", "w32-256x192"]).unwrap();
        assert!(Cli::try_parse_from(["hrnet", "summary"]).is_err());
        assert!(Cli::try_parse_from(["hrnet", "forward", "--device", "tpu"]).is_err());
    }
}
