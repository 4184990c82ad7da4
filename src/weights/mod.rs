//! Checkpoints: reading safetensors and PyTorch `.pth` files and writing safetensors, with
//! the official state_dict key names; deriving the configuration from tensor shapes, and
//! folding every BN into its conv.
//! This is the one place that knows the key suffixes (`.weight`, `.running_var` ...).

mod pickle;
mod pth;
mod random;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::config::{BN_EPS, COCO_JOINTS, HrnetConfig, MPII_JOINTS, StageConfig};
use crate::error::{Error, Result, and_more};
use crate::graph::{ConvLayer, Graph};

const BN_PARAMS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];
const BN_COUNTER: &str = "num_batches_tracked";
/// The prefix `nn.DataParallel` puts before every key.
const DATA_PARALLEL_PREFIX: &str = "module.";

/// A float tensor of a checkpoint, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTensor {
    /// Its shape as stored.
    pub shape: Vec<usize>,
    /// Its elements in row-major order.
    pub data: Vec<f32>,
}

/// A state_dict: official key → tensor, BN not yet folded. BN batch counters
/// (`num_batches_tracked`) are accepted when read and written as zero; they do not
/// change inference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Float tensors by key.
    pub tensors: BTreeMap<String, CheckpointTensor>,
    /// Keys of the BN batch counters that were present.
    pub counters: BTreeSet<String>,
}

/// A convolution's folded parameters: `weight` in `[cout, cin, k, k]` order, `bias[cout]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvParams {
    /// The weights, BN scale folded in.
    pub weight: Vec<f32>,
    /// The bias: BN shift, or the head's own bias.
    pub bias: Vec<f32>,
}

/// A convolution's folded parameters in f64, with no rounding to f32 between the
/// checkpoint and the fold: the parameters the official model computes with in float64.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvParamsF64 {
    /// The weights, BN scale folded in, `[cout, cin, k, k]`.
    pub weight: Vec<f64>,
    /// The bias: BN shift, or the head's own bias.
    pub bias: Vec<f64>,
}

/// What a convolution's parameters are folded from, kept beside the f32 fold (which loses
/// the product's low bits) so that [`Model::params_f64`] can fold again without rounding.
#[derive(Clone, Debug, PartialEq)]
struct Fold {
    /// The checkpoint's weight.
    weight: Vec<f32>,
    /// Per output channel: `γ / √(σ² + ε)`, or 1 without BN.
    scale: Vec<f64>,
    /// Per output channel: `β − μ · scale`, or the conv's own bias.
    bias: Vec<f64>,
}

impl Fold {
    /// `BN(conv(x))` as one convolution: with `s = γ / √(σ² + ε)` per output channel.
    fn bn(weight: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) -> Fold {
        let scale: Vec<f64> = gamma
            .iter()
            .zip(var)
            .map(|(&g, &v)| f64::from(g) / (f64::from(v) + BN_EPS).sqrt())
            .collect();
        let bias = beta
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((&b, &m), &s)| f64::from(b) - f64::from(m) * s)
            .collect();
        Fold {
            weight: weight.to_vec(),
            scale,
            bias,
        }
    }

    /// The folded weights, each product rounded once to `T` (by `round`).
    fn folded<T>(&self, round: impl Fn(f64) -> T) -> Vec<T> {
        let per_out = self.weight.len() / self.scale.len().max(1);
        self.weight
            .chunks_exact(per_out.max(1))
            .zip(&self.scale)
            .flat_map(|(chunk, &s)| chunk.iter().map(move |&v| f64::from(v) * s))
            .map(round)
            .collect()
    }
}

/// A network ready to run: its graph and one [`ConvParams`] per [`Graph::layers`] entry.
#[derive(Clone, Debug)]
pub struct Model {
    /// The topology.
    pub graph: Graph,
    /// Folded parameters, aligned with `graph.layers`.
    pub params: Vec<ConvParams>,
    /// What each of `params` was folded from (the checkpoint's weight, the f64 BN factor
    /// and shift), for [`Model::params_f64`]; shared by clones.
    folds: std::sync::Arc<[Fold]>,
}

