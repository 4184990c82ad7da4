//! The GPU itself: a context with its streams and the kernels of one element type, loaded
//! once, and one launcher per kernel (grid and arguments checked before the launch); the
//! element types the kernels are compiled for; the input's layout on the GPU; CUDA event
//! timing and graph capture. What runs when, and where values live, is the executor's
//! (`engine`).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::compile::compiled;
use super::probe::{GpuInfo, driver_err, gpus};
use crate::decode::Peak;
use crate::error::{Error, Result};
use crate::graph::{Chw, ConvLayer};
use crate::tensor::{Nchw, Tensor};

/// An element type the kernels are instantiated for.
pub trait GpuElem: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + Unpin + 'static {
    /// The suffix of the kernel names (`_f32`, `_f16`).
    const SUFFIX: &'static str;
    /// The block tiles (pixels × output channels) kernels/conv_tc.cu is compiled for in
    /// this type, largest first.
    const TC_TILES: &'static [(usize, usize)];
    /// Rounds from f32.
    fn from_f32(v: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Widens a whole buffer to f32 (for f16, 4 or 8 values an instruction where the CPU
    /// has F16C).
    fn widen(v: Vec<Self>) -> Vec<f32>;
}

impl GpuElem for f32 {
    const SUFFIX: &'static str = "_f32";
    // The f64 totals and three-part operands of the f32 path leave no registers for larger
    // tiles.
    const TC_TILES: &'static [(usize, usize)] = &[(64, 32), (32, 32)];
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(v: Vec<Self>) -> Vec<f32> {
        v
    }
}

impl GpuElem for half::f16 {
    const SUFFIX: &'static str = "_f16";
    const TC_TILES: &'static [(usize, usize)] =
        &[(128, 64), (64, 64), (128, 32), (64, 32), (32, 32)];
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn widen(v: Vec<Self>) -> Vec<f32> {
        half::slice::HalfFloatSliceExt::to_f32_vec(v.as_slice())
    }
}

/// Output pixels per conv block (x, y) and output channels per block: kernels/conv.cu.
const CONV_TILE: (usize, usize) = (16, 8);
const CONV_CO: usize = 8;
/// Threads per block of the elementwise kernels and of the argmax kernel.
const FLAT_THREADS: usize = 256;
/// The most terms an exchange kernel sums (HRNet has at most four branches).
const MAX_TERMS: usize = 4;
/// CUDA's limit on gridDim.y and gridDim.z.
const GRID_YZ_LIMIT: usize = 65_535;

fn blocks(n: usize, per: usize) -> usize {
    n.div_ceil(per)
}

pub(crate) fn grid_dim(what: &str, x: usize, y: usize, z: usize) -> Result<(u32, u32, u32)> {
    if y > GRID_YZ_LIMIT || z > GRID_YZ_LIMIT || x > u32::MAX as usize {
        return Err(Error::Input(format!(
            "{what}: a launch grid of {x}×{y}×{z} blocks exceeds CUDA's limits; use a smaller batch"
        )));
    }
    Ok((x as u32, y as u32, z as u32))
}

pub(crate) fn dim_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Input(format!(
            "dimension {v} does not fit the kernels' 32-bit indices"
        ))
    })
}

/// Device milliseconds of `work` (launches on `stream`) for each of `runs` runs: CUDA events
/// recorded before and after each run.
pub(crate) fn time_runs(
    stream: &Arc<CudaStream>,
    runs: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = stream
            .record_event(timing)
            .map_err(driver_err("recording an event"))?;
        work()?;
        let end = stream
            .record_event(timing)
            .map_err(driver_err("recording an event"))?;
        ms.push(f64::from(
            start
                .elapsed_ms(&end)
                .map_err(driver_err("timing on the GPU"))?,
        ));
    }
    Ok(ms)
}

/// The kernel `name` from whichever compiled file defines it.
fn modules_function(
    files: &[super::CompiledFile],
    modules: &[Arc<CudaModule>],
    name: &str,
) -> Result<CudaFunction> {
    let i = files
        .iter()
        .position(|f| f.kernels.iter().any(|k| k.name == name))
        .ok_or_else(|| Error::Cuda {
            what: "loading kernels".into(),
            reason: format!("no compiled kernel named {name}"),
        })?;
    modules[i]
        .load_function(name)
        .map_err(driver_err("cuModuleGetFunction"))
}

