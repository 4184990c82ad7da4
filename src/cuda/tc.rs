//! The tensor-core program: the fused plan (`graph::fused`) run with kernels/conv_tc.cu on
//! NHWC activations in f16 or f32. Each conv step's weights are packed once at upload as
//! `[Cout][Σ_s K²·Cin_s]` (channels padded to 8, the sources side by side) with the summed
//! bias; the tile of each launch is chosen from its GEMM shape and the GPU's SM count.

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

use super::gpu::{Gpu, GpuElem, dim_i32, grid_dim};
use super::probe::driver_err;
use super::schedule::GROUP;
use crate::error::{Error, Result};
use crate::graph::fused::{FusedPlan, MAX_SOURCES, MAX_TERMS, Step};
use crate::graph::{Chw, ConvLayer, Graph, ValueId};
use crate::weights::{ConvParams, Model};

/// The launch parameters of kernels/conv_tc.cu, field for field (`struct TcArgs` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct TcArgs {
    src: [u64; MAX_SOURCES],
    w: u64,
    bias: u64,
    term: [u64; MAX_TERMS],
    y: u64,
    /// Split K: the partial sums and the per-tile arrival counters (null when unsplit).
    part: u64,
    count: u64,
    /// Output strides in elements: image, pixel, channel.
    ys: [i64; 3],
    cin: [i32; MAX_SOURCES],
    kbeg: [i32; MAX_SOURCES],
    factor: [i32; MAX_TERMS],
    nsrc: i32,
    n: i32,
    hi: i32,
    wi: i32,
    ho: i32,
    wo: i32,
    cout: i32,
    k: i32,
    relu: i32,
    splits: i32,
    /// Copy the sources through L1 (`cp.async.ca`) rather than L2 only (`.cg`).
    l1_a: i32,
}

const _: () = assert!(std::mem::size_of::<TcArgs>() == 208);

// SAFETY: `TcArgs` is plain data (integers only), `#[repr(C)]` with no padding, laid out as
// the kernel's `struct TcArgs` (both assert 208 bytes); the kernel reads it by value.
unsafe impl DeviceRepr for TcArgs {}

/// The launch parameters of a grouped kernel (`struct TcGroup` in kernels/conv_tc.cu):
/// up to [`GROUP`] convolutions, member j's blocks ending at `end[j]` of grid x.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct TcGroup {
    g: [TcArgs; GROUP],
    end: [i32; GROUP],
    members: i32,
    pad: i32,
}

const _: () = assert!(std::mem::size_of::<TcGroup>() == GROUP * 208 + 4 * GROUP + 8);

// SAFETY: `TcGroup` is plain data, `#[repr(C)]` with no padding (both sides assert the
// size), laid out as the kernel's `struct TcGroup`; the kernel reads it by value.
unsafe impl DeviceRepr for TcGroup {}

/// Choices for the tensor-core convolutions that change their speed, not what they compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcTuning {
    /// Split the K loop of a convolution across blocks when its tiles leave SMs idle (the
    /// deep branches at small batches). Changes results by rounding only: the partial sums
    /// are added in another order (still the same order on every run). Default on.
    pub split_k: bool,
    /// Copy activations into shared memory through L1 (`cp.async.ca`) instead of from L2
    /// only (`.cg`): a 3×3 convolution reads each input pixel for nine taps. Bitwise the
    /// same results. Default off.
    pub l1_activations: bool,
    /// Launch each convolution with programmatic stream serialization (sm_90 and newer;
    /// ignored before): its launch and prologue overlap the end of the kernel before it on
    /// its stream. Bitwise the same results. Default off.
    pub programmatic_launch: bool,
    /// Run the launches that take the smallest tile (32×32: every convolution at batch 1)
    /// with the 8-stage copy pipeline instead of the 3-stage one, so that a block has most
    /// of its K slices in flight at once rather than one ahead. Bitwise the same results.
    /// Default off.
    pub deep_pipeline: bool,
    /// Launch the convolutions of one kernel shape that could run at once (a module's
    /// branches, block by block) as one grouped launch, where all of them take the
    /// smallest tile (at batch 1): about half the launches, the longest chain of them
    /// unchanged. Where they do not, they run one after another on one stream. Bitwise
    /// the same results. Default off.
    pub grouped: bool,
}

impl Default for TcTuning {
    fn default() -> Self {
        TcTuning {
            split_k: true,
            l1_activations: false,
            programmatic_launch: false,
            deep_pipeline: false,
            grouped: false,
        }
    }
}

impl std::fmt::Display for TcTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "split K {}, activations through L1 {}, programmatic launch {}, deep pipeline {}, \
             grouped launches {}",
            on(self.split_k),
            on(self.l1_activations),
            on(self.programmatic_launch),
            on(self.deep_pipeline),
            on(self.grouped)
        )
    }
}

/// Threads per block of every conv_tc kernel.
const THREADS: u32 = 128;
/// Bytes of a row's K slice in the kernels' pipeline: 32 halves or 16 floats.
const SLICE_BYTES: usize = 64;
/// The (kernel, stride) shapes compiled.
pub(crate) const SHAPES: [(usize, usize); 3] = [(3, 1), (3, 2), (1, 1)];

/// The tile that also comes with a deep (8-stage) copy pipeline and with grouped
/// kernels: the last, smallest, of every element type's `TC_TILES`.
pub(crate) const DEEP_TILE: (usize, usize) = (32, 32);

/// The kernels of one shape: `T::TC_TILES`, then `DEEP_TILE`'s deep variant, then its
/// grouped kernels (3-stage and deep).
fn kernels_per_shape<T: GpuElem>() -> usize {
    T::TC_TILES.len() + 3
}

