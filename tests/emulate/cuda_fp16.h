// cuda_fp16.h for host C++: the part of CUDA's half-precision header that kernels/ uses,
// so that kernels/common.cuh compiles unchanged on the CPU (tests/emulate). __half is
// IEEE binary16 (_Float16), converted with round-to-nearest-even as on the GPU.
#pragma once

struct __half {
    _Float16 v;
};
static inline float __half2float(__half h) { return (float)h.v; }
static inline __half __float2half_rn(float f) { return __half{(_Float16)f}; }
