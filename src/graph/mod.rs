//! The HRNet topology as an explicit graph of ops with shapes: the one description
//! that every backend executes.
//!
//! Built once from an [`HrnetConfig`], it follows `lib/models/pose_hrnet.py` module by
//! module: stem, layer1, transition, stage, module, branch, exchange unit, head. Every
//! convolution carries the module paths of its official conv and BN, so that weights are
//! found by their checkpoint names (see [`crate::weights`]).

pub mod fused;
mod summary;

pub use summary::Summary;

use crate::config::{HrnetConfig, LAYER1_BLOCKS, LAYER1_CHANNELS, STEM_CHANNELS};
use crate::error::{Error, Result};
use crate::tensor::{Nchw, Tensor};

/// Per-image activation shape: channels, height, width (the batch is chosen at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chw {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Chw {
    /// Number of elements of one image.
    #[must_use]
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Whether one image has no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Chw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// Index of a value (an activation tensor) in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// A convolution layer's parameters, as the checkpoint holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvLayer {
    /// Module path of the `nn.Conv2d` (e.g. `stage2.0.fuse_layers.1.0.0.0`).
    pub name: String,
    /// Module path of the `nn.BatchNorm2d` that follows it; `None` for the head,
    /// which has a bias of its own instead.
    pub bn: Option<String>,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size: 1 or 3 (padding `kernel / 2`).
    pub kernel: usize,
    /// Stride: 1 or 2.
    pub stride: usize,
}

impl ConvLayer {
    /// Shape of the weight tensor: `[cout, cin, k, k]`.
    #[must_use]
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin, self.kernel, self.kernel]
    }

    /// Number of weights.
    #[must_use]
    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * self.kernel * self.kernel
    }

    /// Padding on each side.
    #[must_use]
    pub fn padding(&self) -> usize {
        self.kernel / 2
    }

    /// Trainable parameters as PyTorch counts them: the weight, and either the BN's
    /// weight and bias or the conv's own bias.
    #[must_use]
    pub fn params(&self) -> usize {
        self.weight_len()
            + if self.bn.is_some() {
                2 * self.cout
            } else {
                self.cout
            }
    }

    /// Output spatial size for an input of `h × w`.
    #[must_use]
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |x: usize| (x + 2 * self.padding() - self.kernel) / self.stride + 1;
        (o(h), o(w))
    }
}

/// A convolution with the folded BN as its bias and a fused epilogue:
/// `out = relu?(conv(input) + bias + residual?)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvOp {
    /// Index into [`Graph::layers`].
    pub layer: usize,
    /// The input value.
    pub input: ValueId,
    /// Added after the bias, before the ReLU (BasicBlock and Bottleneck shortcuts).
    pub residual: Option<ValueId>,
    /// Whether a ReLU ends the op.
    pub relu: bool,
    /// The output value.
    pub output: ValueId,
}

/// One output branch of an exchange unit: `out = relu(Σ upsample(term, factor))`, the
/// terms in the official summation order (input branch 0 first). A factor of 1 is the
/// identity; a factor of `2^(j−i)` is the nearest upsampling of a 1×1 conv's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeOp {
    /// Human-readable name (`stage3.1.fuse.0`: module `stage3.1`, output branch 0).
    pub name: String,
    /// `(value, nearest-upsampling factor)` per input branch.
    pub terms: Vec<(ValueId, usize)>,
    /// The output value (always followed by a ReLU, as in the official model).
    pub output: ValueId,
}

/// The terms of a sum at the output's own resolution (factor 1), as values.
#[must_use]
pub fn unscaled(terms: &[(ValueId, usize)]) -> Vec<ValueId> {
    terms.iter().filter(|t| t.1 == 1).map(|t| t.0).collect()
}

/// One step of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A convolution with fused bias, residual and ReLU.
    Conv(ConvOp),
    /// An exchange unit's sum for one output branch.
    Exchange(ExchangeOp),
}

impl Op {
    /// The value this op writes.
    #[must_use]
    pub fn output(&self) -> ValueId {
        match self {
            Op::Conv(c) => c.output,
            Op::Exchange(e) => e.output,
        }
    }

    /// The values this op reads.
    #[must_use]
    pub fn inputs(&self) -> Vec<ValueId> {
        match self {
            Op::Conv(c) => std::iter::once(c.input).chain(c.residual).collect(),
            Op::Exchange(e) => e.terms.iter().map(|t| t.0).collect(),
        }
    }
}

