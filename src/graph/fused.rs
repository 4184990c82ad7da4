//! The graph regrouped into fused launches, for the tensor-core engine.
//!
//! An exchange unit's output branch `i > 0` sums the identity, the upsampled 1×1 results of
//! the coarser branches and, from each finer branch `j < i`, the last strided 3×3 step of
//! its chain. Those last steps all read tensors of branch `i − 1`'s resolution and all write
//! branch `i`'s, so they are one convolution over the concatenation of their inputs (K is
//! the sum of their K), and the identity and upsampled terms join its epilogue: one launch
//! per output branch instead of one per strided step plus the sum. Output branch 0 has no
//! strided step and stays a plain exchange sum.
//!
//! A block whose shortcut is a convolution (layer1's first Bottleneck: a 1×1 conv and BN
//! from 64 to 256 channels) likewise sums it with its last conv, which has the same kernel,
//! stride, output channels and input resolution: the shortcut's result (256 channels at a
//! quarter of the input's resolution, the largest value after the stem's first conv) is
//! never stored. Every other conv is a step of its own, its residual being an epilogue
//! term.
//!
//! The steps are listed by depth (the longest chain through the data that ends at each),
//! so the four branches of a module interleave block by block: the steps that could run
//! at once sit side by side, and the tensor-core engine may launch those of one kernel
//! together.

use super::{ConvOp, ExchangeOp, Graph, Op, ValueId};

/// One launch of the fused plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `out = act(Σ_s conv(source_s) + Σ_s bias_s + Σ_t upsample(term_t))`. The sources'
    /// layers share kernel size, stride, output channels and input resolution.
    Conv {
        /// `(input value, index into Graph::layers)` per summed convolution.
        sources: Vec<(ValueId, usize)>,
        /// `(value, nearest-upsampling factor)` added after the convolutions.
        terms: Vec<(ValueId, usize)>,
        /// ReLU after the whole sum.
        relu: bool,
        /// The value written.
        output: ValueId,
    },
    /// An exchange sum with no convolution to fuse into.
    Exchange(ExchangeOp),
}

impl Step {
    /// The value this step writes.
    #[must_use]
    pub fn output(&self) -> ValueId {
        match self {
            Step::Conv { output, .. } => *output,
            Step::Exchange(e) => e.output,
        }
    }

    /// The values this step reads.
    #[must_use]
    pub fn inputs(&self) -> Vec<ValueId> {
        match self {
            Step::Conv { sources, terms, .. } => sources
                .iter()
                .map(|s| s.0)
                .chain(terms.iter().map(|t| t.0))
                .collect(),
            Step::Exchange(e) => e.terms.iter().map(|t| t.0).collect(),
        }
    }
}

/// The most epilogue terms a fused step takes (kernels/conv_tc.cu).
pub const MAX_TERMS: usize = 3;
/// The most convolutions a fused step sums (kernels/conv_tc.cu).
pub const MAX_SOURCES: usize = 4;

/// The graph's ops as fused steps, in an order in which each reads only values written.
#[derive(Clone, Debug)]
pub struct FusedPlan {
    /// The steps.
    pub steps: Vec<Step>,
    /// How many exchange-unit branches became one fused conv.
    pub fused_exchanges: usize,
    /// How many shortcut convs were summed into their block's last conv.
    pub fused_shortcuts: usize,
}

