// bn_relu.cu: standalone batch norm with running statistics, optionally followed by ReLU,
// for the unfused path and for tests:
//
//   y[n, c, p] = act( (x[n, c, p] − mean[c]) / sqrt(var[c] + eps) · gamma[c] + beta[c] )
//
// Layout: x, y NCHW in T (f32 or f16), plane = H·W; gamma, beta, mean, var f32 [C].
// Kernels: bn_relu_f32, bn_relu_f16. Launch: 256 threads per block, one element per
// thread, grid ceil(N·C·H·W / 256). In-place (x == y) is allowed.

#define BN_THREADS 256

template <typename T>
__device__ void bn_relu(const T* x, const float* gamma, const float* beta, const float* mean, const float* var,
                        T* y, u64 total, int channels, int plane, float eps, int relu) {
    const u64 i = (u64)blockIdx.x * BN_THREADS + threadIdx.x;
    if (i >= total) return;
    const int c = (int)((i / plane) % channels);
    const float scale = gamma[c] * rsqrtf(var[c] + eps);
    float v = (load_f32(x + i) - mean[c]) * scale + beta[c];
    if (relu) v = relu_keep_nan(v);
    y[i] = store_as<T>(v);
}

#define BN_PARAMS(T)                                                                                   \
    (const T* x, const float* __restrict__ gamma, const float* __restrict__ beta,                      \
     const float* __restrict__ mean, const float* __restrict__ var, T* y, u64 total, int channels, int plane, \
     float eps, int relu)
#define BN_ARGS (x, gamma, beta, mean, var, y, total, channels, plane, eps, relu)

HRNET_F32_F16(bn_relu, BN_THREADS, BN_PARAMS, BN_ARGS)
