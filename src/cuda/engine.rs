//! The GPU executor: the graph run with the hand-written kernels. Weights are uploaded
//! once; activations live in one preallocated arena, each value at an offset planned once
//! (`schedule::plan_arena`: values share memory where the data orders their uses, and a
//! residual sum is written over its input), so a forward at a batch size already seen
//! allocates nothing; results are copied back only at the end. The input is copied as the
//! caller holds it (f32, NCHW) and laid out in the program's element type and layout on
//! the GPU (kernels/input.cu). The launches of a forward are captured once per batch size
//! into a CUDA graph and replayed.

mod profile;

use cudarc::driver::CudaSlice;

use super::gpu::{Gpu, GpuElem, InputLayout, capture, time_runs};
use super::probe::{GpuInfo, driver_err};
use super::schedule::{Chunked, Joins, Layout, STREAMS, Schedule, Steps};
use crate::decode::Peak;
use crate::error::{Error, Result};
use crate::graph::{Chw, Graph, Op, ValueId};
use crate::pose::joints::partner;
use crate::tensor::{Nchw, Tensor};
use crate::weights::Model;
pub use profile::LaunchProfile;

/// How activations and weights are stored on the GPU. Accumulation is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (IEEE half) with f32 accumulation.
    F16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

/// A captured forward. cudarc leaves its graph handles `!Send`.
struct CapturedForward(cudarc::driver::CudaGraph);

// SAFETY: the driver's graph and graph-exec handles may be used from any thread with their
// context current (cudarc binds it before each launch); a `CapturedForward` is only reached through
// `&mut Net`, so it is never used from two threads at once.
unsafe impl Send for CapturedForward {}

/// Which convolution kernels an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// kernels/conv.cu on NCHW activations, f32 or f16: the readable baseline, one launch
    /// per conv and per exchange sum.
    Direct,
    /// kernels/conv_tc.cu on NHWC activations: tensor-core implicit GEMM, the exchange
    /// units' strided steps, identity and upsampled terms fused into one launch per output
    /// branch (`graph::fused`). f16 on `mma.sync` f16; f32 on `mma.sync` bf16 with each
    /// operand split exactly into three bf16 parts (six products) and f64 totals, which keeps
    /// f32's accuracy.
    TensorCore,
}

impl Kernels {
    /// The default for a precision and network: tensor cores for f16 when every channel
    /// count allows them (multiples of 8, as in all official presets), else direct. f32
    /// stays on the direct kernels until its tensor-core path has been timed on a GPU.
    #[must_use]
    pub fn default_for(precision: Precision, graph: &Graph) -> Self {
        match precision {
            Precision::F16 if super::tc::supports(graph) => Kernels::TensorCore,
            _ => Kernels::Direct,
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernels::Direct => "direct",
            Kernels::TensorCore => "tensor-core",
        })
    }
}

/// What a forward launches.
enum Program<T> {
    /// The graph op by op, NCHW, weights as the layers hold them.
    Direct {
        weights: Vec<CudaSlice<T>>,
        biases: Vec<CudaSlice<f32>>,
    },
    /// The fused plan on NHWC activations of T.
    TensorCore(super::tc::TcProgram<T>),
}

/// The network on one GPU in one element type.
struct Net<T> {
    gpu: Gpu<T>,
    graph: Graph,
    program: Program<T>,
    /// The program's steps as (inputs, output), in launch order.
    steps_io: Vec<(Vec<ValueId>, ValueId)>,
    /// Per step, the inputs its kernel may write the output over (`plan_arena`), which
    /// the plan uses unless poisoning: an output filled with NaN would lose its input.
    over: Vec<Vec<ValueId>>,
    /// Each value's last reader and per-image length, for the plan.
    last: Vec<usize>,
    value_len: Vec<usize>,
    /// Every step over the whole batch: where values live in `arena`, the streams.
    whole: Layout,
    /// The most images per chunk of the front (0: never chunked).
    front_chunk: usize,
    /// The front over chunks of images, used once the arena holds more than a chunk.
    chunked: Option<Chunked>,
    /// The most streams the steps are spread over (`schedule::STREAMS` unless set lower).
    streams: usize,
    /// Every value of a batch of up to `capacity` images (the plan in use says where).
    arena: CudaSlice<T>,
    /// The chunked front's own values for one chunk (empty when not chunking).
    front_arena: CudaSlice<T>,
    /// The input as the caller holds it (f32, NCHW), a few images at a time
    /// ([`STAGING_BYTES`]), on its way into the input's place (kernels/input.cu).
    staging: CudaSlice<f32>,
    /// Split-K scratch, one per stream (tensor-core program), sized with the arena.
    split: Vec<super::tc::SplitScratch>,
    /// How the tensor-core convolutions are launched.
    tuning: super::tc::TcTuning,
    xy: CudaSlice<f32>,
    score: CudaSlice<f32>,
    /// The flip test's merged maps (f32) and each joint's partner, allocated by the first
    /// flip test and grown with the people merged.
    flip: Option<(CudaSlice<f32>, CudaSlice<i32>)>,
    capacity: usize,
    /// CUDA graphs of the forward by batch size; valid while the arena and the plan stay.
    graphs: std::collections::HashMap<usize, CapturedForward>,
    graphs_on: bool,
    graph_fallback: Option<String>,
    poison: bool,
}

/// The inputs of a direct-kernel op that it reads only where it writes, element for
/// element, before writing (`plan_arena` may put the output on one of them): a
/// convolution's residual (kernels/conv.cu adds it in the thread that stores the element)
/// and an exchange sum's terms at the output's resolution (kernels/exchange.cu, one
/// element per thread).
pub(crate) fn direct_overwritable(op: &Op) -> Vec<ValueId> {
    match op {
        Op::Conv(c) => c.residual.into_iter().collect(),
        Op::Exchange(e) => crate::graph::unscaled(&e.terms),
    }
}