/// The network for one configuration, in execution order.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The configuration it was built from.
    pub config: HrnetConfig,
    /// Per-image shape of every value; value 0 is the network input.
    pub values: Vec<Chw>,
    /// Every convolution layer, in the order its op runs.
    pub layers: Vec<ConvLayer>,
    /// The ops, in an order in which each reads only values already written.
    pub ops: Vec<Op>,
    /// The heatmaps.
    pub output: ValueId,
}

impl Graph {
    /// The network input.
    pub const INPUT: ValueId = ValueId(0);

    /// Builds the official topology for `config` (validated first).
    pub fn new(config: &HrnetConfig) -> Result<Self> {
        config.validate()?;
        let mut b = Builder {
            values: vec![Chw {
                c: 3,
                h: config.input_height,
                w: config.input_width,
            }],
            layers: Vec::new(),
            ops: Vec::new(),
        };
        let x = b.stem(Graph::INPUT);
        let mut branches = vec![b.layer1(x)];
        let mut widths = vec![LAYER1_CHANNELS];
        for (s, stage) in config.stages.iter().enumerate() {
            let n = s + 2;
            branches = b.transition(n - 1, &branches, &widths, &stage.channels);
            widths.clone_from(&stage.channels);
            for m in 0..stage.modules {
                let last_of_network = n == 4 && m + 1 == stage.modules;
                branches = b.module(
                    &format!("stage{n}.{m}"),
                    &branches,
                    &stage.blocks,
                    !last_of_network,
                );
            }
        }
        let head = ConvLayer {
            name: "final_layer".into(),
            bn: None,
            cin: widths[0],
            cout: config.num_joints,
            kernel: config.final_conv_kernel,
            stride: 1,
        };
        let output = b.conv(head, branches[0], None, false);
        Ok(Graph {
            config: config.clone(),
            values: b.values,
            layers: b.layers,
            ops: b.ops,
            output,
        })
    }

    /// Per-image shape of a value.
    #[must_use]
    pub fn shape(&self, v: ValueId) -> Chw {
        self.values[v.0]
    }

    /// Per-image shape of the input.
    #[must_use]
    pub fn input_shape(&self) -> Chw {
        self.shape(Graph::INPUT)
    }

    /// Per-image shape of the heatmaps.
    #[must_use]
    pub fn output_shape(&self) -> Chw {
        self.shape(self.output)
    }

    /// For each value, the index of the last op that reads it (the output is read "after"
    /// the last op). Executors free a value once its last reader has run.
    #[must_use]
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0; self.values.len()];
        for (i, op) in self.ops.iter().enumerate() {
            for v in op.inputs() {
                last[v.0] = i;
            }
        }
        last[self.output.0] = self.ops.len();
        last
    }

    /// Checks that `input` is a non-empty `N × 3 × H × W` batch of this graph's input
    /// size with finite values.
    pub fn check_input(&self, input: &Tensor) -> Result<()> {
        self.check_batch(input.shape(), input.data())
    }

    /// [`Graph::check_input`] for a batch of any float type: `data` holds `shape`'s
    /// elements.
    pub fn check_batch<T: Copy + Into<f64> + std::fmt::Display>(
        &self,
        s: Nchw,
        data: &[T],
    ) -> Result<()> {
        let want = self.input_shape();
        if Some(data.len()) != s.checked_len() {
            return Err(Error::Input(format!(
                "input of shape {s} holds {} values",
                data.len()
            )));
        }
        if s.n == 0 {
            return Err(Error::Input("the batch is empty (N = 0)".into()));
        }
        if s.chw() != want {
            return Err(Error::Input(format!(
                "input has shape {s}, the model expects Nx{}x{}x{} (NCHW)",
                want.c, want.h, want.w
            )));
        }
        if let Some(i) = data.iter().position(|&v| !v.into().is_finite()) {
            let per = want.len();
            return Err(Error::NonFinite {
                what: format!(
                    "input holds {} (image {}, element {}); inputs must be finite",
                    data[i],
                    i / per,
                    i % per
                ),
            });
        }
        Ok(())
    }

    /// Parameter count, conv multiply-adds per image and the layer table.
    #[must_use]
    pub fn summary(&self) -> Summary {
        Summary::new(self)
    }
}