impl FusedPlan {
    /// Regroups `graph` (see the module docs).
    #[must_use]
    pub fn new(graph: &Graph) -> Self {
        let mut readers = vec![0usize; graph.values.len()];
        for op in &graph.ops {
            for v in op.inputs() {
                readers[v.0] += 1;
            }
        }
        let mut producer = vec![None; graph.values.len()];
        for (i, op) in graph.ops.iter().enumerate() {
            producer[op.output().0] = Some(i);
        }
        // A conv whose result is only a strided term of one exchange sum folds into it.
        let folds = |v: ValueId, factor: usize| -> Option<usize> {
            let i = producer[v.0]?;
            match &graph.ops[i] {
                Op::Conv(c)
                    if factor == 1
                        && !c.relu
                        && c.residual.is_none()
                        && graph.layers[c.layer].stride == 2
                        && readers[v.0] == 1
                        && v != graph.output =>
                {
                    Some(i)
                }
                _ => None,
            }
        };
        // A conv whose result is only the residual of `c` (a shortcut) folds into `c`.
        let shortcut = |c: &ConvOp| -> Option<usize> {
            let r = c.residual?;
            let i = producer[r.0]?;
            let (Op::Conv(d), l) = (&graph.ops[i], &graph.layers[c.layer]) else {
                return None;
            };
            let m = &graph.layers[d.layer];
            let (sd, sc) = (graph.shape(d.input), graph.shape(c.input));
            (!d.relu
                && d.residual.is_none()
                && readers[r.0] == 1
                && r != graph.output
                && (m.kernel, m.stride, m.cout) == (l.kernel, l.stride, l.cout)
                && (sd.h, sd.w) == (sc.h, sc.w))
                .then_some(i)
        };
        let mut folded = vec![false; graph.ops.len()];
        let mut fused: Vec<Option<Step>> = vec![None; graph.ops.len()];
        let mut fused_exchanges = 0;
        let mut fused_shortcuts = 0;
        for (i, op) in graph.ops.iter().enumerate() {
            let e = match op {
                Op::Exchange(e) => e,
                Op::Conv(c) => {
                    if let Some(j) = shortcut(c) {
                        let Op::Conv(d) = &graph.ops[j] else {
                            unreachable!("shortcut only returns convs")
                        };
                        folded[j] = true;
                        fused[i] = Some(Step::Conv {
                            sources: vec![(c.input, c.layer), (d.input, d.layer)],
                            terms: Vec::new(),
                            relu: c.relu,
                            output: c.output,
                        });
                        fused_shortcuts += 1;
                    }
                    continue;
                }
            };
            let (convs, rest): (Vec<_>, Vec<_>) =
                e.terms.iter().partition(|&&(v, f)| folds(v, f).is_some());
            if convs.is_empty() || convs.len() > MAX_SOURCES || rest.len() > MAX_TERMS {
                continue;
            }
            let sources = convs
                .iter()
                .map(|&&(v, f)| {
                    let j = folds(v, f).expect("partitioned on folds");
                    folded[j] = true;
                    match &graph.ops[j] {
                        Op::Conv(c) => (c.input, c.layer),
                        Op::Exchange(_) => unreachable!("folds only returns convs"),
                    }
                })
                .collect();
            fused[i] = Some(Step::Conv {
                sources,
                terms: rest.into_iter().copied().collect(),
                relu: true,
                output: e.output,
            });
            fused_exchanges += 1;
        }
        let steps = graph
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, _)| !folded[i])
            .map(|(i, op)| match (fused[i].take(), op) {
                (Some(step), _) => step,
                (None, Op::Conv(c)) => Step::Conv {
                    sources: vec![(c.input, c.layer)],
                    terms: c.residual.map(|r| (r, 1)).into_iter().collect(),
                    relu: c.relu,
                    output: c.output,
                },
                (None, Op::Exchange(e)) => Step::Exchange(e.clone()),
            })
            .collect();
        FusedPlan {
            steps: by_depth(graph, steps),
            fused_exchanges,
            fused_shortcuts,
        }
    }

    /// Whether steps `a` and `b` run the same kind of convolution (kernel size and
    /// stride): steps of one depth that do may be launched together
    /// (kernels/conv_tc.cu's grouped kernels).
    #[must_use]
    pub fn same_kernel(&self, graph: &Graph, a: usize, b: usize) -> bool {
        kernel_of(graph, &self.steps[a]).is_some()
            && kernel_of(graph, &self.steps[a]) == kernel_of(graph, &self.steps[b])
    }

    /// For each value, the index of the last step that reads it (the graph's output is
    /// read after the last step).
    #[must_use]
    pub fn last_uses(&self, graph: &Graph) -> Vec<usize> {
        let mut last = vec![0; graph.values.len()];
        for (i, s) in self.steps.iter().enumerate() {
            for v in s.inputs() {
                last[v.0] = i;
            }
        }
        last[graph.output.0] = self.steps.len();
        last
    }
}

/// A conv step's kernel size and stride; `None` for an exchange sum.
fn kernel_of(graph: &Graph, step: &Step) -> Option<(usize, usize)> {
    match step {
        Step::Conv { sources, .. } => {
            let l = &graph.layers[sources[0].1];
            Some((l.kernel, l.stride))
        }
        Step::Exchange(_) => None,
    }
}

