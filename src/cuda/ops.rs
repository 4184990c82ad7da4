//! Single kernels on host data, one launch each, outputs poisoned with NaN first: what
//! the parity tests check against the CPU reference, op by op.

use super::gpu::{Gpu, GpuElem, InputLayout};
use super::tc::TcTuning;
use crate::decode::Peak;
use crate::error::{Error, Result};
use crate::graph::{Chw, ConvLayer};
use crate::tensor::{Nchw, Tensor};
use crate::weights::ConvParams;

/// The kernels of one element type on GPU 0, callable one at a time.
pub struct CudaOps<T> {
    gpu: Gpu<T>,
}

fn to_elems<T: GpuElem>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

impl<T: GpuElem> CudaOps<T> {
    /// Opens GPU 0 and loads the kernels (compiled once per process).
    pub fn open() -> Result<Self> {
        Ok(CudaOps { gpu: Gpu::open(0)? })
    }

    /// A poisoned output buffer of `len` elements.
    fn output(&self, len: usize) -> Result<cudarc::driver::CudaSlice<T>> {
        let y = self.gpu.alloc::<T>(len)?;
        self.gpu.fill_nan(self.gpu.addr(&y), len)?;
        Ok(y)
    }

    fn finish(&self, y: &cudarc::driver::CudaSlice<T>, shape: Nchw) -> Result<Tensor> {
        let out = self.gpu.download(y, shape.len())?;
        Tensor::new(shape, T::widen(out))
    }

    /// `relu?(conv(x) + bias + residual?)` (kernels/conv.cu).
    pub fn conv(
        &self,
        x: &Tensor,
        layer: &ConvLayer,
        p: &ConvParams,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let s = x.shape();
        if s.c != layer.cin || p.weight.len() != layer.weight_len() || p.bias.len() != layer.cout {
            return Err(Error::Input(format!(
                "conv {}: input {s} or parameters do not fit the layer",
                layer.name
            )));
        }
        let (ho, wo) = layer.out_size(s.h, s.w);
        let shape = Nchw {
            n: s.n,
            c: layer.cout,
            h: ho,
            w: wo,
        };
        if residual.is_some_and(|r| r.shape() != shape) {
            return Err(Error::Input(format!(
                "conv {}: the residual must have shape {shape}",
                layer.name
            )));
        }
        let xd = self.gpu.upload(&to_elems::<T>(x.data()))?;
        let wd = self.gpu.upload(&to_elems::<T>(&p.weight))?;
        let bd = self.gpu.upload(&p.bias)?;
        let rd = residual
            .map(|r| self.gpu.upload(&to_elems::<T>(r.data())))
            .transpose()?;
        let y = self.output(shape.len())?;
        let g = &self.gpu;
        let res = rd.as_ref().map_or(0, |r| g.addr(r));
        g.conv(
            layer,
            s.chw(),
            s.n,
            g.addr(&xd),
            g.addr(&wd),
            g.addr(&bd),
            res,
            g.addr(&y),
            relu,
        )?;
        self.finish(&y, shape)
    }

    /// Device milliseconds of the convolution kernel alone (operands uploaded once), for
    /// each of `runs` runs after `warmup`: for benchmarks.
    pub fn time_conv(
        &self,
        x: &Tensor,
        layer: &ConvLayer,
        p: &ConvParams,
        warmup: usize,
        runs: usize,
    ) -> Result<Vec<f64>> {
        let s = x.shape();
        let (ho, wo) = layer.out_size(s.h, s.w);
        let xd = self.gpu.upload(&to_elems::<T>(x.data()))?;
        let wd = self.gpu.upload(&to_elems::<T>(&p.weight))?;
        let bd = self.gpu.upload(&p.bias)?;
        let y = self.output(s.n * layer.cout * ho * wo)?;
        let g = &self.gpu;
        let (xa, wa, ba, ya) = (g.addr(&xd), g.addr(&wd), g.addr(&bd), g.addr(&y));
        let launch = || g.conv(layer, s.chw(), s.n, xa, wa, ba, 0, ya, true);
        for _ in 0..warmup {
            launch()?;
        }
        super::gpu::time_runs(&g.stream, runs, launch)
    }