/// The kernel names of element type `T`: for each of `SHAPES`, one per `T::TC_TILES`,
/// then `DEEP_TILE`'s deep variant, then its grouped kernels.
pub(crate) fn kernel_names<T: GpuElem>() -> Vec<String> {
    SHAPES
        .iter()
        .flat_map(|&(k, s)| {
            let (dm, dn) = DEEP_TILE;
            let small = move |rest: &str| format!("conv_tc_k{k}s{s}_{dm}x{dn}{rest}{}", T::SUFFIX);
            T::TC_TILES
                .iter()
                .map(move |&(bm, bn)| format!("conv_tc_k{k}s{s}_{bm}x{bn}{}", T::SUFFIX))
                .chain(["_deep", "_group", "_deep_group"].map(small))
        })
        .collect()
}

/// Where in `kernel_names::<T>()` the grouped kernel of `shape` is (deep or not).
fn group_index<T: GpuElem>(shape: usize, deep: bool) -> usize {
    shape * kernels_per_shape::<T>() + T::TC_TILES.len() + 1 + usize::from(deep)
}

/// Where in `kernel_names::<T>()` the kernel of `shape` (an index into `SHAPES`) and
/// `plan` is: the deep variant when `deep` and the plan's tile has one.
pub(crate) fn kernel_index<T: GpuElem>(shape: usize, plan: &LaunchPlan, deep: bool) -> usize {
    let variant = if deep && plan.shape == DEEP_TILE {
        T::TC_TILES.len()
    } else {
        plan.tile
    };
    shape * kernels_per_shape::<T>() + variant
}

/// Of `tiles` (largest first), the tile for an `m × cout` GEMM on `sms` multiprocessors:
/// the largest that still gives every SM a block, among those not much wider than
/// `cout`; else the one with most blocks.
#[must_use]
pub(crate) fn pick_tile(tiles: &[(usize, usize)], m: usize, cout: usize, sms: usize) -> usize {
    let widest = cout.next_multiple_of(32).max(32);
    let blocks = |(bm, bn): (usize, usize)| m.div_ceil(bm) * cout.div_ceil(bn);
    let fits: Vec<usize> = (0..tiles.len()).filter(|&i| tiles[i].1 <= widest).collect();
    fits.iter()
        .copied()
        .find(|&i| blocks(tiles[i]) >= sms)
        .unwrap_or_else(|| *fits.last().expect("the 32-wide tile always fits"))
}

/// K slices (of 32) each split keeps at least, so that its copy pipeline runs full.
const MIN_SLICES_PER_SPLIT: usize = 4;
/// The most ways a convolution's K is split.
pub(crate) const MAX_SPLITS: usize = 16;

/// How many ways to split the K loop of a launch of `tiles` tiles, `slices` K slices each,
/// on `sms` multiprocessors: enough for about one block per SM, each split at least
/// `MIN_SLICES_PER_SPLIT` slices long. 1 when the tiles already fill the GPU.
#[must_use]
pub(crate) fn pick_splits(tiles: usize, slices: usize, sms: usize) -> usize {
    (sms / tiles.max(1))
        .min(slices / MIN_SLICES_PER_SPLIT)
        .clamp(1, MAX_SPLITS)
}

/// How one conv step is launched at one batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaunchPlan {
    /// Index into the element type's `TC_TILES`.
    pub(crate) tile: usize,
    /// That tile: pixels × output channels.
    pub(crate) shape: (usize, usize),
    /// Output tiles (blocks per split).
    pub(crate) tiles: usize,
    /// Ways the K loop is split (grid z).
    pub(crate) splits: usize,
}

impl LaunchPlan {
    /// The plan for an `m × cout` GEMM with K = `k` in element type `T`; split only when
    /// `split_k`.
    #[must_use]
    pub(crate) fn new<T: GpuElem>(
        m: usize,
        cout: usize,
        k: usize,
        sms: usize,
        split_k: bool,
    ) -> Self {
        let tile = pick_tile(T::TC_TILES, m, cout, sms);
        let (bm, bn) = T::TC_TILES[tile];
        let tiles = m.div_ceil(bm) * cout.div_ceil(bn);
        let slice = SLICE_BYTES / std::mem::size_of::<T>();
        let splits = if split_k {
            pick_splits(tiles, k.div_ceil(slice), sms)
        } else {
            1
        };
        LaunchPlan {
            tile,
            shape: (bm, bn),
            tiles,
            splits,
        }
    }

    /// The split-K scratch this launch uses.
    #[must_use]
    pub(crate) fn need(&self) -> SplitNeed {
        if self.splits == 1 {
            return SplitNeed::default();
        }
        let (bm, bn) = self.shape;
        SplitNeed {
            partials: self.tiles * self.splits * bm * bn,
            counters: self.tiles,
        }
    }
}

/// Split-K scratch, in elements: f32 partial sums and u32 per-tile counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SplitNeed {
    pub(crate) partials: usize,
    pub(crate) counters: usize,
}

impl SplitNeed {
    /// Room for both.
    #[must_use]
    pub(crate) fn max(self, other: Self) -> Self {
        SplitNeed {
            partials: self.partials.max(other.partials),
            counters: self.counters.max(other.counters),
        }
    }

    /// Room for both side by side.
    #[must_use]
    pub(crate) fn plus(self, other: Self) -> Self {
        SplitNeed {
            partials: self.partials + other.partials,
            counters: self.counters + other.counters,
        }
    }

    /// Whether this much room holds `other`.
    fn holds(self, other: Self) -> bool {
        self.partials >= other.partials && self.counters >= other.counters
    }

    /// Device bytes.
    #[must_use]
    pub(crate) fn bytes(self) -> usize {
        self.partials * std::mem::size_of::<f32>() + self.counters * std::mem::size_of::<u32>()
    }
}

/// The split-K scratch of one stream: launches on one stream run one after another, so
/// they share it. The counters start at zero and every split launch leaves them zero.
pub(crate) struct SplitScratch {
    partials: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    room: SplitNeed,
}

