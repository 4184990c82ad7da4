// exchange.cu: one output branch i of an HRNet exchange unit (multi-resolution fusion).
//
//   y[n, c, yy, xx] = ReLU( Σ_j t_j[n, c, yy / f_j, xx / f_j] )
//
// Each term t_j is the identity x_i (f_j = 1), the low-resolution result of the 1×1
// conv+BN of branch j > i (f_j = 2^(j−i): nearest upsampling happens here, on the fly,
// so the upsampled tensor is never stored), or the last strided 3×3 conv of branch j < i
// (f_j = 1). Terms are added in the official order (j = 0, 1, ...) and the ReLU is
// applied once, after the whole sum.
//
// Layout: element type T, y of shape N × C × H × W, t_j of N × C × H/f_j × W/f_j, in NCHW
// (exchange_f32, exchange_f16: the direct engine) or NHWC (exchange_nhwc_f32,
// exchange_nhwc_f16: the tensor-core engine, for output branch 0, which has no strided
// conv to fuse into). Up to 4 terms; unused ones have a null pointer.
// Launch: 256 threads per block, one output element per thread,
// grid ceil(N·C·H·W / 256).
// In place: y may be a term of factor 1 (the executor writes the sum over an input that
// nothing reads afterwards), so no pointer is __restrict__: each thread reads that term's
// element at its own index before storing it.

#define EXCHANGE_THREADS 256

template <typename T>
__device__ __forceinline__ float term(const T* t, int f, u64 nc, int yy, int xx, int h, int w) {
    const int hs = h / f, ws = w / f;
    return load_f32(t + (nc * hs + yy / f) * ws + xx / f);
}

template <typename T>
__device__ void exchange(const T* t0, int f0, const T* t1, int f1, const T* t2, int f2, const T* t3, int f3,
                         T* y, u64 total, int h, int w) {
    const u64 i = (u64)blockIdx.x * EXCHANGE_THREADS + threadIdx.x;
    if (i >= total) return;
    const int xx = (int)(i % w), yy = (int)((i / w) % h);
    const u64 nc = i / ((u64)w * h);
    float s = term(t0, f0, nc, yy, xx, h, w);
    if (t1) s += term(t1, f1, nc, yy, xx, h, w);
    if (t2) s += term(t2, f2, nc, yy, xx, h, w);
    if (t3) s += term(t3, f3, nc, yy, xx, h, w);
    y[i] = store_as<T>(relu_keep_nan(s));
}

template <typename T>
__device__ __forceinline__ float term_nhwc(const T* t, int f, u64 n, int yy, int xx, int c, int h, int w, int ch) {
    const int hs = h / f, ws = w / f;
    return load_f32(t + ((n * hs + yy / f) * ws + xx / f) * ch + c);
}

template <typename T>
__device__ void exchange_nhwc(const T* t0, int f0, const T* t1, int f1, const T* t2, int f2, const T* t3, int f3,
                              T* y, u64 total, int h, int w, int ch) {
    const u64 i = (u64)blockIdx.x * EXCHANGE_THREADS + threadIdx.x;
    if (i >= total) return;
    const int c = (int)(i % ch);
    const u64 pix = i / ch;
    const int xx = (int)(pix % w), yy = (int)((pix / w) % h);
    const u64 n = pix / ((u64)w * h);
    float s = term_nhwc(t0, f0, n, yy, xx, c, h, w, ch);
    if (t1) s += term_nhwc(t1, f1, n, yy, xx, c, h, w, ch);
    if (t2) s += term_nhwc(t2, f2, n, yy, xx, c, h, w, ch);
    if (t3) s += term_nhwc(t3, f3, n, yy, xx, c, h, w, ch);
    y[i] = store_as<T>(relu_keep_nan(s));
}

#define EXCHANGE_PARAMS(T) \
    (const T* t0, int f0, const T* t1, int f1, const T* t2, int f2, const T* t3, int f3, T* y, u64 total, int h, int w)
#define EXCHANGE_ARGS (t0, f0, t1, f1, t2, f2, t3, f3, y, total, h, w)

HRNET_F32_F16(exchange, EXCHANGE_THREADS, EXCHANGE_PARAMS, EXCHANGE_ARGS)

#define EXCHANGE_NHWC_PARAMS(T)                                                                           \
    (const T* t0, int f0, const T* t1, int f1, const T* t2, int f2, const T* t3, int f3, T* y, u64 total, int h, \
     int w, int ch)
#define EXCHANGE_NHWC_ARGS (t0, f0, t1, f1, t2, f2, t3, f3, y, total, h, w, ch)

HRNET_F32_F16(exchange_nhwc, EXCHANGE_THREADS, EXCHANGE_NHWC_PARAMS, EXCHANGE_NHWC_ARGS)
