// unfused.cu: the exchange unit's elementwise steps as separate kernels, as an eager
// framework runs them (conv, BN, upsample, add, ReLU each a launch). Only the exchange-unit
// benchmark uses them: it checks the unfused sequence against the fused launch, then times
// both (src/cuda/exchange_bench.rs). BN is kernels/bn_relu.cu.
//
//   upsample_nhwc: y[n, yy, xx, c] = x[n, yy / f, xx / f, c]     (nearest, NHWC, y is N×H×W×C)
//   add:           y[i] = a[i] + b[i]
//   relu:          y[i] = max(x[i], 0), NaN kept
//
// Layout: element type T; NHWC for upsample_nhwc, any for add and relu.
// Launch: 256 threads per block, one output element per thread, grid ceil(total / 256).

#define UNFUSED_THREADS 256

template <typename T>
__device__ void upsample_nhwc(const T* x, T* y, u64 total, int h, int w, int c, int f) {
    const u64 i = (u64)blockIdx.x * UNFUSED_THREADS + threadIdx.x;
    if (i >= total) return;
    const int ch = (int)(i % c);
    const u64 pix = i / c;
    const int xx = (int)(pix % w), yy = (int)((pix / w) % h);
    const u64 n = pix / ((u64)w * h);
    const int hs = h / f, ws = w / f;
    y[i] = x[((n * hs + yy / f) * ws + xx / f) * c + ch];
}

template <typename T>
__device__ void add(const T* a, const T* b, T* y, u64 total) {
    const u64 i = (u64)blockIdx.x * UNFUSED_THREADS + threadIdx.x;
    if (i >= total) return;
    y[i] = store_as<T>(load_f32(a + i) + load_f32(b + i));
}

template <typename T>
__device__ void relu(const T* x, T* y, u64 total) {
    const u64 i = (u64)blockIdx.x * UNFUSED_THREADS + threadIdx.x;
    if (i >= total) return;
    y[i] = store_as<T>(relu_keep_nan(load_f32(x + i)));
}

#define UPSAMPLE_PARAMS(T) (const T* __restrict__ x, T* __restrict__ y, u64 total, int h, int w, int c, int f)
#define UPSAMPLE_ARGS (x, y, total, h, w, c, f)
#define ADD_PARAMS(T) (const T* a, const T* b, T* y, u64 total)
#define ADD_ARGS (a, b, y, total)
#define RELU_PARAMS(T) (const T* x, T* y, u64 total)
#define RELU_ARGS (x, y, total)

HRNET_F32_F16(upsample_nhwc, UNFUSED_THREADS, UPSAMPLE_PARAMS, UPSAMPLE_ARGS)
HRNET_F32_F16(add, UNFUSED_THREADS, ADD_PARAMS, ADD_ARGS)
HRNET_F32_F16(relu, UNFUSED_THREADS, RELU_PARAMS, RELU_ARGS)