impl SplitScratch {
    pub(crate) fn new<T: GpuElem>(gpu: &Gpu<T>, room: SplitNeed) -> Result<Self> {
        Ok(SplitScratch {
            partials: gpu.alloc(room.partials)?,
            counters: gpu.alloc(room.counters)?,
            room,
        })
    }

    /// Device bytes of its room, as `memory_for` counts them (a stream that never splits
    /// holds one-element placeholders, not counted).
    pub(crate) fn bytes(&self) -> usize {
        self.room.bytes()
    }
}

/// Channels a value is stored with in NHWC: the input image is padded to 8 so that every
/// 16-byte copy holds whole pixels' channels; the kernels need multiples of 8 elsewhere.
fn stored_channels(graph: &Graph, v: ValueId) -> usize {
    let c = graph.shape(v).c;
    if v == Graph::INPUT {
        c.next_multiple_of(8)
    } else {
        c
    }
}

/// Whether the tensor-core kernels can run `graph`: every value a convolution reads or a
/// sum writes has a multiple of 8 channels (the input image is padded; the heatmaps are
/// written NCHW and read by no convolution).
#[must_use]
pub(crate) fn supports(graph: &Graph) -> bool {
    (1..graph.values.len())
        .map(ValueId)
        .filter(|&v| v != graph.output)
        .all(|v| graph.shape(v).c.is_multiple_of(8))
}

/// The inputs of a fused step that it reads only where it writes, element for element,
/// before writing (`plan_arena` may put the output on one of them): the terms at the
/// output's resolution. kernels/conv_tc.cu's epilogue adds term element (n, oy, ox, co)
/// in the thread that then stores output element (n, oy, ox, co), at the same offset
/// wherever the output is NHWC (all but the heatmaps, stored NCHW, which have no terms);
/// kernels/exchange.cu reads and writes one element per thread.
pub(crate) fn overwritable(step: &Step, graph: &Graph) -> Vec<ValueId> {
    match step {
        Step::Conv { output, .. } if *output == graph.output => Vec::new(),
        Step::Conv { terms, .. } => crate::graph::unscaled(terms),
        Step::Exchange(e) => crate::graph::unscaled(&e.terms),
    }
}

/// One fused conv step, its weights packed in element type `T`.
pub(crate) struct ConvStep<T> {
    sources: Vec<ValueId>,
    terms: Vec<(ValueId, usize)>,
    output: ValueId,
    relu: bool,
    /// Index into SHAPES.
    shape: usize,
    cin: Vec<usize>,
    cout: usize,
    k: usize,
    input: Chw,
    /// Per-image shape of the result.
    pub(crate) output_shape: Chw,
    weights: CudaSlice<T>,
    bias: CudaSlice<f32>,
}

enum TcStep<T> {
    Conv(Box<ConvStep<T>>),
    Exchange(crate::graph::ExchangeOp),
}

/// The fused plan with packed weights on the GPU, in element type `T`.
pub(crate) struct TcProgram<T> {
    steps: Vec<TcStep<T>>,
    /// The plan's steps as (inputs, output), for the arena planner.
    pub(crate) io: Vec<(Vec<ValueId>, ValueId)>,
    /// Per step, the inputs it may write its output over ([`overwritable`]).
    pub(crate) over: Vec<Vec<ValueId>>,
    pub(crate) last_uses: Vec<usize>,
    /// Elements per image of each value as stored (the input padded to 8 channels).
    pub(crate) value_len: Vec<usize>,
    pub(crate) weight_bytes: usize,
}

