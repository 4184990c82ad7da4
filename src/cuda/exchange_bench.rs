//! Exchange units fused against unfused, on the GPU, in f16 NHWC.
//!
//! For each output branch of each exchange unit (`stageS.M.fuse.i`), its whole cone: the
//! 1×1 convs of the coarser branches, the strided chains of the finer ones, and the sum.
//! *Fused* is what the tensor-core engine launches (kernels/conv_tc.cu: BN folded, the
//! strided last steps summed in one GEMM with the identity and upsampled terms in its
//! epilogue). *Unfused* is what an eager framework launches: each conv alone (same
//! tensor-core kernel, no bias), then BN, ReLU, upsample, add and the final ReLU each a
//! kernel of its own (kernels/bn_relu.cu, kernels/unfused.cu). Both start from the same
//! random branch inputs; their outputs are compared before anything is timed, and each is
//! timed as a replayed CUDA graph (CUDA events, median).

use std::collections::HashSet;

use cudarc::driver::CudaSlice;

use super::gpu::{Gpu, capture, time_runs};
use super::probe::driver_err;
use super::tc::{ConvStep, How, Part, SplitNeed, SplitScratch, TcProgram, TcTuning, launch_conv};
use crate::error::{Error, Result};
use crate::graph::{ExchangeOp, Graph, Op, ValueId};
use crate::tensor::{Nchw, Tensor, relative_l2};
use crate::weights::{ConvParams, Model};

/// BN's epsilon in the unfused sequence (the official models' default).
const BN_EPS: f32 = 1e-5;
/// The unfused result must match the fused one this closely (both f16, summed in
/// different orders and rounded at different points).
const AGREEMENT: f64 = 1e-2;

/// One exchange-unit output branch, fused and unfused.
#[derive(Clone, Debug)]
pub struct ExchangeTiming {
    /// `stageS.M.fuse.i`: module `stageS.M`, output branch `i`.
    pub name: String,
    /// Median device milliseconds of the fused launches.
    pub fused_ms: f64,
    /// Median device milliseconds of the unfused sequence.
    pub unfused_ms: f64,
    /// Kernels launched, fused.
    pub fused_launches: usize,
    /// Kernels launched, unfused.
    pub unfused_launches: usize,
    /// Relative L2 distance between the two results.
    pub rel_l2: f64,
}

/// The ops of one exchange output branch: its convs (graph order) and the sum.
fn cone<'g>(graph: &'g Graph, e: &ExchangeOp) -> Vec<&'g Op> {
    let (module, branch) = e
        .name
        .rsplit_once(".fuse.")
        .expect("exchange ops are named MODULE.fuse.I");
    let prefix = format!("{module}.fuse_layers.{branch}.");
    graph
        .ops
        .iter()
        .filter(|op| match op {
            Op::Conv(c) => graph.layers[c.layer].name.starts_with(&prefix),
            Op::Exchange(x) => x.output == e.output,
        })
        .collect()
}

/// Times every exchange unit of `model` at batch `n` on GPU 0 (f16, tensor cores).
pub fn time_exchange_units(
    model: &Model,
    n: usize,
    warmup: usize,
    runs: usize,
) -> Result<Vec<ExchangeTiming>> {
    if n == 0 || runs == 0 {
        return Err(Error::Input("batch and runs must be at least 1".into()));
    }
    let gpu = Gpu::<half::f16>::open(0)?;
    let graph = &model.graph;
    let tc = TcProgram::new(&gpu, model)?;
    let mut out = Vec::new();
    for e in graph.ops.iter().filter_map(|op| match op {
        Op::Exchange(e) => Some(e),
        Op::Conv(_) => None,
    }) {
        out.push(time_unit(&gpu, model, &tc, e, n, warmup, runs)?);
    }
    Ok(out)
}

/// Device buffers by value, NHWC, `n` images each.
struct Buffers {
    by_value: Vec<Option<CudaSlice<half::f16>>>,
}

impl Buffers {
    fn get(&self, v: ValueId) -> &CudaSlice<half::f16> {
        self.by_value[v.0]
            .as_ref()
            .expect("every value of the cone has a buffer")
    }