/// Appends layers, values and ops in execution order.
struct Builder {
    values: Vec<Chw>,
    layers: Vec<ConvLayer>,
    ops: Vec<Op>,
}

/// A conv and its BN, `prefix.conv` / `prefix.bn` style names given in full.
fn layer(
    name: String,
    bn: String,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
) -> ConvLayer {
    ConvLayer {
        name,
        bn: Some(bn),
        cin,
        cout,
        kernel,
        stride,
    }
}

impl Builder {
    fn conv(
        &mut self,
        layer: ConvLayer,
        input: ValueId,
        residual: Option<ValueId>,
        relu: bool,
    ) -> ValueId {
        let x = self.values[input.0];
        debug_assert_eq!(x.c, layer.cin, "{}", layer.name);
        let (h, w) = layer.out_size(x.h, x.w);
        let output = ValueId(self.values.len());
        self.values.push(Chw {
            c: layer.cout,
            h,
            w,
        });
        self.ops.push(Op::Conv(ConvOp {
            layer: self.layers.len(),
            input,
            residual,
            relu,
            output,
        }));
        self.layers.push(layer);
        output
    }

    /// conv1, bn1, relu, conv2, bn2, relu: two stride-2 3×3 convs, 3 → 64 → 64.
    fn stem(&mut self, x: ValueId) -> ValueId {
        let c = STEM_CHANNELS;
        let x = self.conv(
            layer("conv1".into(), "bn1".into(), 3, c, 3, 2),
            x,
            None,
            true,
        );
        self.conv(
            layer("conv2".into(), "bn2".into(), c, c, 3, 2),
            x,
            None,
            true,
        )
    }

    /// Four Bottlenecks, 64 → 256, the first with a 1×1 conv+BN downsample.
    fn layer1(&mut self, mut x: ValueId) -> ValueId {
        let (planes, out) = (STEM_CHANNELS, LAYER1_CHANNELS);
        for k in 0..LAYER1_BLOCKS {
            let p = format!("layer1.{k}");
            let cin = self.values[x.0].c;
            let h = self.conv(
                layer(format!("{p}.conv1"), format!("{p}.bn1"), cin, planes, 1, 1),
                x,
                None,
                true,
            );
            let h = self.conv(
                layer(
                    format!("{p}.conv2"),
                    format!("{p}.bn2"),
                    planes,
                    planes,
                    3,
                    1,
                ),
                h,
                None,
                true,
            );
            let shortcut = if cin == out {
                x
            } else {
                let ds = layer(
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    cin,
                    out,
                    1,
                    1,
                );
                self.conv(ds, x, None, false)
            };
            x = self.conv(
                layer(format!("{p}.conv3"), format!("{p}.bn3"), planes, out, 1, 1),
                h,
                Some(shortcut),
                true,
            );
        }
        x
    }

    /// `transition{t}`: a branch whose width changes gets a 3×3 conv+BN+ReLU; a new branch
    /// gets a chain of stride-2 3×3 conv+BN+ReLU from the lowest previous branch.
    fn transition(
        &mut self,
        t: usize,
        branches: &[ValueId],
        before: &[usize],
        after: &[usize],
    ) -> Vec<ValueId> {
        let mut out = Vec::with_capacity(after.len());
        for (i, &cout) in after.iter().enumerate() {
            if i < before.len() {
                if before[i] == cout {
                    out.push(branches[i]);
                } else {
                    let p = format!("transition{t}.{i}");
                    let l = layer(format!("{p}.0"), format!("{p}.1"), before[i], cout, 3, 1);
                    out.push(self.conv(l, branches[i], None, true));
                }
            } else {
                let steps = i + 1 - before.len();
                let mut x = *branches.last().expect("a stage has at least one branch");
                let cin = *before.last().expect("a stage has at least one branch");
                for j in 0..steps {
                    let p = format!("transition{t}.{i}.{j}");
                    let c = if j + 1 == steps { cout } else { cin };
                    x = self.conv(
                        layer(format!("{p}.0"), format!("{p}.1"), cin, c, 3, 2),
                        x,
                        None,
                        true,
                    );
                }
                out.push(x);
            }
        }
        out
    }