/// The most images a chunk of the front holds by default (see
/// [`CudaEngine::set_front_chunk`]): at 8, each of the front's launches still fills an
/// H200 (the stem's first convolution writes 98 K pixels), and W32 256×192 at batch 64
/// holds 40 M activation elements where the whole batch at once holds 76 M.
pub const DEFAULT_FRONT_CHUNK: usize = 8;

/// The most bytes of input the GPU holds as the caller gave it (f32, NCHW) on its way into
/// the engine's layout, unless one image is larger: at W32 256×192, 7 images (4.1 MB)
/// a copy, one launch laying them out.
const STAGING_BYTES: usize = 4 << 20;

/// The layouts of a program's steps (as `plan_arena` takes them: steps, in-place inputs,
/// last uses, per-image lengths) over at most `streams` streams, steps launched together
/// where `joins` says: the whole batch's, and the front's in chunks of `front_chunk`
/// images where that pays (`input_len`: the input's elements per image held compact).
fn layouts(
    (io, over, last, len): (&Steps, &[Vec<ValueId>], &[usize], &[usize]),
    input_len: usize,
    front_chunk: usize,
    streams: (usize, Joins<'_>),
) -> (Layout, Option<Chunked>) {
    (
        Layout::new(io, over, last, len, 0, streams),
        Chunked::new(io, over, last, len, (input_len, front_chunk), streams),
    )
}

impl<T: GpuElem> Net<T> {
    fn new(model: &Model, ordinal: usize, kernels: Kernels) -> Result<Self> {
        let gpu = Gpu::<T>::open(ordinal)?;
        let graph = &model.graph;
        let (program, steps_io, over, last, value_len) = match kernels {
            Kernels::Direct => {
                let mut weights = Vec::with_capacity(model.params.len());
                let mut biases = Vec::with_capacity(model.params.len());
                for p in &model.params {
                    let w: Vec<T> = p.weight.iter().map(|&v| T::from_f32(v)).collect();
                    weights.push(gpu.upload(&w)?);
                    biases.push(gpu.upload(&p.bias)?);
                }
                let io: Vec<_> = graph.ops.iter().map(|o| (o.inputs(), o.output())).collect();
                let over = graph.ops.iter().map(direct_overwritable).collect();
                let len: Vec<usize> = graph.values.iter().map(Chw::len).collect();
                (
                    Program::Direct { weights, biases },
                    io,
                    over,
                    graph.last_uses(),
                    len,
                )
            }
            Kernels::TensorCore => {
                let tc = super::tc::TcProgram::new(&gpu, model)?;
                let (io, over) = (tc.io.clone(), tc.over.clone());
                let (last, len) = (tc.last_uses.clone(), tc.value_len.clone());
                (Program::TensorCore(tc), io, over, last, len)
            }
        };
        let (whole, chunked) = layouts(
            (&steps_io, &over, &last, &value_len),
            graph.input_shape().len(),
            DEFAULT_FRONT_CHUNK,
            (STREAMS, None),
        );
        let (arena, front_arena, staging, xy, score) = (
            gpu.alloc(0)?,
            gpu.alloc(0)?,
            gpu.alloc(0)?,
            gpu.alloc(0)?,
            gpu.alloc(0)?,
        );
        Ok(Net {
            gpu,
            graph: graph.clone(),
            program,
            steps_io,
            over,
            last,
            value_len,
            whole,
            front_chunk: DEFAULT_FRONT_CHUNK,
            chunked,
            streams: STREAMS,
            arena,
            front_arena,
            staging,
            split: Vec::new(),
            tuning: super::tc::TcTuning::default(),
            xy,
            score,
            flip: None,
            capacity: 0,
            graphs: std::collections::HashMap::new(),
            graphs_on: true,
            graph_fallback: None,
            poison: false,
        })
    }

    /// Plans the arenas again for the current poisoning (no in-place writes while on),
    /// front chunk, streams and grouped launches; the arenas and the captured graphs go
    /// with the old plans.
    fn replan(&mut self) {
        let none = vec![Vec::new(); self.steps_io.len()];
        let over = if self.poison { &none } else { &self.over };
        let joins = |a, b| matches!(&self.program, Program::TensorCore(tc) if tc.joins(a, b));
        let grouped = self.tuning.grouped && matches!(self.program, Program::TensorCore(_));
        (self.whole, self.chunked) = layouts(
            (&self.steps_io, over, &self.last, &self.value_len),
            self.graph.input_shape().len(),
            self.front_chunk,
            (
                self.streams,
                grouped.then_some(&joins as &dyn Fn(usize, usize) -> bool),
            ),
        );
        self.graphs.clear();
        self.split.clear();
        self.capacity = 0;
    }

    /// Turns poisoning on or off, planning the arenas again.
    fn set_poison(&mut self, on: bool) {
        if on != self.poison {
            self.poison = on;
            self.replan();
        }
    }

    /// Sets the most images per chunk of the front, planning the arenas again.
    fn set_front_chunk(&mut self, images: usize) {
        if images != self.front_chunk {
            self.front_chunk = images;
            self.replan();
        }
    }

    /// Sets the most streams the steps are spread over (1 to `schedule::STREAMS`),
    /// scheduling them again.
    fn set_streams(&mut self, streams: usize) {
        let streams = streams.clamp(1, STREAMS);
        if streams != self.streams {
            self.streams = streams;
            self.replan();
        }
    }

    /// The chunked layouts, if a batch of `n` runs the front in chunks: when it holds
    /// more than a chunk and the arenas hold fewer elements so than for the batch at once
    /// (a batch of a few chunks keeps more of the front's outputs than it saves).
    fn chunked_at(&self, n: usize) -> Option<&Chunked> {
        let whole = self.whole.plan.total.checked_mul(n);
        self.chunked.as_ref().filter(|c| {
            n > c.chunk
                && c.elements(n)
                    .is_some_and(|e| whole.is_none_or(|whole| e < whole))
        })
    }

    /// The chunked layouts, if the arena allocated runs the front in chunks.
    fn chunks(&self) -> Option<&Chunked> {
        self.chunked_at(self.capacity)
    }

    /// Images the input staging buffer holds at batch `n`, and f32 values per image.
    fn staged(&self, n: usize) -> (usize, usize) {
        let per = self.graph.input_shape().len();
        let fit = STAGING_BYTES / (per * std::mem::size_of::<f32>());
        (n.min(fit.max(1)), per)
    }

    /// Bytes of arenas, split-K scratch, input staging and peak buffers for `n` images
    /// (None if that overflows).
    fn bytes_for(&self, n: usize) -> Option<usize> {
        let elems = match self.chunked_at(n) {
            Some(c) => c.elements(n)?,
            None => self.whole.plan.total.checked_mul(n)?,
        };
        let peaks = n
            .checked_mul(self.graph.output_shape().c)?
            .checked_mul(3 * std::mem::size_of::<f32>())?;
        let split: usize = self.split_room(n).iter().map(|s| s.bytes()).sum();
        let (images, per) = self.staged(n);
        elems
            .checked_mul(std::mem::size_of::<T>())?
            .checked_add(peaks)?
            .checked_add(split)?
            .checked_add(images * per * std::mem::size_of::<f32>())
    }

    /// Step `i`'s schedule and the most images it is launched over, at batch `n` with
    /// the layouts of `chunked` (or the whole batch at once).
    fn step_on<'a>(
        &'a self,
        i: usize,
        n: usize,
        chunked: Option<&'a Chunked>,
    ) -> (&'a Schedule, usize) {
        match chunked {
            Some(c) if i < c.front => (&c.inner.schedule, n.min(c.chunk)),
            Some(c) => (&c.outer.schedule, n),
            None => (&self.whole.schedule, n),
        }
    }

    /// The split-K scratch each stream needs for every batch up to `n` (an arena serves
    /// all smaller batches, and a smaller batch may split more ways). A launch that does
    /// not split at some batch does not split at any larger one (its tiles only grow), so
    /// each step's search stops at the first size where it does not split. A step of the
    /// front in chunks runs on at most a chunk of images (the last chunk of a batch on
    /// fewer), every other step on up to `n`.
    fn split_room(&self, n: usize) -> Vec<super::tc::SplitNeed> {
        let Program::TensorCore(tc) = &self.program else {
            return Vec::new();
        };
        let chunked = self.chunked_at(n);
        let mut room = vec![super::tc::SplitNeed::default(); super::schedule::STREAMS];
        for i in 0..self.steps_io.len() {
            let (schedule, most) = self.step_on(i, n, chunked);
            let (launch, stream) = (i..i + schedule.group[i], schedule.stream[i]);
            for images in 1..=most {
                let need = tc.split_need(launch.clone(), images, self.gpu.info.multiprocessors);
                if need.bytes() == 0 {
                    break;
                }
                room[stream] = room[stream].max(need);
            }
        }
        room
    }

    /// Makes the arena hold `n` images; allocates only when `n` exceeds every batch so far.
    /// The old arenas are released first; if the new ones do not fit, nothing stays
    /// allocated and the next call starts afresh, so a smaller batch still runs.
    fn reserve(&mut self, n: usize) -> Result<()> {
        if n <= self.capacity {
            return Ok(());
        }
        self.graphs.clear();
        self.arena = self.gpu.alloc(0)?;
        self.front_arena = self.gpu.alloc(0)?;
        self.staging = self.gpu.alloc(0)?;
        self.split.clear();
        self.capacity = 0;
        // The old arena's frees are stream-ordered: the pool holds that memory until a
        // synchronisation, and until then the free memory read below would leave it out.
        self.gpu.sync()?;
        let what = format!(
            "a batch of {n} ({} activations)",
            T::SUFFIX.trim_start_matches('_')
        );
        let available = self.gpu.free_memory()?;
        let needed = self.bytes_for(n).unwrap_or(usize::MAX);
        if needed > available {
            return Err(Error::OutOfMemory {
                what,
                needed,
                available,
            });
        }
        let (main, front) = match self.chunked_at(n) {
            Some(c) => (n * c.outer.plan.total, c.chunk * c.inner.plan.total),
            None => (n * self.whole.plan.total, 0),
        };
        let (arena, front_arena) = (self.gpu.alloc(main)?, self.gpu.alloc(front)?);
        let split = self
            .split_room(n)
            .into_iter()
            .map(|room| super::tc::SplitScratch::new(&self.gpu, room))
            .collect::<Result<Vec<_>>>()?;
        let (images, per) = self.staged(n);
        let staging = self.gpu.alloc(images * per)?;
        let maps = n * self.graph.output_shape().c;
        let (xy, score) = (self.gpu.alloc(2 * maps)?, self.gpu.alloc(maps)?);
        (self.arena, self.front_arena, self.split) = (arena, front_arena, split);
        self.staging = staging;
        (self.xy, self.score, self.capacity) = (xy, score, n);
        Ok(())
    }

    fn weight_bytes(&self) -> usize {
        match &self.program {
            Program::Direct { weights, biases } => {
                weights
                    .iter()
                    .map(|w| w.len() * std::mem::size_of::<T>())
                    .sum::<usize>()
                    + biases
                        .iter()
                        .map(|b| b.len() * std::mem::size_of::<f32>())
                        .sum::<usize>()
            }
            Program::TensorCore(tc) => tc.weight_bytes,
        }
    }

    fn arena_bytes(&self) -> usize {
        // Unchunked, the front arena is a one-element placeholder.
        let front = self.chunks().map_or(0, |_| self.front_arena.len());
        let flip = self.flip.as_ref().map_or(0, |(m, p)| {
            m.len() * std::mem::size_of::<f32>() + p.len() * std::mem::size_of::<i32>()
        });
        let f32s = self.staging.len() + self.xy.len() + self.score.len();
        (self.arena.len() + front) * std::mem::size_of::<T>()
            + self.split.iter().map(|s| s.bytes()).sum::<usize>()
            + f32s * std::mem::size_of::<f32>()
            + flip
    }

    /// Value `v`'s elements in the main arena for the batch of `n` images (not a value
    /// of the chunked front's own).
    fn range_of(&self, v: ValueId, n: usize) -> std::ops::Range<usize> {
        let plan = self.chunks().map_or(&self.whole.plan, |c| &c.outer.plan);
        let r = plan
            .region(v)
            .expect("every value a step touches has a place in the arena");
        let start = r.start * self.capacity;
        start..start + r.len() * n
    }

    /// The device address of value `v` for the images from `first` on: in the main
    /// arena at that image, or, for a value of the chunked front's own, in the front's
    /// arena (which holds one chunk, from its first image).
    fn addr_of(&self, v: ValueId, first: usize) -> u64 {
        let size = std::mem::size_of::<T>();
        if let Some(c) = self.chunks()
            && let Some(r) = c.inner.plan.region(v)
        {
            return self.gpu.addr(&self.front_arena) + (r.start * c.chunk * size) as u64;
        }
        let start = self.range_of(v, 1).start + first * self.value_len[v.0];
        self.gpu.addr(&self.arena) + (start * size) as u64
    }

    /// Runs every op; the heatmaps stay in the output value's place in the arena.
    fn run(&mut self, input: &Tensor) -> Result<usize> {
        let n = self.upload(input, false)?;
        self.execute(n)?;
        Ok(n)
    }

    /// Runs the network on the uploaded batch of `n`: the CUDA graph captured for this batch
    /// size (captured on first use), or the launches one by one when graphs are off or
    /// capturing failed (the reason is kept, see `CudaEngine::graph_fallback`).
    fn execute(&mut self, n: usize) -> Result<()> {
        if self.graph_fallback.is_some() || !self.graphs_on {
            return self.launch_all(n);
        }
        if !self.graphs.contains_key(&n) {
            match self.capture(n) {
                Ok(g) => {
                    self.graphs.insert(n, g);
                }
                Err(e) => {
                    self.graph_fallback = Some(e.to_string());
                    return self.launch_all(n);
                }
            }
        }
        self.graphs[&n]
            .0
            .launch()
            .map_err(driver_err("launching the CUDA graph"))
    }

    /// Records every launch of the forward for `n` images into a CUDA graph.
    fn capture(&self, n: usize) -> Result<CapturedForward> {
        let stream = self.gpu.stream.clone();
        capture(&stream, || self.launch_all(n)).map(CapturedForward)
    }

    /// Checks the input, makes room for its batch and puts it in the input's place: the
    /// caller's f32 values copied as they are, a few images at a time, each time laid out
    /// and rounded to T on the GPU (kernels/input.cu), so the host only copies; compact
    /// (NCHW) where the chunked front pads it per chunk (`Chunked::pads_input`). With
    /// `mirrored`, the batch is followed by its mirror image, made on the GPU from the same
    /// copies (the flip test's second half). Returns the images in the batch run.
    fn upload(&mut self, input: &Tensor, mirrored: bool) -> Result<usize> {
        self.graph.check_input(input)?;
        let s = input.shape();
        let n = if mirrored { 2 * s.n } else { s.n };
        self.reserve(n)?;
        // Compact (T, NCHW) where the chunked front pads it a chunk at a time.
        let compact = self.chunks().is_some_and(|c| c.pads_input);
        let nhwc = matches!(self.program, Program::TensorCore(_)) && !compact;
        let layout = InputLayout::of(s, nhwc);
        let at = self.range_of(Graph::INPUT, n);
        debug_assert_eq!(
            at.len(),
            n * layout.len(),
            "the input's place fits the layout"
        );
        let size = std::mem::size_of::<T>();
        let base = self.gpu.addr(&self.arena) + (at.start * size) as u64;
        if self.poison {
            self.gpu.fill_nan(base, at.len())?;
        }
        let (chunk, per) = self.staged(s.n);
        let staging = self.gpu.addr(&self.staging);
        for first in (0..s.n).step_by(chunk) {
            let images = chunk.min(s.n - first);
            let x = &input.data()[first * per..(first + images) * per];
            // A copy from pageable memory returns once the driver holds the data; it runs
            // in stream order, after the layout launches that read the last chunk.
            self.gpu
                .stream
                .memcpy_htod(x, &mut self.staging.slice_mut(0..x.len()))
                .map_err(driver_err("copying the input to the GPU"))?;
            let image = |i: usize| base + (i * layout.len() * size) as u64;
            self.gpu
                .input_layout(staging, image(first), images, layout)?;
            if mirrored {
                let mirror = InputLayout {
                    mirror: true,
                    ..layout
                };
                self.gpu
                    .input_layout(staging, image(s.n + first), images, mirror)?;
            }
        }
        Ok(n)
    }

    /// Device time of the whole network on an uploaded batch, per run, in milliseconds
    /// (CUDA events around the launches; no copies included).
    fn time(&mut self, input: &Tensor, warmup: usize, runs: usize) -> Result<Vec<f64>> {
        let n = self.upload(input, false)?;
        for _ in 0..warmup {
            self.execute(n)?;
        }
        let stream = self.gpu.stream.clone();
        time_runs(&stream, runs, || self.execute(n))
    }

    /// Launches `steps` of the program (one step, or the steps of one grouped launch)
    /// over `n` images from image `first` on the GPU's current stream, number `stream`
    /// (whose split-K scratch it uses).
    fn launch(
        &self,
        steps: std::ops::Range<usize>,
        first: usize,
        n: usize,
        stream: usize,
    ) -> Result<()> {
        let addr = |v: ValueId| self.addr_of(v, first);
        let (weights, biases) = match &self.program {
            Program::TensorCore(tc) => {
                let how = super::tc::How {
                    tuning: self.tuning,
                    scratch: self.split.get(stream),
                };
                return tc.launch_steps(&self.gpu, &self.graph, steps, n, &addr, how);
            }
            Program::Direct { weights, biases } => (weights, biases),
        };
        let op = &self.graph.ops[steps.start];
        let y = addr(op.output());
        match op {
            Op::Conv(c) => {
                let l = &self.graph.layers[c.layer];
                let res = c.residual.map_or(0, addr);
                let (w, b) = (
                    self.gpu.addr(&weights[c.layer]),
                    self.gpu.addr(&biases[c.layer]),
                );
                let x = addr(c.input);
                self.gpu
                    .conv(l, self.graph.shape(c.input), n, x, w, b, res, y, c.relu)
            }
            Op::Exchange(e) => {
                let terms: Vec<(u64, usize)> = e.terms.iter().map(|&(v, f)| (addr(v), f)).collect();
                self.gpu
                    .exchange(&terms, self.graph.shape(op.output()), n, y, false)
            }
        }
    }

    /// Launches every step of the program on the batch of `n` already uploaded; the main
    /// stream waits for all of it at the end. With the front chunked, its steps run for
    /// each chunk in turn (after its input is padded, where it is held compact), every
    /// stream joined after each, then the rest over the batch.
    fn launch_all(&self, n: usize) -> Result<()> {
        let steps = self.steps_io.len();
        let mut events: Vec<Option<cudarc::driver::CudaEvent>> = Vec::new();
        events.resize_with(steps, || None);
        let result = match self.chunks() {
            None => self
                .gpu
                .fork()
                .and_then(|()| self.launch_steps(&self.whole, 0..steps, 0, n, &mut events)),
            Some(c) => (0..n)
                .step_by(c.chunk)
                .try_for_each(|first| {
                    let images = c.chunk.min(n - first);
                    if c.pads_input {
                        self.pad_input(first, images)?;
                    }
                    self.gpu.fork()?;
                    self.launch_steps(&c.inner, 0..c.front, first, images, &mut events)?;
                    self.gpu.join()
                })
                .and_then(|()| self.gpu.fork())
                .and_then(|()| self.launch_steps(&c.outer, c.front..steps, 0, n, &mut events)),
        };
        self.gpu.use_stream(0);
        result?;
        self.gpu.join()
    }

    /// Pads images `first..first + images` of the compact input into the input's place in
    /// the chunked front's arena, on the main stream (after the previous chunk's front,
    /// which the streams' join put before it), first filled with NaN when poisoning.
    fn pad_input(&self, first: usize, images: usize) -> Result<()> {
        let size = std::mem::size_of::<T>();
        let compact = self.range_of(Graph::INPUT, 1);
        let x =
            self.gpu.addr(&self.arena) + ((compact.start + first * compact.len()) * size) as u64;
        let y = self.addr_of(Graph::INPUT, first);
        self.gpu.use_stream(0);
        if self.poison {
            self.gpu
                .fill_nan(y, images * self.value_len[Graph::INPUT.0])?;
        }
        let how = InputLayout::of(Nchw::batch(images, self.graph.input_shape()), true);
        self.gpu.input_pad(x, y, images, how)
    }

    /// Launches steps `range` of `layout` over `n` images from image `first`, each on
    /// its stream after the steps of the range it depends on (`layout.schedule`; the
    /// steps before the range are behind a join of every stream), each output first
    /// filled with NaN when poisoning. `events` holds the events of the steps waited on.
    fn launch_steps(
        &self,
        layout: &Layout,
        range: std::ops::Range<usize>,
        first: usize,
        n: usize,
        events: &mut [Option<cudarc::driver::CudaEvent>],
    ) -> Result<()> {
        let err = |e| driver_err("ordering the streams")(e);
        for i in range.clone().filter(|&i| layout.schedule.group[i] > 0) {
            let steps = i..i + layout.schedule.group[i];
            let stream = layout.schedule.stream[i];
            self.gpu.use_stream(stream);
            for &w in layout.schedule.waits[i]
                .iter()
                .filter(|&&w| w >= range.start)
            {
                let e = events[w]
                    .as_ref()
                    .expect("a step waited on records its event");
                self.gpu.on().wait(e).map_err(err)?;
            }
            if self.poison {
                for (_, v) in &self.steps_io[steps.clone()] {
                    self.gpu
                        .fill_nan(self.addr_of(*v, first), self.value_len[v.0] * n)?;
                }
            }
            self.launch(steps, first, n, stream)?;
            if layout.waited_on[i] {
                events[i] = Some(self.gpu.on().record_event(None).map_err(err)?);
            }
        }
        Ok(())
    }

    fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        let n = self.run(input)?;
        let s = self.graph.output_shape();
        let out = self
            .gpu
            .download_at(&self.arena, self.range_of(self.graph.output, n))?;
        Tensor::new(Nchw::batch(n, s), T::widen(out))
    }

    /// Fills the peak buffers' first `maps` entries with NaN (when poisoning).
    fn poison_peaks(&mut self, maps: usize) -> Result<()> {
        if !self.poison {
            return Ok(());
        }
        let stream = &self.gpu.stream;
        let nan = vec![f32::NAN; 2 * maps];
        stream
            .memcpy_htod(&nan, &mut self.xy.slice_mut(0..2 * maps))
            .and_then(|()| stream.memcpy_htod(&nan[..maps], &mut self.score.slice_mut(0..maps)))
            .map_err(driver_err("poisoning the peak buffers"))
    }

    /// The peaks of the `n` images' heatmaps in the output's place (kernels/argmax.cu).
    fn output_peaks(&mut self, n: usize) -> Result<Vec<Peak>> {
        let s = self.graph.output_shape();
        let maps = n * s.c;
        self.poison_peaks(maps)?;
        let (hm, xy, score) = (
            self.addr_of(self.graph.output, 0),
            self.gpu.addr(&self.xy),
            self.gpu.addr(&self.score),
        );
        self.gpu.argmax(hm, false, maps, s.h, s.w, xy, score)?;
        self.gpu.read_peaks(&self.xy, &self.score, maps)
    }

    fn forward_peaks(&mut self, input: &Tensor) -> Result<(Tensor, Vec<Peak>)> {
        let heatmaps = self.forward(input)?;
        let peaks = self.output_peaks(heatmaps.shape().n)?;
        Ok((heatmaps, peaks))
    }

    fn peaks(&mut self, input: &Tensor) -> Result<Vec<Peak>> {
        let n = self.run(input)?;
        self.output_peaks(n)
    }

    /// The flip test's merge (kernels/flip_merge.cu) of the 2N images run, N plain then
    /// the same mirrored, into `merged` (N maps a joint, f32), and the merged maps' peaks.
    fn merge_flipped_peaks(&mut self, n: usize, pairs: &[(usize, usize)]) -> Result<Vec<Peak>> {
        let s = self.graph.output_shape();
        let maps = n * s.c;
        let len = maps * s.h * s.w;
        // Kept for the next flip test when large enough; else freed before the larger
        // ones are allocated.
        if self.flip.as_ref().is_some_and(|(m, _)| m.len() < len) {
            self.flip = None;
        }
        let (mut merged, mut partners) = match self.flip.take() {
            Some(f) => f,
            None => (self.gpu.alloc(len)?, self.gpu.alloc(s.c)?),
        };
        // A partner outside the maps would read past them: such a pair is ignored.
        let partner: Vec<i32> = (0..s.c)
            .map(|j| Some(partner(pairs, j)).filter(|&p| p < s.c).unwrap_or(j) as i32)
            .collect();
        self.gpu
            .stream
            .memcpy_htod(&partner, &mut partners.slice_mut(0..s.c))
            .map_err(driver_err("copying the joint pairs"))?;
        if self.poison {
            let nan = vec![f32::NAN; len];
            self.gpu
                .stream
                .memcpy_htod(&nan, &mut merged.slice_mut(0..len))
                .map_err(driver_err("poisoning the merged heatmaps"))?;
        }
        let (pt, out) = (self.gpu.addr(&partners), self.gpu.addr(&merged));
        self.flip = Some((merged, partners));
        self.poison_peaks(maps)?;
        let hm = self.addr_of(self.graph.output, 0);
        self.gpu.flip_merge(hm, pt, out, n, s.c, s.h, s.w)?;
        let (xy, score) = (self.gpu.addr(&self.xy), self.gpu.addr(&self.score));
        self.gpu.argmax(out, true, maps, s.h, s.w, xy, score)?;
        self.gpu.read_peaks(&self.xy, &self.score, maps)
    }

    /// The flip test on the GPU: `both` holds N crops then the same N mirrored; one forward,
    /// then the merge and the peaks of the merged maps, which come back with them.
    fn forward_flip_peaks(
        &mut self,
        both: &Tensor,
        pairs: &[(usize, usize)],
    ) -> Result<(Tensor, Vec<Peak>)> {
        let total = both.shape().n;
        if !total.is_multiple_of(2) {
            return Err(Error::Input(format!(
                "a flip-test batch holds plain and mirrored halves; {total} is odd"
            )));
        }
        self.run(both)?;
        let n = total / 2;
        let peaks = self.merge_flipped_peaks(n, pairs)?;
        let s = Nchw::batch(n, self.graph.output_shape());
        let merged = &self
            .flip
            .as_ref()
            .expect("merge_flipped_peaks allocated it")
            .0;
        let heatmaps = Tensor::new(s, self.gpu.download(merged, s.len())?)?;
        Ok((heatmaps, peaks))
    }

    /// The flip test on the GPU from the plain crops alone: their mirror images are laid
    /// out on the GPU from the same copies; only the peaks come back.
    fn flip_peaks(&mut self, input: &Tensor, pairs: &[(usize, usize)]) -> Result<Vec<Peak>> {
        let total = self.upload(input, true)?;
        self.execute(total)?;
        self.merge_flipped_peaks(total / 2, pairs)
    }
}