impl<T: GpuElem> TcProgram<T> {
    /// Packs `model` for the tensor-core kernels and uploads it.
    pub(crate) fn new(gpu: &Gpu<T>, model: &Model) -> Result<Self> {
        let graph = &model.graph;
        let plan = FusedPlan::new(graph);
        let mut weight_bytes = 0;
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            steps.push(match step {
                Step::Exchange(e) => TcStep::Exchange(e.clone()),
                Step::Conv {
                    sources,
                    terms,
                    relu,
                    output,
                } => {
                    let parts: Vec<Part<'_>> = sources
                        .iter()
                        .map(|&(input, l)| Part {
                            input,
                            layer: &graph.layers[l],
                            params: &model.params[l],
                            stored_cin: stored_channels(graph, input),
                        })
                        .collect();
                    let input = graph.shape(sources[0].0);
                    let s = ConvStep::new(gpu, &parts, input, terms, *relu, *output)?;
                    weight_bytes += s.bytes();
                    TcStep::Conv(Box::new(s))
                }
            });
        }
        let value_len = (0..graph.values.len())
            .map(|v| {
                let s = graph.shape(ValueId(v));
                stored_channels(graph, ValueId(v)) * s.h * s.w
            })
            .collect();
        Ok(TcProgram {
            io: plan
                .steps
                .iter()
                .map(|s| (s.inputs(), s.output()))
                .collect(),
            over: plan.steps.iter().map(|s| overwritable(s, graph)).collect(),
            last_uses: plan.last_uses(graph),
            steps,
            value_len,
            weight_bytes,
        })
    }

    /// The value each step writes.
    fn step_output(step: &TcStep<T>) -> ValueId {
        match step {
            TcStep::Conv(c) => c.output,
            TcStep::Exchange(e) => e.output,
        }
    }

    /// How many steps write a value that `keep` accepts.
    pub(crate) fn steps_writing(&self, keep: &dyn Fn(ValueId) -> bool) -> usize {
        self.steps
            .iter()
            .filter(|s| keep(Self::step_output(s)))
            .count()
    }

    /// The split-K scratch the launch of `steps` uses at batch `n` on `sms`
    /// multiprocessors: their needs side by side (a grouped launch runs them at once).
    pub(crate) fn split_need(
        &self,
        steps: std::ops::Range<usize>,
        n: usize,
        sms: usize,
    ) -> SplitNeed {
        self.steps[steps]
            .iter()
            .map(|s| match s {
                TcStep::Conv(c) => c.plan(n, sms, true).need(),
                TcStep::Exchange(_) => SplitNeed::default(),
            })
            .fold(SplitNeed::default(), SplitNeed::plus)
    }

    /// How a launch of `steps` (as [`TcProgram::launch_steps`] takes them) runs at batch
    /// `n` on `sms` multiprocessors with `tuning`: its kernel (for members run one after
    /// another, the first's), the kernels it launches (1, or one per step where they do
    /// not all take the smallest tile) and, for convolutions, their tiles.
    pub(crate) fn describe(
        &self,
        steps: std::ops::Range<usize>,
        n: usize,
        sms: usize,
        tuning: TcTuning,
    ) -> Described {
        let convs: Vec<&ConvStep<T>> = self.steps[steps.clone()]
            .iter()
            .filter_map(|s| match s {
                TcStep::Conv(c) => Some(&**c),
                TcStep::Exchange(_) => None,
            })
            .collect();
        let Some(first) = convs.first() else {
            return Described {
                kernel: format!("exchange_nhwc{}", T::SUFFIX),
                kernels: 1,
                tiles: None,
            };
        };
        let plans: Vec<LaunchPlan> = convs
            .iter()
            .map(|c| c.plan(n, sms, tuning.split_k))
            .collect();
        let grouped = convs.len() > 1 && together(&convs, &plans);
        let index = if grouped {
            group_index::<T>(first.shape, tuning.deep_pipeline)
        } else {
            kernel_index::<T>(first.shape, &plans[0], tuning.deep_pipeline)
        };
        Described {
            kernel: kernel_names::<T>().swap_remove(index),
            kernels: if grouped { 1 } else { convs.len() },
            tiles: Some(Tiles {
                tile: plans[0].shape,
                splits: plans.iter().map(|p| p.splits).max().unwrap_or(1),
                blocks: plans.iter().map(|p| p.tiles * p.splits).sum(),
            }),
        }
    }

    /// Bytes of step `i`'s weights and bias on the device (none for an exchange sum).
    pub(crate) fn step_weight_bytes(&self, i: usize) -> usize {
        match &self.steps[i] {
            TcStep::Conv(c) => c.bytes(),
            TcStep::Exchange(_) => 0,
        }
    }

    /// Whether steps `a` and `b` may be one grouped launch (kernels/conv_tc.cu's `_group`
    /// kernels) when nothing orders them: both convolutions of one kernel shape.
    pub(crate) fn joins(&self, a: usize, b: usize) -> bool {
        match (&self.steps[a], &self.steps[b]) {
            (TcStep::Conv(x), TcStep::Conv(y)) => x.shape == y.shape,
            _ => false,
        }
    }

    /// Launches `steps` (one step, or steps that [`TcProgram::joins`] accepts and nothing
    /// orders) for a batch of `n` on the GPU's current stream; `addr` gives a value's
    /// device address, `how` the tuning and the stream's split-K scratch.
    pub(crate) fn launch_steps(
        &self,
        gpu: &Gpu<T>,
        graph: &Graph,
        steps: std::ops::Range<usize>,
        n: usize,
        addr: &dyn Fn(ValueId) -> u64,
        how: How<'_>,
    ) -> Result<()> {
        if steps.len() > 1 {
            let members = self.steps[steps]
                .iter()
                .map(|s| match s {
                    TcStep::Conv(c) => Ok((&**c, c.output == graph.output)),
                    TcStep::Exchange(_) => Err(Error::Config(
                        "an exchange sum cannot be launched with other steps".into(),
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            return launch_group(gpu, &members, n, addr, how);
        }
        match &self.steps[steps.start] {
            TcStep::Conv(c) => launch_conv(gpu, c, n, c.output == graph.output, addr, how),
            TcStep::Exchange(e) => {
                let terms: Vec<(u64, usize)> = e.terms.iter().map(|&(v, f)| (addr(v), f)).collect();
                gpu.exchange(&terms, graph.shape(e.output), n, addr(e.output), true)
            }
        }
    }

    /// Launches, in order on the current stream, every step whose output `keep` accepts.
    pub(crate) fn launch_where(
        &self,
        gpu: &Gpu<T>,
        graph: &Graph,
        n: usize,
        addr: &dyn Fn(ValueId) -> u64,
        keep: &dyn Fn(ValueId) -> bool,
        how: How<'_>,
    ) -> Result<()> {
        for (i, step) in self.steps.iter().enumerate() {
            if keep(Self::step_output(step)) {
                self.launch_steps(gpu, graph, i..i + 1, n, addr, how)?;
            }
        }
        Ok(())
    }
}

/// How one launch of the program runs ([`TcProgram::describe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Described {
    /// The kernel, as kernels/*.cu names it.
    pub(crate) kernel: String,
    /// Kernels launched.
    pub(crate) kernels: usize,
    /// For convolutions, their tiles.
    pub(crate) tiles: Option<Tiles>,
}

/// The tiles of a tensor-core launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// Output pixels × output channels of a block (the first member's, for several).
    pub tile: (usize, usize),
    /// The most ways a member splits its K loop.
    pub splits: usize,
    /// Thread blocks, over every member and split.
    pub blocks: usize,
}

/// One convolution summed into a step: the layer, its folded parameters, and the channels
/// its input is stored with.
pub(crate) struct Part<'a> {
    pub(crate) input: ValueId,
    pub(crate) layer: &'a ConvLayer,
    pub(crate) params: &'a ConvParams,
    pub(crate) stored_cin: usize,
}

