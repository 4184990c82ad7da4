//! The CPU reference engines: the graph executed op by op, in f32 ([`CpuEngine`], the
//! engine every GPU result is checked against, with the f64 evaluation of the same f32
//! parameters that `hrnet verify` measures it by) or in f64 from the checkpoint's values
//! ([`CpuF64Engine`]: the official model as it computes in float64).

pub mod ops;

use half::f16;

use crate::error::Result;
use crate::graph::{Chw, Graph, Op, ValueId};
use crate::tensor::{Nchw, Tensor};
use crate::weights::{ConvParamsF64, Model};
use ops::Element;

/// Observes (and may rewrite) values while the graph runs. Both methods do nothing
/// unless overridden.
pub trait Hook<T> {
    /// Called on a conv's output after its bias and before its residual and ReLU.
    fn after_conv(&mut self, _layer: usize, _out: &mut [T], _batch: usize, _shape: Chw) {}
    /// Called on every op's final output, which it may rewrite before any reader sees it.
    fn after_op(&mut self, _value: ValueId, _out: &mut [T], _batch: usize, _shape: Chw) {}
}

/// A hook that observes nothing.
pub struct NoHook;

impl<T> Hook<T> for NoHook {}

/// Runs `graph` on `batch` images, `params[i]` = (weight, bias) of `graph.layers[i]`.
/// Each value is freed after its last reader.
pub fn execute<T: Element>(
    graph: &Graph,
    params: &[(&[T], &[T])],
    input: Vec<T>,
    batch: usize,
    hook: &mut dyn Hook<T>,
) -> Vec<T> {
    let last_use = graph.last_uses();
    let mut values: Vec<Option<Vec<T>>> = vec![None; graph.values.len()];
    values[Graph::INPUT.0] = Some(input);
    let mut col = Vec::new();
    for (i, op) in graph.ops.iter().enumerate() {
        let output = op.output();
        let s = graph.shape(output);
        let mut out = vec![T::zero(); batch * s.len()];
        match op {
            Op::Conv(c) => {
                let l = &graph.layers[c.layer];
                let si = graph.shape(c.input);
                let x = live(&values, c.input);
                let (w, b) = params[c.layer];
                for (xi, oi) in x.chunks_exact(si.len()).zip(out.chunks_exact_mut(s.len())) {
                    ops::conv2d(xi, si, l, w, b, oi, &mut col);
                }
                hook.after_conv(c.layer, &mut out, batch, s);
                ops::residual_relu(&mut out, c.residual.map(|r| live(&values, r)), c.relu);
            }
            Op::Exchange(e) => {
                for &(v, factor) in &e.terms {
                    let st = graph.shape(v);
                    let x = live(&values, v);
                    for (xi, oi) in x.chunks_exact(st.len()).zip(out.chunks_exact_mut(s.len())) {
                        ops::upsample_add(xi, st, factor, oi);
                    }
                }
                ops::relu_in_place(&mut out);
            }
        }
        hook.after_op(output, &mut out, batch, s);
        values[output.0] = Some(out);
        for v in op.inputs() {
            if last_use[v.0] == i {
                values[v.0] = None;
            }
        }
    }
    values[graph.output.0]
        .take()
        .expect("the output is written by the last op")
}

/// A value that an op reads: the graph orders ops so that it is written and not yet freed
/// (see the graph's `ops_read_only_written_values` test).
fn live<T>(values: &[Option<Vec<T>>], v: ValueId) -> &[T] {
    values[v.0]
        .as_deref()
        .expect("the graph reads only live values")
}

/// The CPU reference engine over a loaded [`Model`]. `Send` and `Sync`: one engine may
/// serve many threads.
#[derive(Clone, Debug)]
pub struct CpuEngine {
    model: Model,
}

impl CpuEngine {
    /// Wraps a model.
    #[must_use]
    pub fn new(model: Model) -> Self {
        CpuEngine { model }
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Heatmaps `N × joints × H/4 × W/4` for a normalised `N × 3 × H × W` batch, in f32.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.forward_with(input, &mut NoHook)
    }