enum Inner {
    F32(Net<f32>),
    F16(Net<half::f16>),
}

/// `$body` with `$n` bound to whichever element type's network `$inner` holds.
macro_rules! on_net {
    ($inner:expr, $n:ident => $body:expr) => {
        match $inner {
            Inner::F32($n) => $body,
            Inner::F16($n) => $body,
        }
    };
}

/// HRNet on a GPU with the hand-written kernels. `Send`; not `Sync` (a forward uses the
/// engine's arena): share one across threads behind a `Mutex`, or give each thread its own.
pub struct CudaEngine {
    inner: Inner,
    kernels: Kernels,
}

impl CudaEngine {
    /// Uploads `model` to GPU 0 in `precision` with that precision's default kernels
    /// ([`Kernels::default_for`]), compiling the kernels for the GPU's architecture on
    /// first use in the process.
    pub fn new(model: &Model, precision: Precision) -> Result<Self> {
        let kernels = Kernels::default_for(precision, &model.graph);
        Self::on_device(model, precision, kernels, 0)
    }

    /// As [`CudaEngine::new`] with the given kernels, on GPU `ordinal`. Tensor-core
    /// kernels in f32 are refused with [`Error::Config`].
    pub fn on_device(
        model: &Model,
        precision: Precision,
        kernels: Kernels,
        ordinal: usize,
    ) -> Result<Self> {
        let inner = match precision {
            Precision::F32 => Inner::F32(Net::new(model, ordinal, kernels)?),
            Precision::F16 => Inner::F16(Net::new(model, ordinal, kernels)?),
        };
        Ok(CudaEngine { inner, kernels })
    }