    /// One high-resolution module: BasicBlocks on every branch, then the exchange unit
    /// (all output branches, or only branch 0 when `multi_scale` is false).
    fn module(
        &mut self,
        p: &str,
        inputs: &[ValueId],
        blocks: &[usize],
        multi_scale: bool,
    ) -> Vec<ValueId> {
        let mut x: Vec<ValueId> = Vec::with_capacity(inputs.len());
        for (b, (&input, &nblocks)) in inputs.iter().zip(blocks).enumerate() {
            let mut v = input;
            let c = self.values[v.0].c;
            for k in 0..nblocks {
                let q = format!("{p}.branches.{b}.{k}");
                let h = self.conv(
                    layer(format!("{q}.conv1"), format!("{q}.bn1"), c, c, 3, 1),
                    v,
                    None,
                    true,
                );
                v = self.conv(
                    layer(format!("{q}.conv2"), format!("{q}.bn2"), c, c, 3, 1),
                    h,
                    Some(v),
                    true,
                );
            }
            x.push(v);
        }
        if x.len() == 1 {
            return x;
        }
        let outputs = if multi_scale { x.len() } else { 1 };
        let width: Vec<usize> = x.iter().map(|v| self.values[v.0].c).collect();
        (0..outputs)
            .map(|i| {
                let mut terms = Vec::with_capacity(x.len());
                for (j, &xj) in x.iter().enumerate() {
                    let q = format!("{p}.fuse_layers.{i}.{j}");
                    let term = if j > i {
                        let l = layer(format!("{q}.0"), format!("{q}.1"), width[j], width[i], 1, 1);
                        (self.conv(l, xj, None, false), 1 << (j - i))
                    } else if j == i {
                        (xj, 1)
                    } else {
                        let mut v = xj;
                        for k in 0..i - j {
                            let last = k + 1 == i - j;
                            let c = if last { width[i] } else { width[j] };
                            let l = layer(
                                format!("{q}.{k}.0"),
                                format!("{q}.{k}.1"),
                                width[j],
                                c,
                                3,
                                2,
                            );
                            v = self.conv(l, v, None, !last);
                        }
                        (v, 1)
                    };
                    terms.push(term);
                }
                let s = self.values[x[i].0];
                let output = ValueId(self.values.len());
                self.values.push(s);
                self.ops.push(Op::Exchange(ExchangeOp {
                    name: format!("{p}.fuse.{i}"),
                    terms,
                    output,
                }));
                output
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32() -> Graph {
        Graph::new(&HrnetConfig::preset("w32-256x192").unwrap()).unwrap()
    }

    #[test]
    fn shapes_follow_the_official_model() {
        let g = w32();
        assert_eq!(
            g.input_shape(),
            Chw {
                c: 3,
                h: 256,
                w: 192
            }
        );
        assert_eq!(
            g.output_shape(),
            Chw {
                c: 17,
                h: 64,
                w: 48
            }
        );
        assert_eq!(g.layers.len(), 293);
        // Every exchange term has its output's resolution once upsampled.
        for op in &g.ops {
            if let Op::Exchange(e) = op {
                let out = g.shape(e.output);
                for &(v, f) in &e.terms {
                    let s = g.shape(v);
                    assert_eq!((s.c, s.h * f, s.w * f), (out.c, out.h, out.w), "{}", e.name);
                }
            }
        }
    }

    #[test]
    fn ops_read_only_written_values() {
        let g = w32();
        let mut written = vec![false; g.values.len()];
        written[0] = true;
        for op in &g.ops {
            for v in op.inputs() {
                assert!(written[v.0]);
            }
            assert!(!written[op.output().0], "written twice");
            written[op.output().0] = true;
        }
        assert!(written.iter().all(|&w| w));
    }

    #[test]
    fn key_paths_follow_pose_hrnet() {
        let g = w32();
        let names: Vec<&str> = g.layers.iter().map(|l| l.name.as_str()).collect();
        for n in [
            "conv1",
            "layer1.0.downsample.0",
            "transition1.0.0",
            "transition1.1.0.0",
            "transition3.3.0.0",
            "stage2.0.fuse_layers.1.0.0.0",
            "stage4.2.fuse_layers.0.3.0",
            "stage4.1.fuse_layers.3.0.2.0",
            "stage3.3.branches.2.3.conv2",
            "final_layer",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        // The last module outputs branch 0 only.
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("stage4.2.fuse_layers.1"))
        );
    }
}
