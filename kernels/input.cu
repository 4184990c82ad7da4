// input.cu: the caller's batch, copied to the GPU as it is held (f32, NCHW), laid out in
// the engine's element type as its program reads it, so that the host only copies bytes:
//
//   nchw (the direct kernels):      y[img, ch, p] = x[img, ch, src(p)]
//   nhwc (the tensor-core kernels): y[img, p, ch] = ch < c ? x[img, ch, src(p)] : 0,  ch < cp
//
// p runs over the h·w pixels of an image, row by row; src(p) = p, or, with `mirror`, the
// pixel of the same row in the mirrored column (x, w − 1 − x): the flip test's mirrored
// half (`input.flip(3)`) made from the plain one. cp is the stored channel count (c
// padded to a multiple of 8 for the tensor-core kernels, c itself for nchw). Each value
// is rounded once, to nearest even, as the host's half::f16::from_f32 rounds it.
//
// input_pad lays out a batch already in T, NCHW, the same way: a batch that runs the
// tensor-core program's front in chunks keeps its input compact (c channels, NCHW: 3/8
// of the padded size) and pads one chunk at a time (nhwc) into the front's arena. T to T
// is exact, so the result is input_layout's from the f32 values, bit for bit.
//
// Layout: x n × c × h × w (f32 for input_layout, T for input_pad); y n·h·w·cp elements of
// T. Kernels: input_layout_f32, input_layout_f16, input_pad_f32, input_pad_f16. Launch:
// 256 threads per block, one output element per thread, grid ceil(n·h·w·cp / 256).

#define INPUT_THREADS 256

template <typename S, typename T>
__device__ void lay_out(const S* x, T* y, u64 total, int c, int cp, int h, int w, int nhwc, int mirror) {
    const u64 i = (u64)blockIdx.x * INPUT_THREADS + threadIdx.x;
    if (i >= total) return;
    const u64 hw = (u64)h * w;
    int ch;
    u64 p, img;
    if (nhwc) {
        ch = (int)(i % cp);
        const u64 pixel = i / cp;
        p = pixel % hw;
        img = pixel / hw;
    } else {
        p = i % hw;
        const u64 plane = i / hw;
        ch = (int)(plane % cp);
        img = plane / cp;
    }
    if (mirror) {
        const u64 col = p % w;
        p = p - col + (u64)(w - 1) - col;
    }
    y[i] = store_as<T>(ch < c ? load_f32(&x[(img * c + ch) * hw + p]) : 0.0f);
}

template <typename T>
__device__ void input_layout(const float* x, T* y, u64 total, int c, int cp, int h, int w, int nhwc,
                             int mirror) {
    lay_out(x, y, total, c, cp, h, w, nhwc, mirror);
}

template <typename T>
__device__ void input_pad(const T* x, T* y, u64 total, int c, int cp, int h, int w, int nhwc, int mirror) {
    lay_out(x, y, total, c, cp, h, w, nhwc, mirror);
}

#define INPUT_PARAMS(T) \
    (const float* __restrict__ x, T* __restrict__ y, u64 total, int c, int cp, int h, int w, int nhwc, int mirror)
#define INPUT_ARGS (x, y, total, c, cp, h, w, nhwc, mirror)

HRNET_F32_F16(input_layout, INPUT_THREADS, INPUT_PARAMS, INPUT_ARGS)

#define PAD_PARAMS(T) \
    (const T* __restrict__ x, T* __restrict__ y, u64 total, int c, int cp, int h, int w, int nhwc, int mirror)

HRNET_F32_F16(input_pad, INPUT_THREADS, PAD_PARAMS, INPUT_ARGS)