impl Checkpoint {
    /// Reads a checkpoint: safetensors, or a PyTorch `.pth` (`torch.save` of a state_dict,
    /// or of a training checkpoint holding one under `state_dict`, in the zip format of
    /// PyTorch ≥ 1.6 or the legacy format of the official HRNet releases), told apart by
    /// their contents. A `.pth` is read without running any of its code. Float tensors may
    /// be F32, F16, BF16 or F64; a uniform `module.` prefix (from `nn.DataParallel`) is
    /// removed.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint { reason, .. } => Error::Checkpoint {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a checkpoint's bytes (see [`Checkpoint::load`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let unreadable = |reason: String| Error::Checkpoint {
            path: "<memory>".into(),
            reason,
        };
        if pth::is_pth(bytes) {
            let tensors = pth::read(bytes)
                .map_err(|e| unreadable(format!("not a readable PyTorch checkpoint ({e})")))?;
            return Self::from_tensors(
                tensors
                    .iter()
                    .map(|(k, t)| (k.as_str(), t.dtype, t.shape.as_slice(), t.data.as_ref())),
            );
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            unreadable(format!(
                "not a readable safetensors file ({e}), nor a PyTorch checkpoint"
            ))
        })?;
        let tensors = st.tensors();
        Self::from_tensors(
            tensors
                .iter()
                .map(|(k, v)| (k.as_str(), v.dtype(), v.shape(), v.data())),
        )
    }

    /// Collects `(key, dtype, shape, little-endian bytes)` tensors, whatever file they
    /// came from: floats to f32, BN counters noted, a uniform `module.` prefix removed.
    fn from_tensors<'a>(
        tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])> + Clone,
    ) -> Result<Self> {
        let mut names = tensors.clone().map(|t| t.0).peekable();
        let strip = names.peek().is_some() && names.all(|n| n.starts_with(DATA_PARALLEL_PREFIX));
        let mut ck = Checkpoint::default();
        for (name, dtype, shape, data) in tensors {
            let key = if strip {
                &name[DATA_PARALLEL_PREFIX.len()..]
            } else {
                name
            };
            if key.ends_with(BN_COUNTER) && matches!(dtype, Dtype::I64 | Dtype::I32) {
                ck.counters.insert(key.to_string());
                continue;
            }
            let data = to_f32(key, dtype, data)?;
            ck.tensors.insert(
                key.to_string(),
                CheckpointTensor {
                    shape: shape.to_vec(),
                    data,
                },
            );
        }
        Ok(ck)
    }

    /// Writes the checkpoint as safetensors with f32 tensors (and int64 BN counters).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let zero = 0i64.to_le_bytes();
        let mut views: Vec<(String, TensorView<'_>)> = Vec::with_capacity(self.tensors.len());
        let bad = |e: safetensors::SafeTensorError| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        for (k, t) in &self.tensors {
            let bytes: &[u8] = bytemuck::cast_slice(&t.data);
            views.push((
                k.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), bytes).map_err(bad)?,
            ));
        }
        for k in &self.counters {
            views.push((
                k.clone(),
                TensorView::new(Dtype::I64, vec![], &zero).map_err(bad)?,
            ));
        }
        safetensors::serialize_to_file(views, None, path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
            other => bad(other),
        })
    }

    fn shape(&self, key: &str) -> Result<&[usize]> {
        self.tensors
            .get(key)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| {
                Error::Config(format!(
                    "cannot derive the configuration: checkpoint has no '{key}'"
                ))
            })
    }

    fn dim(&self, key: &str, axis: usize) -> Result<usize> {
        let s = self.shape(key)?;
        s.get(axis).copied().ok_or_else(|| {
            Error::Config(format!(
                "cannot derive the configuration: '{key}' has shape {s:?}"
            ))
        })
    }

    /// Derives the configuration from tensor shapes: widths from the branches, module
    /// and block counts from the keys present, joints and head kernel from `final_layer`.
    /// The input size is not in a checkpoint: `input` gives it, or else the official one
    /// for the joint count (256×256 for MPII's 16 joints, 256×192 otherwise).
    pub fn infer_config(&self, input: Option<(usize, usize)>) -> Result<HrnetConfig> {
        for key in ["stage2.0.branches.0.0.conv1.weight", "final_layer.weight"] {
            if !self.tensors.contains_key(key) {
                let example = self
                    .tensors
                    .keys()
                    .next()
                    .map_or("none".to_string(), |k| format!("'{k}'"));
                return Err(Error::Config(format!(
                    "not an HRNet pose checkpoint: no '{key}' among its {} tensors (first: {example})",
                    self.tensors.len()
                )));
            }
        }
        let mut stages = Vec::with_capacity(3);
        for s in 2..=4 {
            let branches = s;
            let mut modules = 0;
            while self
                .tensors
                .contains_key(&format!("stage{s}.{modules}.branches.0.0.conv1.weight"))
            {
                modules += 1;
            }
            let mut channels = Vec::with_capacity(branches);
            let mut blocks = Vec::with_capacity(branches);
            for b in 0..branches {
                channels.push(self.dim(&format!("stage{s}.0.branches.{b}.0.conv1.weight"), 0)?);
                let mut n = 0;
                while self
                    .tensors
                    .contains_key(&format!("stage{s}.0.branches.{b}.{n}.conv1.weight"))
                {
                    n += 1;
                }
                blocks.push(n);
            }
            stages.push(StageConfig {
                modules,
                blocks,
                channels,
            });
        }
        let num_joints = self.dim("final_layer.weight", 0)?;
        let final_conv_kernel = self.dim("final_layer.weight", 2)?;
        let (h, w) = input.unwrap_or(if num_joints == MPII_JOINTS {
            (256, 256)
        } else {
            (256, 192)
        });
        let width = stages[0].channels[0];
        let dataset = match num_joints {
            COCO_JOINTS => "COCO",
            MPII_JOINTS => "MPII",
            _ => "custom",
        };
        let config = HrnetConfig {
            name: format!("checkpoint W{width} {dataset} ({num_joints} joints)"),
            num_joints,
            input_height: h,
            input_width: w,
            stages: stages.try_into().expect("three stages"),
            final_conv_kernel,
        };
        config.validate()?;
        Ok(config)
    }

    /// Every key the model for `graph` reads, with its shape.
    fn expected(graph: &Graph) -> Vec<(String, Vec<usize>)> {
        let mut keys = Vec::with_capacity(graph.layers.len() * 5);
        for l in &graph.layers {
            keys.push((format!("{}.weight", l.name), l.weight_shape().to_vec()));
            match &l.bn {
                Some(bn) => keys.extend(
                    BN_PARAMS
                        .iter()
                        .map(|p| (format!("{bn}.{p}"), vec![l.cout])),
                ),
                None => keys.push((format!("{}.bias", l.name), vec![l.cout])),
            }
        }
        keys
    }

    /// Checks the checkpoint against the graph: every key present, of the right shape, none
    /// left over, every value finite and every variance non-negative.
    pub fn check(&self, graph: &Graph) -> Result<()> {
        let expected = Self::expected(graph);
        let missing: Vec<&(String, Vec<usize>)> = expected
            .iter()
            .filter(|(k, _)| !self.tensors.contains_key(k))
            .collect();
        if let Some((key, shape)) = missing.first() {
            return Err(Error::MissingTensor {
                key: key.clone(),
                expected: shape.clone(),
                more: and_more(missing.len()),
            });
        }
        for (key, shape) in &expected {
            let t = &self.tensors[key];
            if &t.shape != shape {
                return Err(Error::ShapeMismatch {
                    key: key.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                });
            }
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("tensor '{key}' holds {} at index {i}", t.data[i]),
                });
            }
            if key.ends_with(".running_var")
                && let Some(i) = t.data.iter().position(|&v| v < 0.0)
            {
                return Err(Error::NonFinite {
                    what: format!(
                        "tensor '{key}' holds a negative variance {} at index {i}",
                        t.data[i]
                    ),
                });
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        let bns: BTreeSet<String> = graph.layers.iter().filter_map(|l| l.bn.clone()).collect();
        let extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        if let Some(key) = extra.first() {
            return Err(Error::UnexpectedTensor {
                key: (*key).clone(),
                shape: self.tensors[*key].shape.clone(),
                more: and_more(extra.len()),
            });
        }
        let counters: Vec<&String> = self
            .counters
            .iter()
            .filter(|k| {
                k.strip_suffix(&format!(".{BN_COUNTER}"))
                    .is_none_or(|bn| !bns.contains(bn))
            })
            .collect();
        if let Some(key) = counters.first() {
            return Err(Error::UnexpectedTensor {
                key: (*key).clone(),
                shape: vec![],
                more: and_more(counters.len()),
            });
        }
        Ok(())
    }
}