/// A context, its stream and the kernels of one element type.
pub(crate) struct Gpu<T> {
    pub(crate) info: GpuInfo,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// The streams steps are spread over (`schedule::STREAMS`); `streams[0]` is `stream`.
    streams: Vec<Arc<CudaStream>>,
    /// The stream kernels are launched on now (an index into `streams`).
    current: std::cell::Cell<usize>,
    conv_k3s1: CudaFunction,
    conv_k3s2: CudaFunction,
    conv_k1s1: CudaFunction,
    exchange: CudaFunction,
    exchange_nhwc: CudaFunction,
    bn_relu: CudaFunction,
    argmax: CudaFunction,
    argmax_f32: CudaFunction,
    flip_merge: CudaFunction,
    fill_nan: CudaFunction,
    input_layout: CudaFunction,
    input_pad: CudaFunction,
    upsample_nhwc: CudaFunction,
    add: CudaFunction,
    relu: CudaFunction,
    /// kernels/conv_tc.cu in `tc::kernel_names` order.
    pub(crate) tc: Vec<CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    _elem: std::marker::PhantomData<T>,
}

impl<T: GpuElem> Gpu<T> {
    /// Opens GPU `ordinal`, compiles the kernels for its architecture (once per process)
    /// and loads them.
    pub(crate) fn open(ordinal: usize) -> Result<Self> {
        let all = gpus()?;
        let info = all.get(ordinal).cloned().ok_or_else(|| {
            Error::CudaUnavailable(format!(
                "there is no GPU {ordinal}; this machine has {}",
                all.len()
            ))
        })?;
        let files = compiled(&info.arch())?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating a context"))?;
        // SAFETY: all of this engine's work is ordered on the one stream created below;
        // no buffer is shared with another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        let mut streams = vec![stream.clone()];
        for _ in 1..super::schedule::STREAMS {
            streams.push(ctx.new_stream().map_err(driver_err("creating a stream"))?);
        }
        let modules: Vec<Arc<CudaModule>> = files
            .iter()
            .map(|f| {
                ctx.load_module(Ptx::from_binary(f.cubin.clone()))
                    .map_err(driver_err("loading a kernel module"))
            })
            .collect::<Result<_>>()?;
        let function =
            |base: &str| modules_function(&files, &modules, &format!("{base}{}", T::SUFFIX));
        let tc = super::tc::kernel_names::<T>()
            .iter()
            .map(|name| modules_function(&files, &modules, name))
            .collect::<Result<_>>()?;
        Ok(Gpu {
            tc,
            conv_k3s1: function("conv_k3s1")?,
            conv_k3s2: function("conv_k3s2")?,
            conv_k1s1: function("conv_k1s1")?,
            exchange: function("exchange")?,
            exchange_nhwc: function("exchange_nhwc")?,
            bn_relu: function("bn_relu")?,
            argmax: function("argmax")?,
            argmax_f32: modules_function(&files, &modules, "argmax_f32")?,
            flip_merge: function("flip_merge")?,
            fill_nan: function("fill_nan")?,
            input_layout: function("input_layout")?,
            input_pad: function("input_pad")?,
            upsample_nhwc: function("upsample_nhwc")?,
            add: function("add")?,
            relu: function("relu")?,
            _modules: modules,
            _elem: std::marker::PhantomData,
            info,
            ctx,
            stream,
            streams,
            current: std::cell::Cell::new(0),
        })
    }

    /// The stream kernels go to now: the main stream unless a concurrent forward chose
    /// another.
    pub(crate) fn on(&self) -> &Arc<CudaStream> {
        &self.streams[self.current.get()]
    }

    /// Sends the launches that follow to stream `k` (an index into the streams; 0 is the
    /// main stream).
    pub(crate) fn use_stream(&self, k: usize) {
        self.current.set(k);
    }

    /// Makes every stream wait for what the main stream has queued.
    pub(crate) fn fork(&self) -> Result<()> {
        let streams = &self.streams;
        let start = streams[0]
            .record_event(None)
            .map_err(driver_err("ordering the streams"))?;
        for s in &streams[1..] {
            s.wait(&start).map_err(driver_err("ordering the streams"))?;
        }
        Ok(())
    }