impl<T: GpuElem> ConvStep<T> {
    /// Packs the parts' weights side by side as `[cout][Σ K²·Cin_s]`, each part's block
    /// ordered (ky, kx, ci) with ci padded to the stored channels, sums their biases and
    /// uploads both. `input` is the parts' common input shape.
    pub(crate) fn new(
        gpu: &Gpu<T>,
        parts: &[Part<'_>],
        input: Chw,
        terms: &[(ValueId, usize)],
        relu: bool,
        output: ValueId,
    ) -> Result<Self> {
        let first = parts[0].layer;
        let shape = SHAPES
            .iter()
            .position(|&ks| ks == (first.kernel, first.stride))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: no tensor-core kernel for a {k}×{k} convolution with stride {s}",
                    first.name,
                    k = first.kernel,
                    s = first.stride
                ))
            })?;
        let cout = first.cout;
        for p in parts {
            if !p.stored_cin.is_multiple_of(8) || p.stored_cin < p.layer.cin {
                return Err(Error::Config(format!(
                    "{}: the tensor-core kernels need input channels stored in multiples of 8, \
                     not {}; use the direct kernels",
                    p.layer.name, p.stored_cin
                )));
            }
            if (p.layer.kernel, p.layer.stride, p.layer.cout) != (first.kernel, first.stride, cout)
            {
                return Err(Error::Config(format!(
                    "{} and {} cannot be summed in one launch",
                    first.name, p.layer.name
                )));
            }
        }
        let (w, bias, k) = pack::<T>(parts);
        Ok(ConvStep {
            sources: parts.iter().map(|p| p.input).collect(),
            terms: terms.to_vec(),
            output,
            relu,
            shape,
            cin: parts.iter().map(|p| p.stored_cin).collect(),
            cout,
            k,
            input,
            output_shape: {
                let (h, w) = first.out_size(input.h, input.w);
                Chw { c: cout, h, w }
            },
            weights: gpu.upload(&w)?,
            bias: gpu.upload(&bias)?,
        })
    }

    /// Its launch over `n` images on `sms` multiprocessors.
    pub(crate) fn plan(&self, n: usize, sms: usize, split_k: bool) -> LaunchPlan {
        let out = self.output_shape;
        LaunchPlan::new::<T>(n * out.h * out.w, self.cout, self.k, sms, split_k)
    }

    /// Bytes of its weights and bias on the device.
    fn bytes(&self) -> usize {
        self.weights.len() * std::mem::size_of::<T>() + self.bias.len() * 4
    }
}

/// The parts' weights side by side as `[cout][K]`, K = Σ K²·stored_cin, each part's block
/// ordered (ky, kx, ci) with the padding channels zero; the summed biases; K.
fn pack<T: GpuElem>(parts: &[Part<'_>]) -> (Vec<T>, Vec<f32>, usize) {
    let first = parts[0].layer;
    let (cout, kk) = (first.cout, first.kernel * first.kernel);
    let k: usize = parts.iter().map(|p| kk * p.stored_cin).sum();
    let mut w = vec![T::from_f32(0.0); cout * k];
    let mut bias = vec![0f64; cout];
    let mut kbeg = 0;
    for p in parts {
        let cin = p.layer.cin;
        for co in 0..cout {
            bias[co] += f64::from(p.params.bias[co]);
            for ci in 0..cin {
                for tap in 0..kk {
                    let from = (co * cin + ci) * kk + tap;
                    w[co * k + kbeg + tap * p.stored_cin + ci] = T::from_f32(p.params.weight[from]);
                }
            }
        }
        kbeg += kk * p.stored_cin;
    }
    (w, bias.iter().map(|&b| b as f32).collect(), k)
}

/// How a conv step is launched: the tuning, and the split-K scratch of the stream it
/// goes to (launches on one stream run one after another, so they share it).
#[derive(Clone, Copy)]
pub(crate) struct How<'a> {
    pub(crate) tuning: TcTuning,
    pub(crate) scratch: Option<&'a SplitScratch>,
}

/// The split-K scratch of `how` for a launch that needs `need` (an error if it is missing
/// or too small): the device addresses of its partial sums and counters.
fn scratch<T: GpuElem>(gpu: &Gpu<T>, how: How<'_>, need: SplitNeed) -> Result<(u64, u64)> {
    let room = how.scratch.map(|s| s.room).unwrap_or_default();
    how.scratch
        .filter(|_| room.holds(need))
        .map(|s| (gpu.addr(&s.partials), gpu.addr(&s.counters)))
        .ok_or_else(|| Error::Cuda {
            what: "a split-K convolution".into(),
            reason: format!("its scratch holds {room:?}, the launch needs {need:?}"),
        })
}

/// The kernel arguments of conv step `c` over `n` images at `plan`, written NHWC or
/// (`nchw`) NCHW, its split-K scratch at `part` and `count` (0 when unsplit).
fn conv_args<T: GpuElem>(
    c: &ConvStep<T>,
    gpu: &Gpu<T>,
    n: usize,
    nchw: bool,
    addr: &dyn Fn(ValueId) -> u64,
    (plan, (part, count)): (&LaunchPlan, (u64, u64)),
    tuning: TcTuning,
) -> Result<TcArgs> {
    let out = c.output_shape;
    dim_i32(n * c.input.h * c.input.w)?;
    dim_i32(n * out.h * out.w)?;
    let mut a = TcArgs {
        w: gpu.addr(&c.weights),
        bias: gpu.addr(&c.bias),
        y: addr(c.output),
        part,
        count,
        ys: if nchw {
            [(out.len()) as i64, 1, (out.h * out.w) as i64]
        } else {
            [(out.len()) as i64, out.c as i64, 1]
        },
        nsrc: dim_i32(c.sources.len())?,
        n: dim_i32(n)?,
        hi: dim_i32(c.input.h)?,
        wi: dim_i32(c.input.w)?,
        ho: dim_i32(out.h)?,
        wo: dim_i32(out.w)?,
        cout: dim_i32(c.cout)?,
        k: dim_i32(c.k)?,
        relu: i32::from(c.relu),
        splits: dim_i32(plan.splits)?,
        l1_a: i32::from(tuning.l1_activations),
        ..TcArgs::default()
    };
    let kk = c.k / c.cin.iter().sum::<usize>();
    let mut kbeg = 0;
    for (i, (&v, &ci)) in c.sources.iter().zip(&c.cin).enumerate() {
        a.src[i] = addr(v);
        a.cin[i] = dim_i32(ci)?;
        a.kbeg[i] = dim_i32(kbeg)?;
        kbeg += kk * ci;
    }
    for (i, &(v, f)) in c.terms.iter().enumerate() {
        a.term[i] = addr(v);
        a.factor[i] = dim_i32(f)?;
    }
    Ok(a)
}