/// Converts a float tensor's little-endian bytes to f32; any other dtype is an error
/// naming the key.
fn to_f32(key: &str, dtype: Dtype, b: &[u8]) -> Result<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        other => {
            return Err(Error::Dtype {
                key: key.to_string(),
                dtype: format!("{other:?}"),
                extra: if key.ends_with(BN_COUNTER) {
                    String::new()
                } else {
                    " (integer dtypes only for BN num_batches_tracked)".into()
                },
            });
        }
    };
    Ok(out)
}

/// Folds `BN(conv(x))` into one convolution: with `s = γ / √(σ² + ε)`, the weight
/// becomes `w · s` per output channel and the bias `β − μ · s`. Computed in f64, each
/// result rounded once to f32.
#[must_use]
pub fn fold_bn(
    weight: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
) -> ConvParams {
    Fold::bn(weight, gamma, beta, mean, var).to_f32()
}

impl Fold {
    /// The f32 parameters.
    fn to_f32(&self) -> ConvParams {
        ConvParams {
            weight: self.folded(|v| v as f32),
            bias: self.bias.iter().map(|&b| b as f32).collect(),
        }
    }
}

impl Model {
    /// Builds the graph for `config`, checks the checkpoint against it and folds every BN.
    pub fn from_checkpoint(ck: &Checkpoint, config: &HrnetConfig) -> Result<Self> {
        let graph = Graph::new(config)?;
        ck.check(&graph)?;
        let t = |k: String| ck.tensors[&k].data.as_slice();
        let (params, folds) = graph
            .layers
            .iter()
            .map(|l| {
                let w = t(format!("{}.weight", l.name));
                let fold = match &l.bn {
                    Some(bn) => Fold::bn(
                        w,
                        t(format!("{bn}.weight")),
                        t(format!("{bn}.bias")),
                        t(format!("{bn}.running_mean")),
                        t(format!("{bn}.running_var")),
                    ),
                    None => Fold {
                        weight: w.to_vec(),
                        scale: vec![1.0; l.cout],
                        bias: t(format!("{}.bias", l.name))
                            .iter()
                            .map(|&b| f64::from(b))
                            .collect(),
                    },
                };
                // Without BN, scale 1 and the widened bias give back the checkpoint's values.
                (fold.to_f32(), fold)
            })
            .unzip();
        Ok(Model {
            graph,
            params,
            folds: Vec::into(folds),
        })
    }