    /// [`CpuEngine::forward`] with a hook that sees every value.
    pub fn forward_with(&self, input: &Tensor, hook: &mut dyn Hook<f32>) -> Result<Tensor> {
        let g = &self.model.graph;
        g.check_input(input)?;
        let params: Vec<(&[f32], &[f32])> = self
            .model
            .params
            .iter()
            .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
            .collect();
        let n = input.shape().n;
        let out = execute(g, &params, input.data().to_vec(), n, hook);
        Tensor::new(Nchw::batch(n, g.output_shape()), out)
    }

    /// The network as an engine that stores f16 computes it: the folded weights, the input
    /// and every op's output rounded to f16, arithmetic and biases in f32 (the CUDA f16
    /// engines' storage, op for op). Its distance from [`CpuEngine::forward_f64`] is the
    /// error that f16 storage alone causes on this network and input: the floor that the
    /// f16 engines are judged against ([`crate::accuracy::F16Floor`]).
    pub fn forward_f16_storage(&self, input: &Tensor) -> Result<Tensor> {
        let g = &self.model.graph;
        g.check_input(input)?;
        let weights: Vec<Vec<f32>> = self
            .model
            .params
            .iter()
            .map(|p| {
                let mut w = p.weight.clone();
                round_f16(&mut w);
                w
            })
            .collect();
        let params: Vec<(&[f32], &[f32])> = weights
            .iter()
            .zip(&self.model.params)
            .map(|(w, p)| (w.as_slice(), p.bias.as_slice()))
            .collect();
        let mut x = input.data().to_vec();
        round_f16(&mut x);
        let n = input.shape().n;
        let out = execute(g, &params, x, n, &mut StoreF16);
        Tensor::new(Nchw::batch(n, g.output_shape()), out)
    }

    /// The same network evaluated in f64 (weights and input widened from f32): the
    /// reference that f32 results are measured against.
    pub fn forward_f64(&self, input: &Tensor) -> Result<Vec<f64>> {
        let g = &self.model.graph;
        g.check_input(input)?;
        let wide: Vec<(Vec<f64>, Vec<f64>)> = self
            .model
            .params
            .iter()
            .map(|p| (widen(&p.weight), widen(&p.bias)))
            .collect();
        let params: Vec<(&[f64], &[f64])> = wide
            .iter()
            .map(|(w, b)| (w.as_slice(), b.as_slice()))
            .collect();
        Ok(execute(
            g,
            &params,
            widen(input.data()),
            input.shape().n,
            &mut NoHook,
        ))
    }
}

/// The official model in float64: the graph run in f64 on parameters folded in f64 from
/// the checkpoint's values ([`Model::params_f64`]), so that its heatmaps are those of
/// `lib/models/pose_hrnet.py` after `model.double()` to f64 rounding (2.7e-14 relative L2 on
/// the committed official case, where [`CpuEngine`] is at 1.1e-5). About twice the time of
/// [`CpuEngine`]. `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct CpuF64Engine {
    graph: Graph,
    params: Vec<ConvParamsF64>,
}

impl CpuF64Engine {
    /// Folds the model's parameters in f64.
    #[must_use]
    pub fn new(model: &Model) -> Self {
        CpuF64Engine {
            graph: model.graph.clone(),
            params: model.params_f64(),
        }
    }

    /// The topology.
    #[must_use]
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Heatmaps `N × joints × H/4 × W/4`, in f64, for a normalised f32 batch (widened
    /// exactly, as `.double()` widens it).
    pub fn forward(&self, input: &Tensor) -> Result<Vec<f64>> {
        self.forward_wide(input.shape(), widen(input.data()))
    }

    /// [`CpuF64Engine::forward`] for an f64 batch of `shape`.
    pub fn forward_wide(&self, shape: Nchw, input: Vec<f64>) -> Result<Vec<f64>> {
        self.graph.check_batch(shape, &input)?;
        let params: Vec<(&[f64], &[f64])> = self
            .params
            .iter()
            .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
            .collect();
        Ok(execute(&self.graph, &params, input, shape.n, &mut NoHook))
    }
}

/// Rounds every op's output to f16 and back, as an engine that stores f16 does.
struct StoreF16;

impl Hook<f32> for StoreF16 {
    fn after_op(&mut self, _: ValueId, out: &mut [f32], _: usize, _: Chw) {
        round_f16(out);
    }
}

fn round_f16(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}