    /// `relu(Σ upsample(term, factor))` (kernels/exchange.cu); the output has the first
    /// term's batch and channels and its size times its factor.
    pub fn exchange(&self, terms: &[(&Tensor, usize)]) -> Result<Tensor> {
        let (first, f0) = terms
            .first()
            .ok_or_else(|| Error::Input("an exchange needs a term".into()))?;
        let s0 = first.shape();
        let shape = Nchw {
            h: s0.h * f0,
            w: s0.w * f0,
            ..s0
        };
        for (t, f) in terms {
            let s = t.shape();
            if (s.n, s.c, s.h * f, s.w * f) != (shape.n, shape.c, shape.h, shape.w) {
                return Err(Error::Input(format!(
                    "exchange term {s} ×{f} does not make {shape}"
                )));
            }
        }
        let bufs: Vec<_> = terms
            .iter()
            .map(|(t, _)| self.gpu.upload(&to_elems::<T>(t.data())))
            .collect::<Result<_>>()?;
        let ptrs: Vec<(u64, usize)> = bufs
            .iter()
            .zip(terms)
            .map(|(b, (_, f))| (self.gpu.addr(b), *f))
            .collect();
        let y = self.output(shape.len())?;
        self.gpu
            .exchange(&ptrs, shape.chw(), shape.n, self.gpu.addr(&y), false)?;
        self.finish(&y, shape)
    }

    /// Batch norm with running statistics `[gamma, beta, mean, var]`, then ReLU if asked
    /// (kernels/bn_relu.cu).
    pub fn bn_relu(&self, x: &Tensor, stats: [&[f32]; 4], eps: f32, relu: bool) -> Result<Tensor> {
        let s = x.shape();
        if stats.iter().any(|v| v.len() != s.c) {
            return Err(Error::Input(format!(
                "bn_relu: statistics must have {} channels",
                s.c
            )));
        }
        let xd = self.gpu.upload(&to_elems::<T>(x.data()))?;
        let sd: Vec<_> = stats
            .iter()
            .map(|v| self.gpu.upload(v))
            .collect::<Result<_>>()?;
        let y = self.output(s.len())?;
        let g = &self.gpu;
        let st = [
            g.addr(&sd[0]),
            g.addr(&sd[1]),
            g.addr(&sd[2]),
            g.addr(&sd[3]),
        ];
        g.bn_relu(
            g.addr(&xd),
            st,
            Chw {
                c: s.c,
                h: s.h,
                w: s.w,
            },
            s.n,
            g.addr(&y),
            eps,
            relu,
        )?;
        self.finish(&y, s)
    }

    /// The batch `x` (f32, NCHW) laid out as the engine lays out its input
    /// (kernels/input.cu): NHWC with the channels zero-padded to a multiple of 8 when
    /// `nhwc` (the tensor-core program), else NCHW; each row mirrored when `mirror` (the
    /// flip test's second half); the stored elements widened to f32.
    pub fn input_layout(&self, x: &Tensor, nhwc: bool, mirror: bool) -> Result<Vec<f32>> {
        self.laid_out(x, nhwc, mirror, false)
    }

    /// The batch `x`, rounded to T and stored NCHW (a compact input), padded as
    /// [`CudaOps::input_layout`] lays it out (kernels/input.cu, `input_pad`); the stored
    /// elements widened to f32.
    pub fn input_pad(&self, x: &Tensor, nhwc: bool, mirror: bool) -> Result<Vec<f32>> {
        self.laid_out(x, nhwc, mirror, true)
    }

    /// `x` laid out by `input_pad` from its values rounded to T (`rounded`), else by
    /// `input_layout` from its f32 values.
    fn laid_out(&self, x: &Tensor, nhwc: bool, mirror: bool, rounded: bool) -> Result<Vec<f32>> {
        let s = x.shape();
        let how = InputLayout {
            mirror,
            ..InputLayout::of(s, nhwc)
        };
        let len = s.n * how.len();
        let y = self.output(len)?;
        let g = &self.gpu;
        if rounded {
            let xd = g.upload(&to_elems::<T>(x.data()))?;
            g.input_pad(g.addr(&xd), g.addr(&y), s.n, how)?;
        } else {
            let xd = g.upload(x.data())?;
            g.input_layout(g.addr(&xd), g.addr(&y), s.n, how)?;
        }
        Ok(T::widen(g.download(&y, len)?))
    }