    /// The convolution kernels this engine runs.
    #[must_use]
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The storage precision.
    #[must_use]
    pub fn precision(&self) -> Precision {
        match self.inner {
            Inner::F32(_) => Precision::F32,
            Inner::F16(_) => Precision::F16,
        }
    }

    /// The GPU.
    #[must_use]
    pub fn gpu(&self) -> &GpuInfo {
        on_net!(&self.inner, n => &n.gpu.info)
    }

    /// Fill every op's output with NaN before its launch, so that an element a kernel
    /// fails to write shows in the result (for tests; costs one extra launch per op).
    /// Poisoning plans the arena without writing any output over its input, so the
    /// next forward allocates the arena afresh (and again when poisoning stops).
    pub fn set_poison(&mut self, on: bool) {
        on_net!(&mut self.inner, n => n.set_poison(on))
    }

    /// Runs the network's front (its first steps: for HRNet the stem, layer1 and
    /// transition1, which hold the most activations per image) over chunks of at most
    /// `images` images when a batch is larger, so that its activations are held for one
    /// chunk at a time ([`DEFAULT_FRONT_CHUNK`] by default; 0 runs every batch whole). A
    /// batch of only a few chunks still runs whole where that holds less
    /// ([`CudaEngine::front_chunks`]). Results are the same but for split K, which a
    /// chunk may split differently. Plans the arena again: the next forward allocates it
    /// afresh.
    pub fn set_front_chunk(&mut self, images: usize) {
        on_net!(&mut self.inner, n => n.set_front_chunk(images))
    }