    fn addr(&self, gpu: &Gpu<half::f16>, v: ValueId) -> u64 {
        gpu.addr(self.get(v))
    }
}

#[allow(clippy::too_many_arguments)]
fn time_unit(
    gpu: &Gpu<half::f16>,
    model: &Model,
    tc: &TcProgram<half::f16>,
    e: &ExchangeOp,
    n: usize,
    warmup: usize,
    runs: usize,
) -> Result<ExchangeTiming> {
    let graph = &model.graph;
    let ops = cone(graph, e);
    let inside: HashSet<ValueId> = ops.iter().map(|op| op.output()).collect();
    let mut bufs = Buffers {
        by_value: (0..graph.values.len()).map(|_| None).collect(),
    };
    for op in &ops {
        for v in op.inputs().into_iter().chain([op.output()]) {
            if bufs.by_value[v.0].is_some() {
                continue;
            }
            let len = n * graph.shape(v).len();
            bufs.by_value[v.0] = Some(if inside.contains(&v) {
                gpu.alloc(len)?
            } else {
                let x = Tensor::random_normal(Nchw::batch(n, graph.shape(v)), rand::random());
                gpu.upload(&super::gpu::nhwc_padded::<half::f16>(&x, 1))?
            });
        }
    }
    let addr = |v: ValueId| bufs.addr(gpu, v);
    let keep = |v: ValueId| inside.contains(&v);
    let unfused = Unfused::new(gpu, model, &ops, n)?;
    // Both split K the way the engine does, in one scratch (one stream).
    let sms = gpu.info.multiprocessors;
    let room = (0..tc.io.len())
        .filter(|&i| keep(tc.io[i].1))
        .map(|i| tc.split_need(i..i + 1, n, sms))
        .chain(
            unfused
                .convs
                .iter()
                .map(|c| c.step.plan(n, sms, true).need()),
        )
        .fold(SplitNeed::default(), SplitNeed::max);
    let scratch = SplitScratch::new(gpu, room)?;
    let how = How {
        tuning: TcTuning::default(),
        scratch: Some(&scratch),
    };
    let fused = || tc.launch_where(gpu, graph, n, &addr, &keep, how);
    let fused_launches = tc.steps_writing(&keep);

    let final_len = n * graph.shape(e.output).len();
    fused()?;
    let want = gpu.download(bufs.get(e.output), final_len)?;
    unfused.launch(gpu, &addr, how)?;
    let got = gpu.download(bufs.get(e.output), final_len)?;
    let got: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    let want: Vec<f64> = want.iter().map(|v| f64::from(v.to_f32())).collect();
    if got.iter().any(|v| !v.is_finite()) {
        return Err(Error::Cuda {
            what: format!("exchange unit {}", e.name),
            reason: "the unfused sequence produced a non-finite value".into(),
        });
    }
    let rel_l2 = relative_l2(&got, &want).unwrap_or(f64::INFINITY);
    if rel_l2.is_nan() || rel_l2 > AGREEMENT {
        return Err(Error::Cuda {
            what: format!("exchange unit {}", e.name),
            reason: format!("fused and unfused results differ: relative L2 {rel_l2:.3e}"),
        });
    }

    let median = |g: &cudarc::driver::CudaGraph| -> Result<f64> {
        let replay = || g.launch().map_err(driver_err("replaying a CUDA graph"));
        for _ in 0..warmup {
            replay()?;
        }
        let mut ms = time_runs(&gpu.stream, runs, replay)?;
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    let fused_graph = capture(&gpu.stream, fused)?;
    let unfused_graph = capture(&gpu.stream, || unfused.launch(gpu, &addr, how))?;
    Ok(ExchangeTiming {
        name: e.name.clone(),
        fused_ms: median(&fused_graph)?,
        unfused_ms: median(&unfused_graph)?,
        fused_launches,
        unfused_launches: unfused.launches(),
        rel_l2,
    })
}

/// One conv of the cone, unfused: the raw conv into `raw`, then BN (and ReLU) apart.
struct UnfusedConv {
    step: ConvStep<half::f16>,
    raw: CudaSlice<half::f16>,
    /// gamma = 1, beta = the folded bias, mean = 0, var = 1 − eps: BN that adds the bias.
    stats: [CudaSlice<f32>; 4],
    relu: bool,
    output: ValueId,
}

/// The cone as an eager framework runs it.
struct Unfused {
    convs: Vec<UnfusedConv>,
    sum: ExchangeOp,
    shape: crate::graph::Chw,
    n: usize,
    scratch: CudaSlice<half::f16>,
}

impl Unfused {
    fn new(gpu: &Gpu<half::f16>, model: &Model, ops: &[&Op], n: usize) -> Result<Self> {
        let graph = &model.graph;
        let mut convs = Vec::new();
        let mut sum = None;
        for op in ops {
            match op {
                Op::Conv(c) => {
                    let layer = &graph.layers[c.layer];
                    let folded = &model.params[c.layer];
                    let params = ConvParams {
                        weight: folded.weight.clone(),
                        bias: vec![0.0; layer.cout],
                    };
                    let part = Part {
                        input: c.input,
                        layer,
                        params: &params,
                        stored_cin: layer.cin,
                    };
                    let input = graph.shape(c.input);
                    let step = ConvStep::new(gpu, &[part], input, &[], false, c.output)?;
                    let ones = vec![1.0f32; layer.cout];
                    let var = vec![1.0 - BN_EPS; layer.cout];
                    convs.push(UnfusedConv {
                        step,
                        raw: gpu.alloc(n * graph.shape(c.output).len())?,
                        stats: [
                            gpu.upload(&ones)?,
                            gpu.upload(&folded.bias)?,
                            gpu.upload(&vec![0.0f32; layer.cout])?,
                            gpu.upload(&var)?,
                        ],
                        relu: c.relu,
                        output: c.output,
                    });
                }
                Op::Exchange(e) => sum = Some(e.clone()),
            }
        }
        let sum = sum.ok_or_else(|| Error::Config("an exchange cone without its sum".into()))?;
        let shape = graph.shape(sum.output);
        Ok(Unfused {
            convs,
            scratch: gpu.alloc(n * shape.len())?,
            sum,
            shape,
            n,
        })
    }

    fn launches(&self) -> usize {
        let convs: usize = self.convs.iter().map(|c| 2 + usize::from(c.relu)).sum();
        let ups = self.sum.terms.iter().filter(|t| t.1 > 1).count();
        convs + ups + (self.sum.terms.len() - 1) + 1
    }

    /// conv, BN, ReLU per conv; then `y = t0`, and for each further term an upsample
    /// (when coarser) and an add; then the ReLU.
    fn launch(
        &self,
        gpu: &Gpu<half::f16>,
        addr: &dyn Fn(ValueId) -> u64,
        how: How<'_>,
    ) -> Result<()> {
        let n = self.n;
        for c in &self.convs {
            let raw = gpu.addr(&c.raw);
            let out = addr(c.output);
            let shape = c.step.output_shape;
            let to_raw = |v| if v == c.output { raw } else { addr(v) };
            launch_conv(gpu, &c.step, n, false, &to_raw, how)?;
            let stats = c.stats.each_ref().map(|s| gpu.addr(s));
            let nhwc = crate::graph::Chw {
                c: shape.c,
                h: 1,
                w: 1,
            };
            gpu.bn_relu(raw, stats, nhwc, n * shape.h * shape.w, out, BN_EPS, false)?;
            if c.relu {
                gpu.relu(out, out, n * shape.len())?;
            }
        }
        let (y, total) = (addr(self.sum.output), n * self.shape.len());
        let scratch = gpu.addr(&self.scratch);
        let mut acc = None;
        for &(v, f) in &self.sum.terms {
            let mut t = addr(v);
            if f > 1 {
                // The first term upsampled is the sum so far: straight into y.
                let to = if acc.is_none() { y } else { scratch };
                gpu.upsample_nhwc(t, to, self.shape, n, f)?;
                t = to;
            }
            acc = Some(match acc {
                None => t,
                Some(a) => {
                    gpu.add(a, t, y, total)?;
                    y
                }
            });
        }
        gpu.relu(acc.unwrap_or(y), y, total)
    }
}