/// Launches one conv step over `n` images, written NHWC or (`nchw`) NCHW. A conv that
/// gives too few tiles to fill the GPU splits its K when `how.tuning` says so, in
/// `how.scratch` (an error if that is missing or too small).
pub(crate) fn launch_conv<T: GpuElem>(
    gpu: &Gpu<T>,
    c: &ConvStep<T>,
    n: usize,
    nchw: bool,
    addr: &dyn Fn(ValueId) -> u64,
    how: How<'_>,
) -> Result<()> {
    let plan = c.plan(n, gpu.info.multiprocessors, how.tuning.split_k);
    let f: &CudaFunction = &gpu.tc[kernel_index::<T>(c.shape, &plan, how.tuning.deep_pipeline)];
    let (bm, bn) = plan.shape;
    let at = if plan.splits > 1 {
        scratch(gpu, how, plan.need())?
    } else {
        (0, 0)
    };
    let a = conv_args(c, gpu, n, nchw, addr, (&plan, at), how.tuning)?;
    let m = n * c.output_shape.h * c.output_shape.w;
    let grid = grid_dim("conv_tc", m.div_ceil(bm), c.cout.div_ceil(bn), plan.splits)?;
    // What the kernel touches (elements of T): every source holds n·hi·wi·cin_s, the
    // weights cout·k, the bias cout f32, each term n·(ho/f)·(wo/f)·cout and y n·ho·wo·cout
    // (the strides address inside it); when split, the scratch holds tiles·splits·BM·BN
    // f32 and tiles counters (checked above), and no other stream uses it. All are live
    // device buffers of this context; unused pointers are null.
    launch(gpu, f, grid, a, how.tuning).map_err(driver_err("launching a tensor-core convolution"))
}

/// Launches conv steps `members` (each with whether it is written NCHW), which read
/// nothing another writes, over `n` images: as one grouped launch when every one of
/// them takes the smallest tile (`DEEP_TILE`), their split-K scratch side by side in
/// `how.scratch`; else one after another on the current stream.
pub(crate) fn launch_group<T: GpuElem>(
    gpu: &Gpu<T>,
    members: &[(&ConvStep<T>, bool)],
    n: usize,
    addr: &dyn Fn(ValueId) -> u64,
    how: How<'_>,
) -> Result<()> {
    let sms = gpu.info.multiprocessors;
    let plans: Vec<LaunchPlan> = members
        .iter()
        .map(|(c, _)| c.plan(n, sms, how.tuning.split_k))
        .collect();
    let steps: Vec<&ConvStep<T>> = members.iter().map(|m| m.0).collect();
    if !together(&steps, &plans) {
        return members
            .iter()
            .try_for_each(|&(c, nchw)| launch_conv(gpu, c, n, nchw, addr, how));
    }
    let shape = steps[0].shape;
    let need = plans
        .iter()
        .fold(SplitNeed::default(), |t, p| t.plus(p.need()));
    let (mut part, mut count) = if need.bytes() > 0 {
        scratch(gpu, how, need)?
    } else {
        (0, 0)
    };
    let mut g = TcGroup {
        members: dim_i32(members.len())?,
        ..TcGroup::default()
    };
    let mut blocks = 0;
    for (j, (&(c, nchw), plan)) in members.iter().zip(&plans).enumerate() {
        let at = if plan.splits > 1 {
            (part, count)
        } else {
            (0, 0)
        };
        g.g[j] = conv_args(c, gpu, n, nchw, addr, (plan, at), how.tuning)?;
        let need = plan.need();
        part += (need.partials * std::mem::size_of::<f32>()) as u64;
        count += (need.counters * std::mem::size_of::<u32>()) as u64;
        blocks += plan.tiles * plan.splits;
        g.end[j] = dim_i32(blocks)?;
    }
    let f = &gpu.tc[group_index::<T>(shape, how.tuning.deep_pipeline)];
    let grid = grid_dim("conv_tc group", blocks, 1, 1)?;
    // Each member touches what its own launch would (see launch_conv), its split-K
    // scratch a range of its own after the members' before it, all of which the scratch
    // holds (checked above); members write no value another member reads (the schedule
    // groups only steps of one depth, which share no memory).
    launch(gpu, f, grid, g, how.tuning)
        .map_err(driver_err("launching grouped tensor-core convolutions"))
}

/// Whether conv steps launched with `plans` run as one grouped launch: 2 to [`GROUP`] of
/// one kernel shape, every one in the smallest tile (`DEEP_TILE`, which has the grouped
/// kernels).
fn together<T>(steps: &[&ConvStep<T>], plans: &[LaunchPlan]) -> bool {
    (2..=GROUP).contains(&steps.len())
        && steps.iter().all(|c| c.shape == steps[0].shape)
        && plans.iter().all(|p| p.shape == DEEP_TILE)
}