    /// Spreads a forward's steps over at most `streams` streams (1 to 16, the default;
    /// clamped): with 16 the longest chain of dependent launches is the data's own (W32:
    /// 98 of 290), with 1 every launch waits for the one before. Fewer streams change no
    /// result; they measure what the chain costs against what the launches cost
    /// (`hrnet bench --streams`). Schedules again: the next forward captures its graph
    /// afresh.
    pub fn set_streams(&mut self, streams: usize) {
        on_net!(&mut self.inner, n => n.set_streams(streams))
    }

    /// How a batch of `n` runs the front: in chunks, as (its steps, the most images per
    /// chunk), or `None`, the whole batch at once: when `n` is at most a chunk, chunking
    /// is off, or it would hold more activations at this batch (see
    /// [`CudaEngine::set_front_chunk`]).
    #[must_use]
    pub fn front_chunks(&self, n: usize) -> Option<(usize, usize)> {
        on_net!(&self.inner, net => net.chunked_at(n).map(|c| (c.front, c.chunk)))
    }

    /// Replay each batch size's forward as one CUDA graph (on by default) or launch its
    /// ~300 kernels one by one.
    pub fn set_graphs(&mut self, on: bool) {
        on_net!(&mut self.inner, n => n.graphs_on = on)
    }

    /// How the tensor-core convolutions are launched: split K (on by default; results
    /// change by rounding, deterministically), activations through L1, programmatic
    /// launches, the deep pipeline and grouped launches (off by default; bitwise the
    /// same). No effect on the direct kernels. Captured CUDA graphs are dropped and
    /// recaptured with the new launches; turning grouped launches on or off also plans
    /// the arenas again (the next forward allocates them).
    pub fn set_tuning(&mut self, tuning: crate::cuda::TcTuning) {
        on_net!(&mut self.inner, n => {
            n.graphs.clear();
            let regroup = tuning.grouped != n.tuning.grouped;
            n.tuning = tuning;
            if regroup {
                n.replan();
            }
        })
    }