    /// Makes the main stream wait for what every stream has queued.
    pub(crate) fn join(&self) -> Result<()> {
        let streams = &self.streams;
        for s in &streams[1..] {
            streams[0]
                .join(s)
                .map_err(driver_err("ordering the streams"))?;
        }
        Ok(())
    }

    /// The device address of a buffer, for kernel arguments.
    pub(crate) fn addr<U>(&self, s: &CudaSlice<U>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    pub(crate) fn upload<U: DeviceRepr>(&self, host: &[U]) -> Result<CudaSlice<U>> {
        self.stream
            .clone_htod(host)
            .map_err(driver_err("copying to the GPU"))
    }

    pub(crate) fn alloc<U: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<U>> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(|e| self.alloc_error(len * std::mem::size_of::<U>(), e))
    }

    fn alloc_error(&self, bytes: usize, e: cudarc::driver::DriverError) -> Error {
        let available = self.free_memory().unwrap_or(0);
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Error::OutOfMemory {
                what: format!("a buffer on {}", self.info.name),
                needed: bytes,
                available,
            };
        }
        Error::Cuda {
            what: format!(
                "allocating {:.1} MiB on {}",
                bytes as f64 / 1048576.0,
                self.info.name
            ),
            reason: format!("{e:?} ({:.1} MiB free)", available as f64 / 1048576.0),
        }
    }

    /// Free device memory in bytes.
    pub(crate) fn free_memory(&self) -> Result<usize> {
        self.ctx
            .mem_get_info()
            .map(|(free, _)| free)
            .map_err(driver_err("cuMemGetInfo"))
    }

    pub(crate) fn download<U: DeviceRepr>(&self, s: &CudaSlice<U>, len: usize) -> Result<Vec<U>> {
        self.download_at(s, 0..len)
    }

    /// Copies `s[at]` to the host.
    pub(crate) fn download_at<U: DeviceRepr>(
        &self,
        s: &CudaSlice<U>,
        at: std::ops::Range<usize>,
    ) -> Result<Vec<U>> {
        let v = self
            .stream
            .clone_dtoh(&s.slice(at))
            .map_err(driver_err("copying from the GPU"))?;
        self.sync()?;
        Ok(v)
    }

    /// The peaks that the argmax kernel wrote for `maps` heatmaps.
    pub(crate) fn read_peaks(
        &self,
        xy: &CudaSlice<f32>,
        score: &CudaSlice<f32>,
        maps: usize,
    ) -> Result<Vec<Peak>> {
        let xy = self.download(xy, 2 * maps)?;
        let score = self.download(score, maps)?;
        Ok(score
            .iter()
            .zip(xy.chunks_exact(2))
            .map(|(&score, p)| Peak {
                x: p[0],
                y: p[1],
                score,
            })
            .collect())
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_err("running the kernels"))
    }

    /// `y[0..total] = NaN`.
    pub(crate) fn fill_nan(&self, y: u64, total: usize) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: grid_dim("fill_nan", blocks(total, FLAT_THREADS), 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let total = total as u64;
        let mut b = self.on().launch_builder(&self.fill_nan);
        b.arg(&y).arg(&total);
        // SAFETY: `y` addresses a live buffer of at least `total` elements of T.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching fill_nan"))?;
        Ok(())
    }

    /// The batch of `n` images at `x` (f32, NCHW, as the caller holds it) written to `y`
    /// in T as `how` says (kernels/input.cu). On the main stream, where the copies to the
    /// GPU go.
    pub(crate) fn input_layout(&self, x: u64, y: u64, n: usize, how: InputLayout) -> Result<()> {
        self.lay_out(&self.input_layout, "input_layout", x, y, n, how)
    }

    /// The batch of `n` images at `x` (T, NCHW: a compact input) written to `y` as `how`
    /// says (kernels/input.cu, `input_pad`: bitwise `input_layout`'s result from the f32
    /// values). On the main stream.
    pub(crate) fn input_pad(&self, x: u64, y: u64, n: usize, how: InputLayout) -> Result<()> {
        self.lay_out(&self.input_pad, "input_pad", x, y, n, how)
    }

    /// Launches `f`, `input_layout` or `input_pad` of this element type: the two share
    /// their parameters but for the source's element type.
    fn lay_out(
        &self,
        f: &CudaFunction,
        what: &str,
        x: u64,
        y: u64,
        n: usize,
        how: InputLayout,
    ) -> Result<()> {
        let total = n * how.h * how.w * how.cp;
        let cfg = Self::flat(what, total)?;
        let total = total as u64;
        let (c, cp, h, w) = (
            dim_i32(how.c)?,
            dim_i32(how.cp)?,
            dim_i32(how.h)?,
            dim_i32(how.w)?,
        );
        let (nhwc, mirror) = (i32::from(how.nhwc), i32::from(how.mirror));
        let mut b = self.stream.launch_builder(f);
        b.arg(&x)
            .arg(&y)
            .arg(&total)
            .arg(&c)
            .arg(&cp)
            .arg(&h)
            .arg(&w)
            .arg(&nhwc)
            .arg(&mirror);
        // SAFETY: x holds n·c·h·w elements (f32 for input_layout, T for input_pad) and y
        // n·h·w·cp elements of T, both live, not overlapping.
        unsafe { b.launch(cfg) }.map_err(driver_err(what))?;
        Ok(())
    }

    /// The launch shape of the elementwise kernels for `total` elements.
    fn flat(what: &str, total: usize) -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: grid_dim(what, blocks(total, FLAT_THREADS), 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// Nearest upsampling by `f` of an NHWC tensor into `y` of `n` images of shape `s`
    /// (kernels/unfused.cu).
    pub(crate) fn upsample_nhwc(&self, x: u64, y: u64, s: Chw, n: usize, f: usize) -> Result<()> {
        let total = n * s.len();
        let cfg = Self::flat("upsample_nhwc", total)?;
        let (total, h, w, c, f) = (
            total as u64,
            dim_i32(s.h)?,
            dim_i32(s.w)?,
            dim_i32(s.c)?,
            dim_i32(f)?,
        );
        let mut b = self.on().launch_builder(&self.upsample_nhwc);
        b.arg(&x)
            .arg(&y)
            .arg(&total)
            .arg(&h)
            .arg(&w)
            .arg(&c)
            .arg(&f);
        // SAFETY: x holds n·(h/f)·(w/f)·c elements of T and y n·h·w·c, both live.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching upsample_nhwc"))?;
        Ok(())
    }

    /// `y = a + b` over `total` elements (kernels/unfused.cu).
    pub(crate) fn add(&self, a: u64, b: u64, y: u64, total: usize) -> Result<()> {
        let cfg = Self::flat("add", total)?;
        let total = total as u64;
        let mut l = self.on().launch_builder(&self.add);
        l.arg(&a).arg(&b).arg(&y).arg(&total);
        // SAFETY: a, b and y hold `total` elements of T each, all live.
        unsafe { l.launch(cfg) }.map_err(driver_err("launching add"))?;
        Ok(())
    }

    /// `y = max(x, 0)` over `total` elements (kernels/unfused.cu).
    pub(crate) fn relu(&self, x: u64, y: u64, total: usize) -> Result<()> {
        let cfg = Self::flat("relu", total)?;
        let total = total as u64;
        let mut l = self.on().launch_builder(&self.relu);
        l.arg(&x).arg(&y).arg(&total);
        // SAFETY: x and y hold `total` elements of T each, both live.
        unsafe { l.launch(cfg) }.map_err(driver_err("launching relu"))?;
        Ok(())
    }

    /// One convolution with fused bias, optional residual (0 for none) and ReLU over `n`
    /// images of shape `s`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv(
        &self,
        layer: &ConvLayer,
        s: Chw,
        n: usize,
        x: u64,
        w: u64,
        bias: u64,
        residual: u64,
        y: u64,
        relu: bool,
    ) -> Result<()> {
        let f = match (layer.kernel, layer.stride) {
            (3, 1) => &self.conv_k3s1,
            (3, 2) => &self.conv_k3s2,
            (1, 1) => &self.conv_k1s1,
            (k, st) => {
                return Err(Error::Config(format!(
                    "{}: no kernel for a {k}×{k} convolution with stride {st}",
                    layer.name
                )));
            }
        };
        let (ho, wo) = layer.out_size(s.h, s.w);
        let cfg = LaunchConfig {
            grid_dim: grid_dim(
                &layer.name,
                blocks(wo, CONV_TILE.0),
                blocks(ho, CONV_TILE.1),
                n * blocks(layer.cout, CONV_CO),
            )?,
            block_dim: (CONV_TILE.0 as u32, CONV_TILE.1 as u32, 1),
            shared_mem_bytes: 0,
        };
        let (cin, h, wd) = (dim_i32(s.c)?, dim_i32(s.h)?, dim_i32(s.w)?);
        let (cout, ho, wo) = (dim_i32(layer.cout)?, dim_i32(ho)?, dim_i32(wo)?);
        let relu = i32::from(relu);
        let mut b = self.on().launch_builder(f);
        b.arg(&x).arg(&w).arg(&bias).arg(&residual).arg(&y);
        b.arg(&cin)
            .arg(&h)
            .arg(&wd)
            .arg(&cout)
            .arg(&ho)
            .arg(&wo)
            .arg(&relu);
        // SAFETY: x holds n·cin·h·wd elements, w cout·cin·k·k, bias cout f32, residual (when
        // not null) and y n·cout·ho·wo, all live device buffers of this context.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching a convolution"))?;
        Ok(())
    }

    /// `y = relu(Σ upsample(term, factor))` over `n` images of output shape `s`, NCHW or
    /// (`nhwc`) NHWC.
    pub(crate) fn exchange(
        &self,
        terms: &[(u64, usize)],
        s: Chw,
        n: usize,
        y: u64,
        nhwc: bool,
    ) -> Result<()> {
        if terms.is_empty() || terms.len() > MAX_TERMS {
            return Err(Error::Config(format!(
                "an exchange unit sums 1 to 4 terms, not {}",
                terms.len()
            )));
        }
        let total = n * s.len();
        let cfg = LaunchConfig {
            grid_dim: grid_dim("exchange", blocks(total, FLAT_THREADS), 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut t = [(0u64, 0i32); MAX_TERMS];
        for (slot, &(p, f)) in t.iter_mut().zip(terms) {
            *slot = (p, dim_i32(f)?);
        }
        let (total, h, w, c) = (total as u64, dim_i32(s.h)?, dim_i32(s.w)?, dim_i32(s.c)?);
        let mut b = self.on().launch_builder(if nhwc {
            &self.exchange_nhwc
        } else {
            &self.exchange
        });
        for (p, f) in &t {
            b.arg(p).arg(f);
        }
        b.arg(&y).arg(&total).arg(&h).arg(&w);
        if nhwc {
            b.arg(&c);
        }
        // SAFETY: each non-null term holds n·c·(h/f)·(w/f) elements and y n·c·h·w, all live
        // device buffers of this context; null terms are skipped by the kernel.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching an exchange unit"))?;
        Ok(())
    }

    /// The flip test's merge of a batch of `2n` heatmaps (plain, then mirrored) into `n`
    /// f32 maps; `partner` holds each joint's left/right partner as i32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flip_merge(
        &self,
        hm: u64,
        partner: u64,
        out: u64,
        n: usize,
        k: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let total = n * k * h * w;
        let cfg = LaunchConfig {
            grid_dim: grid_dim("flip_merge", blocks(total, FLAT_THREADS), 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, k, h, w) = (dim_i32(n)?, dim_i32(k)?, dim_i32(h)?, dim_i32(w)?);
        let mut b = self.on().launch_builder(&self.flip_merge);
        b.arg(&hm)
            .arg(&partner)
            .arg(&out)
            .arg(&n)
            .arg(&k)
            .arg(&h)
            .arg(&w);
        // SAFETY: hm holds 2n·k·h·w elements of T, partner k i32 each below k, out n·k·h·w
        // f32; all live device buffers of this context.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching flip_merge"))?;
        Ok(())
    }

    /// Standalone BN(+ReLU) with running statistics, `n` images of shape `s`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bn_relu(
        &self,
        x: u64,
        stats: [u64; 4],
        s: Chw,
        n: usize,
        y: u64,
        eps: f32,
        relu: bool,
    ) -> Result<()> {
        let total = n * s.len();
        let cfg = LaunchConfig {
            grid_dim: grid_dim("bn_relu", blocks(total, FLAT_THREADS), 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (total, c, plane, relu) = (
            total as u64,
            dim_i32(s.c)?,
            dim_i32(s.h * s.w)?,
            i32::from(relu),
        );
        let [gamma, beta, mean, var] = stats;
        let mut b = self.on().launch_builder(&self.bn_relu);
        b.arg(&x).arg(&gamma).arg(&beta).arg(&mean).arg(&var);
        b.arg(&y)
            .arg(&total)
            .arg(&c)
            .arg(&plane)
            .arg(&eps)
            .arg(&relu);
        // SAFETY: x and y hold n·c·h·w elements, the four statistics c f32 each; all live.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching bn_relu"))?;
        Ok(())
    }

    /// Peaks of `maps` heatmaps of `h × w` (in T, or f32 when `f32_maps`) into `xy`
    /// (2 f32 each) and `score` (1 f32 each).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn argmax(
        &self,
        hm: u64,
        f32_maps: bool,
        maps: usize,
        h: usize,
        w: usize,
        xy: u64,
        score: u64,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: grid_dim("argmax", maps, 1, 1)?,
            block_dim: (FLAT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, w) = (dim_i32(h)?, dim_i32(w)?);
        let mut b = self.on().launch_builder(if f32_maps {
            &self.argmax_f32
        } else {
            &self.argmax
        });
        b.arg(&hm).arg(&xy).arg(&score).arg(&h).arg(&w);
        // SAFETY: hm holds maps·h·w elements, xy 2·maps and score maps f32; all live.
        unsafe { b.launch(cfg) }.map_err(driver_err("launching argmax"))?;
        Ok(())
    }
}

/// How kernels/input.cu lays out a batch of `c` channels × `h` × `w` pixels: NHWC with
/// the channels zero-padded to `cp` when `nhwc`, else NCHW (`cp` = `c`); each row
/// mirrored (the flip test's other half) when `mirror`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InputLayout {
    pub(crate) c: usize,
    pub(crate) cp: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) nhwc: bool,
    pub(crate) mirror: bool,
}

