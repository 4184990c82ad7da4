//! Where a forward's time goes: each launch of the forward timed alone, as the forward
//! makes it (the same kernels, tiles, splits, groups and chunks of the front, on the
//! same memory), next to the work it does and the bytes it must move. The whole
//! forward's time, less the sum of its launches' times, is what the launches cost
//! together beyond their work: the gaps between dependent launches, less what the
//! streams overlap.

use super::{Net, Program};
use crate::cuda::gpu::{GpuElem, capture, time_runs};
use crate::cuda::tc::Tiles;
use crate::error::Result;
use crate::graph::fused::{FusedPlan, Step};
use crate::graph::{Chw, Graph, Op, ValueId};
use crate::tensor::Tensor;

/// One launch of a forward, as [`crate::cuda::CudaEngine::profile`] timed it.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchProfile {
    /// The steps it runs: per step the names of the convolutions summed in it (joined by
    /// `+`) or the exchange sum's name.
    pub steps: Vec<String>,
    /// Each step's output, per image.
    pub outputs: Vec<Chw>,
    /// The kernel, as `hrnet doctor` lists it (for members of a group run one after
    /// another, the first's).
    pub kernel: String,
    /// Images per kernel launch: the batch, or a chunk of it for the front in chunks.
    pub images: usize,
    /// Kernels launched for it in one forward: one per chunk of the front, and one per
    /// member of a group whose members do not take the smallest tile.
    pub kernels: usize,
    /// For tensor-core convolutions: the tile, the most ways K is split, and the thread
    /// blocks of one kernel launch.
    pub tiles: Option<Tiles>,
    /// Multiply-adds in one forward (the layers' own; the image's channels padded to 8
    /// not counted).
    pub multiply_adds: u64,
    /// Bytes one forward must move for it: each value it reads and writes once, its
    /// weights and biases once.
    pub bytes: u64,
    /// Median device time of one forward's share, milliseconds.
    pub ms: f64,
}

impl LaunchProfile {
    /// Arithmetic rate, TFLOP/s (two operations a multiply-add).
    #[must_use]
    pub fn tflops(&self) -> f64 {
        2.0 * self.multiply_adds as f64 / (self.ms * 1e9)
    }

    /// Rate of the bytes it must move, GB/s.
    #[must_use]
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / (self.ms * 1e6)
    }
}

/// Per step of a program, the names of what it runs and its multiply-adds per image:
/// the fused plan's steps for the tensor-core program, the graph's ops for the direct one.
fn work(graph: &Graph, fused: bool) -> Vec<(String, u64)> {
    let conv = |layers: &mut dyn Iterator<Item = (ValueId, usize)>, output: ValueId| {
        let out = graph.shape(output);
        let (names, macs): (Vec<&str>, Vec<usize>) = layers
            .map(|(_, l)| {
                let layer = &graph.layers[l];
                (layer.name.as_str(), layer.weight_len() * out.h * out.w)
            })
            .unzip();
        (names.join("+"), macs.iter().sum::<usize>() as u64)
    };
    if fused {
        FusedPlan::new(graph)
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv {
                    sources, output, ..
                } => conv(&mut sources.iter().copied(), *output),
                Step::Exchange(e) => (e.name.clone(), 0),
            })
            .collect()
    } else {
        graph
            .ops
            .iter()
            .map(|op| match op {
                Op::Conv(c) => conv(&mut std::iter::once((c.input, c.layer)), c.output),
                Op::Exchange(e) => (e.name.clone(), 0),
            })
            .collect()
    }
}