    /// The tensor-core tuning in use (see [`CudaEngine::set_tuning`]).
    #[must_use]
    pub fn tuning(&self) -> crate::cuda::TcTuning {
        on_net!(&self.inner, n => n.tuning)
    }

    /// How many launches of a forward at batch `n` split their K loop (0 for the direct
    /// kernels or with split K off; see [`CudaEngine::set_tuning`]).
    #[must_use]
    pub fn split_k_launches(&self, n: usize) -> usize {
        on_net!(&self.inner, net => match &net.program {
            Program::TensorCore(tc) if net.tuning.split_k => (0..net.steps_io.len())
                .filter(|&i| {
                    let (_, images) = net.step_on(i, n, net.chunked_at(n));
                    tc.split_need(i..i + 1, images, net.gpu.info.multiprocessors).counters > 0
                })
                .count(),
            _ => 0,
        })
    }

    /// Why CUDA graphs are not in use, if capturing one failed (the engine then launches
    /// kernels one by one).
    #[must_use]
    pub fn graph_fallback(&self) -> Option<&str> {
        on_net!(&self.inner, n => n.graph_fallback.as_deref())
    }

    /// Device bytes the engine holds beyond its weights: the activation arenas, split-K
    /// scratch, input staging and peak buffers of the largest batch run since the arena
    /// was planned (turning poisoning on or off plans it again), and the flip test's
    /// merged maps (f32) for the most people merged so far (none before the first flip
    /// test).
    #[must_use]
    pub fn arena_bytes(&self) -> usize {
        on_net!(&self.inner, n => n.arena_bytes())
    }

