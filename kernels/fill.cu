// fill.cu: sets every element of a buffer to a quiet NaN. Tests and `verify` poison
// outputs with it before each launch, so that any element a kernel fails to write shows.
//
// Layout: a flat buffer of `total` elements of T (f32 or f16). Kernels: fill_nan_f32,
// fill_nan_f16. Launch: 256 threads per block, one element per thread, grid ceil(total / 256).

#define FILL_THREADS 256

template <typename T>
__device__ void fill_nan(T* y, u64 total) {
    const u64 i = (u64)blockIdx.x * FILL_THREADS + threadIdx.x;
    if (i < total) y[i] = store_as<T>(__int_as_float(0x7fffffff));
}

#define FILL_PARAMS(T) (T* __restrict__ y, u64 total)
#define FILL_ARGS (y, total)

HRNET_F32_F16(fill_nan, FILL_THREADS, FILL_PARAMS, FILL_ARGS)