/// `steps` (in an order in which each reads only values written) ordered by depth, the
/// longest chain of steps through the data that ends at a step, then by kernel, then as
/// they were: an order in which each still reads only values written, with the steps
/// that could run at once side by side, those of one kernel together. HRNet's branches,
/// which the graph lists one after another, are interleaved block by block, so that a
/// module's four branch convolutions of one depth may be one launch.
fn by_depth(graph: &Graph, steps: Vec<Step>) -> Vec<Step> {
    let mut producer: Vec<Option<usize>> = vec![None; graph.values.len()];
    let mut depth = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let d = s
            .inputs()
            .iter()
            .filter_map(|v| producer[v.0])
            .map(|p: usize| depth[p] + 1)
            .max()
            .unwrap_or(0);
        depth.push(d);
        producer[s.output().0] = Some(i);
    }
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by_key(|&i| {
        (
            depth[i],
            kernel_of(graph, &steps[i]).is_none(),
            kernel_of(graph, &steps[i]),
            i,
        )
    });
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| steps[i].take().expect("each step once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HrnetConfig;
    use crate::cpu::ops;
    use crate::tensor::{Nchw, Tensor, relative_l2};
    use crate::weights::Model;

    /// Runs the plan on the CPU in f64, each step as its definition says.
    fn execute(model: &Model, plan: &FusedPlan, input: &[f64], batch: usize) -> Vec<f64> {
        let g = &model.graph;
        let mut values: Vec<Option<Vec<f64>>> = vec![None; g.values.len()];
        values[Graph::INPUT.0] = Some(input.to_vec());
        let mut col = Vec::new();
        for step in &plan.steps {
            let s = g.shape(step.output());
            let mut out = vec![0.0; batch * s.len()];
            let terms = match step {
                Step::Conv { sources, terms, .. } => {
                    for &(v, l) in sources {
                        let (layer, p) = (&g.layers[l], &model.params[l]);
                        let w: Vec<f64> = p.weight.iter().map(|&v| f64::from(v)).collect();
                        let b: Vec<f64> = p.bias.iter().map(|&v| f64::from(v)).collect();
                        let si = g.shape(v);
                        let x = values[v.0].as_ref().expect("a source is live");
                        let mut part = vec![0.0; s.len()];
                        for (xi, oi) in x.chunks_exact(si.len()).zip(out.chunks_exact_mut(s.len()))
                        {
                            ops::conv2d(xi, si, layer, &w, &b, &mut part, &mut col);
                            oi.iter_mut().zip(&part).for_each(|(o, p)| *o += p);
                        }
                    }
                    terms
                }
                Step::Exchange(e) => &e.terms,
            };
            for &(v, f) in terms {
                let st = g.shape(v);
                let x = values[v.0].as_ref().expect("a term is live");
                for (xi, oi) in x.chunks_exact(st.len()).zip(out.chunks_exact_mut(s.len())) {
                    ops::upsample_add(xi, st, f, oi);
                }
            }
            let relu = match step {
                Step::Conv { relu, .. } => *relu,
                Step::Exchange(_) => true,
            };
            if relu {
                ops::relu_in_place(&mut out);
            }
            values[step.output().0] = Some(out);
        }
        values[g.output.0].take().expect("the output is written")
    }

    #[test]
    fn the_plan_computes_the_graph() {
        let config = HrnetConfig::official("w4", 4, 17, 64, 64);
        let model = Model::random(&config, 11).unwrap();
        let plan = FusedPlan::new(&model.graph);
        let input = Tensor::random_normal(
            Nchw::batch(2, model.graph.input_shape()),
            u64::from(std::process::id()),
        );
        let x: Vec<f64> = input.data().iter().map(|&v| f64::from(v)).collect();
        let want = crate::cpu::CpuEngine::new(model.clone())
            .forward_f64(&input)
            .unwrap();
        let got: Vec<f32> = execute(&model, &plan, &x, 2)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let err = relative_l2(&got, &want).unwrap();
        assert!(err < 1e-6, "fused plan vs graph: {err:e}");
    }

    #[test]
    fn every_exchange_branch_past_the_first_is_fused() {
        let model = Model::random(&HrnetConfig::preset("w32-256x192").unwrap(), 1).unwrap();
        let g = &model.graph;
        let plan = FusedPlan::new(g);
        // Stage 2 (1 module, 2 branches), 3 (4 modules, 3), 4 (3 modules, 4; the last
        // keeps only branch 0): output branches i > 0 of each exchange unit.
        let expected = 1 + 4 * 2 + 2 * 3;
        assert_eq!(plan.fused_exchanges, expected);
        // layer1's first Bottleneck: the only block with a conv shortcut.
        assert_eq!(plan.fused_shortcuts, 1);
        let strided_steps = g
            .ops
            .iter()
            .filter(|op| {
                matches!(op, Op::Conv(c) if !c.relu && g.layers[c.layer].stride == 2
                    && g.layers[c.layer].name.contains("fuse_layers"))
            })
            .count();
        assert_eq!(plan.steps.len(), g.ops.len() - strided_steps - 1);
        println!(
            "W32: {} graph ops, {} fused steps ({} exchange branches, {} shortcut fused)",
            g.ops.len(),
            plan.steps.len(),
            plan.fused_exchanges,
            plan.fused_shortcuts
        );
        let last = plan.last_uses(g);
        let mut written = vec![false; g.values.len()];
        written[Graph::INPUT.0] = true;
        for (i, step) in plan.steps.iter().enumerate() {
            for v in step.inputs() {
                assert!(written[v.0], "step {i} reads {v:?} before it is written");
                assert!(last[v.0] >= i);
            }
            if let Step::Conv { sources, terms, .. } = step {
                assert!(!sources.is_empty() && sources.len() <= MAX_SOURCES);
                assert!(terms.len() <= MAX_TERMS);
                let l0 = &g.layers[sources[0].1];
                for &(v, l) in sources {
                    let l = &g.layers[l];
                    assert_eq!(
                        (l.kernel, l.stride, l.cout),
                        (l0.kernel, l0.stride, l0.cout)
                    );
                    let (s, s0) = (g.shape(v), g.shape(sources[0].0));
                    assert_eq!((s.h, s.w), (s0.h, s0.w));
                }
            }
            written[step.output().0] = true;
        }
    }
}