    /// Device bytes a forward of `n` images needs beyond the weights: the activation
    /// arena, the split-K scratch and the peak buffers (None if that overflows). What
    /// [`CudaEngine::reserve`] compares with the free memory.
    #[must_use]
    pub fn memory_for(&self, n: usize) -> Option<usize> {
        on_net!(&self.inner, net => net.bytes_for(n))
    }

    /// The largest batch whose [`CudaEngine::memory_for`] is at most `bytes` (0 if not
    /// even one image fits): with the free memory plus [`CudaEngine::arena_bytes`] and
    /// the peaks, the largest batch [`CudaEngine::reserve`] accepts now.
    #[must_use]
    pub fn largest_batch_within(&self, bytes: usize) -> usize {
        let fits = |n| self.memory_for(n).is_some_and(|b| b <= bytes);
        // memory_for grows with n: bracket the answer by doubling, then halve the bracket.
        let mut hi = 1;
        while fits(hi) {
            hi *= 2;
        }
        let mut lo = hi / 2;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Preallocates the activation arena for batches of up to `n` images, so that the
    /// forwards that follow allocate nothing. Fails with [`Error::OutOfMemory`] (naming the
    /// memory needed and free) when it does not fit; the engine stays usable.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        on_net!(&mut self.inner, net => net.reserve(n))
    }