impl InputLayout {
    /// The layout of `s`'s images for the tensor-core program (`nhwc`) or the direct one.
    pub(crate) fn of(s: Nchw, nhwc: bool) -> Self {
        let cp = if nhwc { s.c.next_multiple_of(8) } else { s.c };
        let (c, h, w) = (s.c, s.h, s.w);
        InputLayout {
            c,
            cp,
            h,
            w,
            nhwc,
            mirror: false,
        }
    }

    /// Elements of T an image takes.
    pub(crate) fn len(&self) -> usize {
        self.h * self.w * self.cp
    }
}

/// `input` (NCHW) as NHWC elements with the channels zero-padded to a multiple of `align`.
pub(crate) fn nhwc_padded<T: GpuElem>(input: &Tensor, align: usize) -> Vec<T> {
    let s = input.shape();
    let c = s.c.next_multiple_of(align);
    let plane = s.h * s.w;
    let mut out = vec![T::from_f32(0.0); s.n * plane * c];
    for (img, dst) in out.chunks_exact_mut(plane * c).enumerate() {
        let src = input.image(img);
        for (p, px) in dst.chunks_exact_mut(c).enumerate() {
            for (ch, d) in px[..s.c].iter_mut().enumerate() {
                *d = T::from_f32(src[ch * plane + p]);
            }
        }
    }
    out
}

/// Records the launches `work` makes on `stream` into a CUDA graph, ready to replay.
pub(crate) fn capture(
    stream: &Arc<CudaStream>,
    work: impl FnOnce() -> Result<()>,
) -> Result<cudarc::driver::CudaGraph> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags_enum as Flags, CUstreamCaptureMode};
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(driver_err("beginning a graph capture"))?;
    let launched = work();
    let ended = stream.end_capture(Flags::CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD);
    launched?;
    ended
        .map_err(driver_err("ending a graph capture"))?
        .ok_or_else(|| Error::Cuda {
            what: "capturing launches into a CUDA graph".into(),
            reason: "the capture recorded nothing".into(),
        })
}