    /// The folded parameters in f64, aligned with `graph.layers`: folded from the
    /// checkpoint's values again, without the f32 fold's rounding, so that a network run
    /// in f64 on them computes what the official model computes in float64 (the BN
    /// applied after the conv instead of folded into it differs only by f64 rounding).
    /// Checkpoints are read as f32, which holds F32, F16 and BF16 tensors exactly and
    /// narrows F64 ones as `load_state_dict` into the official (float32) model does.
    /// They come from the checkpoint the model was made from: changes made to `params`
    /// since are not seen here.
    #[must_use]
    pub fn params_f64(&self) -> Vec<ConvParamsF64> {
        self.folds
            .iter()
            .map(|fold| ConvParamsF64 {
                weight: fold.folded(|v| v),
                bias: fold.bias.clone(),
            })
            .collect()
    }

    /// Loads a checkpoint (safetensors or `.pth`), deriving the configuration from it;
    /// `input` is the input height and width (else the official one for its joint count;
    /// [`crate::config::size_in_name`] reads the one an official file name states).
    pub fn load(path: impl AsRef<Path>, input: Option<(usize, usize)>) -> Result<Self> {
        let ck = Checkpoint::load(path)?;
        let config = ck.infer_config(input)?;
        Self::from_checkpoint(&ck, &config)
    }

    /// The same weights for another input size.
    pub fn with_input(&self, height: usize, width: usize) -> Result<Self> {
        let config = self.graph.config.clone().with_input(height, width);
        Ok(Model {
            graph: Graph::new(&config)?,
            params: self.params.clone(),
            folds: self.folds.clone(),
        })
    }

    /// The convolution layers with their parameters.
    pub fn layers(&self) -> impl Iterator<Item = (&ConvLayer, &ConvParams)> {
        self.graph.layers.iter().zip(&self.params)
    }
}

pub use random::random_checkpoint;

impl Model {
    /// Seeded random weights with calibrated BN statistics (see [`random_checkpoint`]).
    pub fn random(config: &HrnetConfig, seed: u64) -> Result<Self> {
        Self::from_checkpoint(&random_checkpoint(config, seed)?, config)
    }
}

#[cfg(test)]
mod tests;