    /// The peak of every heatmap (kernels/argmax.cu).
    pub fn argmax(&self, heatmaps: &Tensor) -> Result<Vec<Peak>> {
        let s = heatmaps.shape();
        let maps = s.n * s.c;
        let hd = self.gpu.upload(&to_elems::<T>(heatmaps.data()))?;
        let nan = vec![f32::NAN; 2 * maps];
        let xy = self.gpu.upload(&nan)?;
        let score = self.gpu.upload(&nan[..maps])?;
        self.gpu.argmax(
            self.gpu.addr(&hd),
            false,
            maps,
            s.h,
            s.w,
            self.gpu.addr(&xy),
            self.gpu.addr(&score),
        )?;
        self.gpu.read_peaks(&xy, &score, maps)
    }
}

/// One summed convolution of [`CudaOps::conv_tc`]: input, layer, folded parameters.
pub type TcSource<'a> = (&'a Tensor, &'a ConvLayer, &'a ConvParams);

/// A tensor-core step with its operands on the device, ready to launch.
struct TcLaunch<T> {
    step: super::tc::ConvStep<T>,
    /// Room for the step's split K (None: never split).
    scratch: Option<super::tc::SplitScratch>,
    tuning: TcTuning,
    bufs: Vec<cudarc::driver::CudaSlice<T>>,
    shape: Nchw,
    nchw_out: bool,
}

impl<T: GpuElem> TcLaunch<T> {
    fn run(&self, g: &Gpu<T>) -> Result<()> {
        let addr = |v: crate::graph::ValueId| g.addr(&self.bufs[v.0]);
        super::tc::launch_conv(
            g,
            &self.step,
            self.shape.n,
            self.nchw_out,
            &addr,
            super::tc::How {
                tuning: self.tuning,
                scratch: self.scratch.as_ref(),
            },
        )
    }
}