    /// Device time of the whole network on `input` (uploaded once), in milliseconds, for
    /// each of `runs` runs after `warmup` unmeasured ones: CUDA events around the kernels,
    /// no host copies. For benchmarks.
    pub fn time(&mut self, input: &Tensor, warmup: usize, runs: usize) -> Result<Vec<f64>> {
        on_net!(&mut self.inner, n => n.time(input, warmup, runs))
    }

    /// Where the time of a forward on `input` goes: each of its launches (the same
    /// kernels, tiles, splits, groups and chunks of the front as the forward's, on the
    /// same memory) timed alone, `repeats` times back to back on one stream, the median
    /// of `runs` runs after an untimed one, in launch order, with its multiply-adds and
    /// the bytes it must move. Their sum against [`CudaEngine::time`] is what the
    /// launches cost together beyond their work. Leaves the arena's values changed (a
    /// block sum repeated over its input); the next forward starts from its own input.
    /// For benchmarks (`hrnet bench --profile`).
    pub fn profile(
        &mut self,
        input: &Tensor,
        repeats: usize,
        runs: usize,
    ) -> Result<Vec<LaunchProfile>> {
        on_net!(&mut self.inner, n => n.profile(input, repeats, runs))
    }

    /// Kernel launches of a forward at batch `n` run whole (poisoning aside), and how many
    /// launches lie on the longest chain of dependencies once the branches run
    /// concurrently.
    #[must_use]
    pub fn launches(&self, n: usize) -> (usize, usize) {
        on_net!(&self.inner, net => {
            let s = &net.whole.schedule;
            let sms = net.gpu.info.multiprocessors;
            let kernels: usize = (0..s.group.len())
                .filter(|&i| s.group[i] > 0)
                .map(|i| match &net.program {
                    Program::TensorCore(tc) => {
                        tc.describe(i..i + s.group[i], n, sms, net.tuning).kernels
                    }
                    Program::Direct { .. } => s.group[i],
                })
                .sum();
            (kernels, s.critical_path())
        })
    }

    /// Bytes of the weights on the device.
    #[must_use]
    pub fn weight_bytes(&self) -> usize {
        on_net!(&self.inner, n => n.weight_bytes())
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        let ctx = on_net!(&self.inner, n => &n.gpu.ctx);
        ctx.mem_get_info().map_err(driver_err("cuMemGetInfo"))
    }

    /// Heatmaps `N × joints × H/4 × W/4` (f32 on the host) for a normalised batch.
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        on_net!(&mut self.inner, n => n.forward(input))
    }

    /// Heatmaps and the peak of every map, found on the GPU (kernels/argmax.cu).
    pub fn forward_peaks(&mut self, input: &Tensor) -> Result<(Tensor, Vec<Peak>)> {
        on_net!(&mut self.inner, n => n.forward_peaks(input))
    }

    /// The peak of every map, found on the GPU; the heatmaps stay there (the same peaks as
    /// [`CudaEngine::forward_peaks`], without copying the maps back).
    pub fn peaks(&mut self, input: &Tensor) -> Result<Vec<Peak>> {
        on_net!(&mut self.inner, n => n.peaks(input))
    }

    /// The flip test on the GPU: `both` holds N crops followed by the same N mirrored left
    /// to right (see [`crate::pose::flip_images`]). Returns the N merged heatmaps (as
    /// [`crate::pose::merge_flipped`] makes them, in f32) and their peaks, both computed on
    /// the GPU (kernels/flip_merge.cu, kernels/argmax.cu).
    pub fn forward_flip_peaks(
        &mut self,
        both: &Tensor,
        pairs: &[(usize, usize)],
    ) -> Result<(Tensor, Vec<Peak>)> {
        on_net!(&mut self.inner, n => n.forward_flip_peaks(both, pairs))
    }

    /// The flip test on the GPU from the N plain crops alone: their mirror images are made
    /// on the GPU from the same copies (the host neither mirrors nor copies them), the 2N
    /// run as one batch, merged, and the merged maps' peaks returned; the same peaks as
    /// [`CudaEngine::forward_flip_peaks`] on `input` followed by its mirror.
    pub fn flip_peaks(&mut self, input: &Tensor, pairs: &[(usize, usize)]) -> Result<Vec<Peak>> {
        on_net!(&mut self.inner, n => n.flip_peaks(input, pairs))
    }

    /// The shape of one image's heatmaps (joints × H/4 × W/4).
    #[must_use]
    pub fn heatmap_shape(&self) -> Chw {
        on_net!(&self.inner, n => n.graph.output_shape())
    }
}