impl<T: GpuElem> Net<T> {
    /// The forward's launches on `input`, in launch order, each timed alone: the batch
    /// run once so that every value holds what a forward leaves there, then each launch
    /// (over every chunk of the front where it is chunked) `repeats` times back to back
    /// on one stream, as a CUDA graph when graphs are on, timed over `runs` runs after
    /// an untimed one. Repeating a step that writes its sum over its input changes the
    /// values later launches read, not what they do; the next forward starts from its
    /// input.
    pub(super) fn profile(
        &mut self,
        input: &Tensor,
        repeats: usize,
        runs: usize,
    ) -> Result<Vec<LaunchProfile>> {
        let (repeats, runs) = (repeats.max(1), runs.max(1));
        let n = self.upload(input, false)?;
        self.execute(n)?;
        let steps = self.steps_io.len();
        // Each launch as launch_all makes it: its leading step, its layout, and the
        // (first image, images) of each kernel launch.
        let mut launches = Vec::new();
        match self.chunks() {
            None => launches.extend((0..steps).map(|i| (i, &self.whole, vec![(0, n)]))),
            Some(c) => {
                let chunks: Vec<(usize, usize)> = (0..n)
                    .step_by(c.chunk)
                    .map(|first| (first, c.chunk.min(n - first)))
                    .collect();
                launches.extend((0..c.front).map(|i| (i, &c.inner, chunks.clone())));
                launches.extend((c.front..steps).map(|i| (i, &c.outer, vec![(0, n)])));
            }
        }
        let work = work(&self.graph, matches!(self.program, Program::TensorCore(_)));
        let size = std::mem::size_of::<T>();
        let sms = self.gpu.info.multiprocessors;
        let stream = self.gpu.stream.clone();
        let mut rows = Vec::new();
        self.gpu.use_stream(0);
        for (i, layout, chunks) in launches {
            let group = layout.schedule.group[i];
            if group == 0 {
                continue;
            }
            let members = i..i + group;
            let scratch = layout.schedule.stream[i];
            let once = || {
                chunks.iter().try_for_each(|&(first, images)| {
                    self.launch(members.clone(), first, images, scratch)
                })
            };
            let repeated = || (0..repeats).try_for_each(|_| once());
            let mut ms = if self.graphs_on && self.graph_fallback.is_none() {
                let graph = capture(&stream, repeated)?;
                let replay = || {
                    graph
                        .launch()
                        .map_err(super::driver_err("replaying a profile graph"))
                };
                replay()?;
                time_runs(&stream, runs, replay)?
            } else {
                repeated()?;
                time_runs(&stream, runs, repeated)?
            };
            ms.sort_by(f64::total_cmp);
            let images = chunks[0].1;
            let (kernel, kernels, tiles) = match &self.program {
                Program::TensorCore(tc) => {
                    let d = tc.describe(members.clone(), images, sms, self.tuning);
                    (d.kernel, d.kernels, d.tiles)
                }
                Program::Direct { .. } => (self.direct_kernel(i), 1, None),
            };
            let io = &self.steps_io[members.clone()];
            let mut touched: Vec<ValueId> = io
                .iter()
                .flat_map(|(inputs, output)| inputs.iter().chain(std::iter::once(output)))
                .copied()
                .collect();
            touched.sort_unstable();
            touched.dedup();
            let values: usize = touched.iter().map(|v| self.value_len[v.0]).sum();
            let weights: usize = members.clone().map(|s| self.step_weight_bytes(s)).sum();
            rows.push(LaunchProfile {
                steps: members.clone().map(|s| work[s].0.clone()).collect(),
                outputs: io.iter().map(|(_, o)| self.graph.shape(*o)).collect(),
                kernel,
                images,
                kernels: kernels * chunks.len(),
                tiles,
                multiply_adds: members.map(|s| work[s].1).sum::<u64>() * n as u64,
                bytes: (values * n * size + weights) as u64,
                ms: ms[ms.len() / 2] / repeats as f64,
            });
        }
        Ok(rows)
    }

    /// The direct program's kernel for step `i`, as kernels/*.cu names it.
    fn direct_kernel(&self, i: usize) -> String {
        let base = match &self.graph.ops[i] {
            Op::Conv(c) => {
                let l = &self.graph.layers[c.layer];
                format!("conv_k{}s{}", l.kernel, l.stride)
            }
            Op::Exchange(_) => "exchange".into(),
        };
        base + T::SUFFIX
    }

    /// Bytes of step `i`'s weights and biases on the device.
    fn step_weight_bytes(&self, i: usize) -> usize {
        match &self.program {
            Program::TensorCore(tc) => tc.step_weight_bytes(i),
            Program::Direct { weights, biases } => match &self.graph.ops[i] {
                Op::Conv(c) => {
                    weights[c.layer].len() * std::mem::size_of::<T>()
                        + biases[c.layer].len() * std::mem::size_of::<f32>()
                }
                Op::Exchange(_) => 0,
            },
        }
    }
}