impl<T: GpuElem> CudaOps<T> {
    /// Uploads the operands of a tensor-core step (see [`CudaOps::conv_tc`]); the output is
    /// the last buffer, poisoned with NaN.
    fn prepare_tc(
        &self,
        sources: &[TcSource<'_>],
        terms: &[(&Tensor, usize)],
        relu: bool,
        nchw_out: bool,
        tuning: TcTuning,
    ) -> Result<TcLaunch<T>> {
        use super::tc::{ConvStep, Part};
        use crate::graph::ValueId;
        use crate::graph::fused::{MAX_SOURCES, MAX_TERMS};
        let Some(&(x0, l0, _)) = sources.first() else {
            return Err(Error::Input("conv_tc needs a source".into()));
        };
        if sources.len() > MAX_SOURCES || terms.len() > MAX_TERMS {
            return Err(Error::Input(format!(
                "conv_tc sums at most {MAX_SOURCES} convolutions and {MAX_TERMS} terms"
            )));
        }
        let s0 = x0.shape();
        let (ho, wo) = l0.out_size(s0.h, s0.w);
        let shape = Nchw {
            n: s0.n,
            c: l0.cout,
            h: ho,
            w: wo,
        };
        for &(x, l, p) in sources {
            let s = x.shape();
            if (s.n, s.h, s.w, s.c) != (s0.n, s0.h, s0.w, l.cin)
                || p.weight.len() != l.weight_len()
                || p.bias.len() != l.cout
            {
                return Err(Error::Input(format!(
                    "conv_tc {}: input {s} or parameters do not fit",
                    l.name
                )));
            }
        }
        for (t, f) in terms {
            let s = t.shape();
            if (s.n, s.c, s.h * f, s.w * f) != (shape.n, shape.c, shape.h, shape.w) {
                return Err(Error::Input(format!(
                    "conv_tc term {s} ×{f} does not make {shape}"
                )));
            }
        }
        let g = &self.gpu;
        // Buffers by ValueId: sources 0.., terms from MAX_SOURCES, the output last.
        let mut bufs = Vec::new();
        let mut parts = Vec::new();
        for (i, &(x, layer, params)) in sources.iter().enumerate() {
            bufs.push(g.upload(&super::gpu::nhwc_padded::<T>(x, 8))?);
            parts.push(Part {
                input: ValueId(i),
                layer,
                params,
                stored_cin: layer.cin.next_multiple_of(8),
            });
        }
        while bufs.len() < MAX_SOURCES {
            bufs.push(g.alloc(0)?);
        }
        let mut term_ids = Vec::new();
        for (i, &(t, f)) in terms.iter().enumerate() {
            bufs.push(g.upload(&super::gpu::nhwc_padded::<T>(t, 1))?);
            term_ids.push((ValueId(MAX_SOURCES + i), f));
        }
        let out_id = ValueId(bufs.len());
        bufs.push(self.output(shape.len())?);
        let step = ConvStep::new(g, &parts, s0.chw(), &term_ids, relu, out_id)?;
        let scratch = tuning
            .split_k
            .then(|| {
                let room = step.plan(s0.n, g.info.multiprocessors, true).need();
                super::tc::SplitScratch::new(g, room)
            })
            .transpose()?;
        Ok(TcLaunch {
            step,
            scratch,
            tuning,
            bufs,
            shape,
            nchw_out,
        })
    }

    /// One tensor-core step (kernels/conv_tc.cu) on NCHW host tensors:
    /// `relu?(Σ_s conv(x_s) + Σ_s bias_s + Σ_t upsample(term_t))`. The sources share their
    /// batch, resolution and layer shape; their channels are padded to 8 on upload. The
    /// result comes back NCHW, written by the kernel as NHWC (or NCHW when `nchw_out`).
    /// Launched as `tuning` says: with split K, the K loop is split across blocks as the
    /// engine splits it ([`CudaOps::tc_splits`] ways).
    pub fn conv_tc(
        &self,
        sources: &[TcSource<'_>],
        terms: &[(&Tensor, usize)],
        relu: bool,
        nchw_out: bool,
        tuning: TcTuning,
    ) -> Result<Tensor> {
        let l = self.prepare_tc(sources, terms, relu, nchw_out, tuning)?;
        l.run(&self.gpu)?;
        let shape = l.shape;
        let y = self
            .gpu
            .download(l.bufs.last().expect("the output"), shape.len())?;
        let y: Vec<f32> = T::widen(y);
        let data = if nchw_out {
            y
        } else {
            let (c, plane) = (shape.c, shape.h * shape.w);
            let mut nchw = vec![0.0; y.len()];
            for (img, src) in y.chunks_exact(plane * c).enumerate() {
                for (p, px) in src.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        nchw[(img * c + ch) * plane + p] = v;
                    }
                }
            }
            nchw
        };
        Tensor::new(shape, data)
    }

    /// How many ways the engine splits the K loop of the tensor-core `layer` on an input
    /// of shape `x` on this GPU (1: not split).
    #[must_use]
    pub fn tc_splits(&self, x: Nchw, layer: &ConvLayer) -> usize {
        let (ho, wo) = layer.out_size(x.h, x.w);
        let k = layer.kernel * layer.kernel * layer.cin.next_multiple_of(8);
        let sms = self.gpu.info.multiprocessors;
        super::tc::LaunchPlan::new::<T>(x.n * ho * wo, layer.cout, k, sms, true).splits
    }

    /// Device milliseconds of one tensor-core convolution (`relu(conv(x) + bias)`,
    /// operands uploaded once, NHWC out, launched as `tuning` says), for each of `runs`
    /// runs after `warmup`.
    pub fn time_conv_tc(
        &self,
        x: &Tensor,
        layer: &ConvLayer,
        p: &ConvParams,
        tuning: TcTuning,
        warmup: usize,
        runs: usize,
    ) -> Result<Vec<f64>> {
        let l = self.prepare_tc(&[(x, layer, p)], &[], true, false, tuning)?;
        for _ in 0..warmup {
            l.run(&self.gpu)?;
        }
        super::gpu::time_runs(&self.gpu.stream, runs, || l.run(&self.gpu))
    }
}
