// common.cuh: helpers shared by every kernel file. The Rust side compiles each .cu file
// with this text in front of it (NVRTC, one program per file), so no file includes it.
//
// Element types: `float` (f32 path) and `__half` (f16 storage). Every kernel loads its
// operands into f32, accumulates in f32 and rounds once when it stores.
#include <cuda_fp16.h>

typedef unsigned long long u64;

template <typename T> __device__ __forceinline__ float load_f32(const T* p);
template <> __device__ __forceinline__ float load_f32<float>(const float* p) { return *p; }
template <> __device__ __forceinline__ float load_f32<__half>(const __half* p) { return __half2float(*p); }

template <typename T> __device__ __forceinline__ T store_as(float v);
template <> __device__ __forceinline__ float store_as<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store_as<__half>(float v) { return __float2half_rn(v); }

// ReLU that keeps NaN, as PyTorch and the CPU reference do (fmaxf would turn NaN into 0).
__device__ __forceinline__ float relu_keep_nan(float v) { return v < 0.0f ? 0.0f : v; }

// Instantiates the device template NAME<T> as two kernels with C names NAME_f32 and
// NAME_f16. PARAMS is a macro taking the element type and giving the parameter list;
// ARGS forwards the parameters; THREADS is the block size the kernel is launched with.
#define HRNET_F32_F16(NAME, THREADS, PARAMS, ARGS)                                      \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME##_f32 PARAMS(float) {    \
        NAME<float> ARGS;                                                               \
    }                                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME##_f16 PARAMS(__half) {   \
        NAME<__half> ARGS;                                                              \
    }