/// Launches a conv_tc kernel with parameters `args` over `grid` blocks of [`THREADS`]
/// on the current stream, with programmatic stream serialization when `tuning` asks
/// for it and the GPU has it (sm_90).
fn launch<T: GpuElem, A: DeviceRepr + Copy>(
    gpu: &Gpu<T>,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    args: A,
    tuning: TcTuning,
) -> std::result::Result<(), cudarc::driver::DriverError> {
    if tuning.programmatic_launch && gpu.info.compute_capability.0 >= 9 {
        return launch_programmatic(gpu, f, grid, args);
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.on().launch_builder(f);
    b.arg(&args);
    // SAFETY: `args` holds live device buffers of the sizes the kernel touches (see the
    // callers), in the layout of the kernel's parameter struct.
    unsafe { b.launch(cfg) }.map(|_| ())
}

/// Launches a conv_tc kernel on the current stream with programmatic stream
/// serialization (sm_90): it may start while the stream's previous kernel finishes, and
/// its blocks wait for that kernel (griddepcontrol.wait) before touching memory. Captured
/// into a CUDA graph, the dependency stays programmatic.
fn launch_programmatic<T: GpuElem, A: DeviceRepr + Copy>(
    gpu: &Gpu<T>,
    f: &CudaFunction,
    (gx, gy, gz): (u32, u32, u32),
    args: A,
) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    gpu.ctx.bind_to_thread()?;
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value: sys::CUlaunchAttributeValue {
            programmaticStreamSerializationAllowed: 1,
        },
    };
    let config = sys::CUlaunchConfig {
        gridDimX: gx,
        gridDimY: gy,
        gridDimZ: gz,
        blockDimX: THREADS,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: gpu.on().cu_stream(),
        attrs: &raw mut attr,
        numAttrs: 1,
    };
    let mut args = args;
    let mut params = [(&raw mut args).cast::<std::ffi::c_void>()];
    // SAFETY: `args` holds live device buffers of the sizes the kernel touches (see the
    // callers), laid out as the kernel's parameter struct; the driver copies parameters
    // and config before it returns, so the pointers to these locals do not outlive it.
    unsafe {
        sys::cuLaunchKernelEx(
            &raw const config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fill_the_gpu_and_fit_the_channels() {
        let tiles = <half::f16 as GpuElem>::TC_TILES;
        let pick = |m, cout| tiles[pick_tile(tiles, m, cout, 132)];
        // 32ch@64×48 at batch 1 on 132 SMs: 3072 pixels; 128×64 gives 24 blocks, 32×32 96.
        assert_eq!(pick(3072, 32), (32, 32));
        // At batch 32 the largest tile already gives 768 blocks (BN capped at 32 by cout 32).
        assert_eq!(pick(32 * 3072, 32), (128, 32));
        assert_eq!(pick(32 * 3072, 64), (128, 64));
        // 128×32 gives a wider layer as many blocks as 64×64, never more: it is taken
        // only where 32 channels are all there are. 64ch@32×24 at batch 8: 64×64 and
        // 128×32 give 96 blocks, 64×32 192.
        assert_eq!(pick(8 * 768, 64), (64, 32));
        assert_eq!(pick(8 * 3072, 32), (128, 32));
        // 17 heatmap channels: never a 64-wide tile.
        assert_eq!(pick(64 * 3072, 17).1, 32);
        let names = kernel_names::<half::f16>();
        assert_eq!(names.len(), SHAPES.len() * (tiles.len() + 3));
        assert!(names.contains(&"conv_tc_k3s2_64x32_f16".to_string()));
        // Every type's smallest tile is the one with a deep variant, found where it is named.
        assert_eq!(tiles.last(), Some(&DEEP_TILE));
        assert_eq!(<f32 as GpuElem>::TC_TILES.last(), Some(&DEEP_TILE));
        let batch1 = LaunchPlan::new::<half::f16>(3072, 32, 288, 132, true);
        let wide = LaunchPlan::new::<half::f16>(32 * 3072, 64, 576, 132, true);
        for (shape, &(k, s)) in SHAPES.iter().enumerate() {
            let name =
                |plan: &LaunchPlan, deep| &names[kernel_index::<half::f16>(shape, plan, deep)];
            assert_eq!(name(&batch1, false), &format!("conv_tc_k{k}s{s}_32x32_f16"));
            assert_eq!(
                name(&batch1, true),
                &format!("conv_tc_k{k}s{s}_32x32_deep_f16")
            );
            // A tile without a deep variant keeps its kernel.
            assert_eq!(name(&wide, true), &format!("conv_tc_k{k}s{s}_128x64_f16"));
            for (deep, rest) in [(false, ""), (true, "_deep")] {
                assert_eq!(
                    names[group_index::<half::f16>(shape, deep)],
                    format!("conv_tc_k{k}s{s}_32x32{rest}_group_f16")
                );
            }
        }
        let f32_names = kernel_names::<f32>();
        let f32_batch1 = LaunchPlan::new::<f32>(48, 256, 9 * 256, 132, true);
        assert_eq!(
            f32_names[kernel_index::<f32>(2, &f32_batch1, true)],
            "conv_tc_k1s1_32x32_deep_f32"
        );
        // f32 has the two smaller tiles; its K slices are 16 elements, so twice as many.
        let f32_tiles = <f32 as GpuElem>::TC_TILES;
        assert_eq!(
            f32_tiles[pick_tile(f32_tiles, 32 * 3072, 64, 132)],
            (64, 32)
        );
        assert!(kernel_names::<f32>().contains(&"conv_tc_k1s1_32x32_f32".to_string()));
        let f32_plan = LaunchPlan::new::<f32>(48, 256, 9 * 256, 132, true);
        assert_eq!((f32_plan.shape, f32_plan.splits), ((32, 32), 8));
        assert_eq!(LaunchPlan::new::<f32>(48, 256, 9 * 16, 132, true).splits, 2);
        assert_eq!(
            LaunchPlan::new::<half::f16>(48, 256, 9 * 16, 132, true).splits,
            1
        );
    }

    #[test]
    fn only_launches_that_leave_the_gpu_idle_split_k() {
        let sms = 132;
        // W32's four 3×3 shapes at batch 1 do the same MACs; the deep ones give few tiles
        // and long K loops: 256ch@8×6 is 16 tiles of 72 slices, split 8 ways (9 slices).
        let plan = |c: usize, h: usize, w: usize, n: usize| {
            LaunchPlan::new::<half::f16>(n * h * w, c, 9 * c, sms, true)
        };
        let b3 = plan(256, 8, 6, 1);
        assert_eq!((b3.shape, b3.tiles, b3.splits), ((32, 32), 16, 8));
        assert_eq!(
            b3.need(),
            SplitNeed {
                partials: 16 * 8 * 32 * 32,
                counters: 16
            }
        );
        assert_eq!(plan(128, 16, 12, 1).splits, 5);
        assert_eq!(plan(64, 32, 24, 1).splits, 2);
        // Branch 0 already gives 96 tiles of 9 slices: split, each would be too short.
        assert_eq!(plan(32, 64, 48, 1).splits, 1);
        assert_eq!(plan(32, 64, 48, 1).need(), SplitNeed::default());
        // At batch 64 every shape fills the GPU.
        for (c, h, w) in [(32, 64, 48), (64, 32, 24), (128, 16, 12), (256, 8, 6)] {
            assert_eq!(plan(c, h, w, 64).splits, 1, "{c}ch at batch 64");
        }
        // Off means off; a short K never splits; splits stay within MAX_SPLITS.
        assert_eq!(
            LaunchPlan::new::<half::f16>(48, 256, 9 * 256, sms, false).splits,
            1
        );
        assert_eq!(pick_splits(1, 7, sms), 1);
        assert_eq!(pick_splits(1, 10_000, sms), MAX_SPLITS);
        assert!(SplitNeed::default().holds(SplitNeed::default()));
        assert!(!SplitNeed::default().holds(b3.need()));
    }

    /// The packed weights, read the way kernels/conv_tc.cu reads them (K walked source by
    /// source, (ky, kx, ci) within, inputs NHWC with padded channels), give the sum of the
    /// parts' convolutions as the CPU reference computes them.
    #[test]
    fn packed_weights_give_the_summed_convolutions() {
        use crate::cpu::ops::conv2d;
        use crate::tensor::{Nchw, Tensor};
        let layer = |cin| ConvLayer {
            name: format!("{cin}->24"),
            bn: None,
            cin,
            cout: 24,
            kernel: 3,
            stride: 2,
        };
        let layers = [layer(3), layer(16)];
        let (h, w) = (10, 6);
        let seed = u64::from(std::process::id());
        let params: Vec<ConvParams> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| ConvParams {
                weight: Tensor::random_normal(
                    Nchw {
                        n: 1,
                        c: 1,
                        h: 1,
                        w: l.weight_len(),
                    },
                    seed + i as u64,
                )
                .into_data(),
                bias: Tensor::random_normal(
                    Nchw {
                        n: 1,
                        c: 1,
                        h: 1,
                        w: 24,
                    },
                    seed + 7,
                )
                .into_data(),
            })
            .collect();
        let inputs: Vec<Tensor> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Tensor::random_normal(
                    Nchw {
                        n: 1,
                        c: l.cin,
                        h,
                        w,
                    },
                    seed + 11 + i as u64,
                )
            })
            .collect();
        let parts: Vec<Part<'_>> = layers
            .iter()
            .zip(&params)
            .enumerate()
            .map(|(i, (l, p))| Part {
                input: ValueId(i),
                layer: l,
                params: p,
                stored_cin: l.cin.next_multiple_of(8),
            })
            .collect();
        let (packed, bias, k) = pack::<half::f16>(&parts);
        assert_eq!(k, 9 * (8 + 16));
        let (ho, wo) = layers[0].out_size(h, w);
        // The kernel's arithmetic, in f64.
        let nhwc: Vec<Vec<half::f16>> = inputs
            .iter()
            .map(|x| crate::cuda::gpu::nhwc_padded::<half::f16>(x, 8))
            .collect();
        let mut got = vec![0f64; 24 * ho * wo];
        for co in 0..24 {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = f64::from(bias[co]);
                    let mut kbeg = 0;
                    for (part, x) in parts.iter().zip(&nhwc) {
                        let cs = part.stored_cin;
                        for tap in 0..9 {
                            let (iy, ix) = (
                                (oy * 2 + tap / 3) as isize - 1,
                                (ox * 2 + tap % 3) as isize - 1,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ci in 0..cs {
                                let xv = x[(iy as usize * w + ix as usize) * cs + ci].to_f64();
                                sum += xv * packed[co * k + kbeg + tap * cs + ci].to_f64();
                            }
                        }
                        kbeg += 9 * cs;
                    }
                    got[(co * ho + oy) * wo + ox] = sum;
                }
            }
        }
        // The CPU reference on the same f16-rounded operands.
        let round = |v: &[f32]| -> Vec<f64> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect()
        };
        let mut want = vec![0f64; 24 * ho * wo];
        let mut part = vec![0f64; 24 * ho * wo];
        let mut col = Vec::new();
        for ((l, p), x) in layers.iter().zip(&params).zip(&inputs) {
            let b: Vec<f64> = p.bias.iter().map(|&v| f64::from(v)).collect();
            conv2d(
                &round(x.data()),
                x.shape().chw(),
                l,
                &round(&p.weight),
                &b,
                &mut part,
                &mut col,
            );
            want.iter_mut().zip(&part).for_each(|(w, p)| *w += p);
        }
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        assert!(
            err < 1e-5,
            "packed weights disagree with the reference by {err:e}"
        );
    }
}
