// warp.h: host versions of the PTX wrappers of kernels/conv_tc.cu: a 32-lane warp
// emulator for ldmatrix and mma.sync following the PTX ISA's fragment layouts (sections
// "Matrix Fragments for mma.m16n8k16 with floating point type" and "ldmatrix"), and
// cp.async as the asynchronous copy it is: each copy lands in shared memory either at once
// or as late as the PTX ISA allows (when a cp.async.wait_group of its thread retires its
// group), chosen at random per copy. A read of a pipeline stage before its copies were
// waited for then sees the stage's old contents, and a refill of a stage that another warp
// has not finished reading overwrites it under that warp: both change the result. Every
// lane of a warp is a fiber (device.h); the lanes meet at the warp's barrier to exchange
// their registers. Misaligned addresses abort, as the GPU faults.
// Include after device.h and before kernels/conv_tc.cu, with HRNET_WARP_EMULATION defined.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda_fp16.h"
#include "device.h"

struct Warp {
    FiberBarrier sync;
    const void* row[32];
    unsigned* out[32];
    unsigned a[32][4], b[32][2];
    float* d[32];
};
inline Warp warps[32];  // a block of up to 1024 threads
static inline int lane_id() { return threadIdx.x & 31; }
static inline Warp& warp() { return warps[threadIdx.x >> 5]; }

// A warp-wide instruction: every lane leaves its operands in the warp and arrives; the last
// lane to arrive carries out `all` for all 32 lanes, and only then do they go on. One round
// of switches, where a barrier before the exchange and one after it took two, and the
// instruction reads its operands at one moment, as the GPU's does.
template <typename F> static inline void warp_collective(Warp& w, const std::source_location& at, F&& all) {
    BlockRun& r = *running_block;
    ++r.progress;
    arrive_at(w.sync, at, "a warp-wide instruction (ldmatrix, mma.sync)");
    const unsigned long long phase = w.sync.phase;
    if (++w.sync.arrived == 32) {
        all();
        w.sync.arrived = 0;
        ++w.sync.phase;
        return;
    }
    while (w.sync.phase == phase) fiber_yield();
}

static inline void require_aligned16(const void* p, const char* what) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) emulation_abort(what);
}

// One thread's copies in flight, oldest first, each with the number of its group; the open
// group (the one being filled) is number `committed`. One queue that keeps its storage, so
// that the pipeline's copies allocate nothing once it has run a block (under
// AddressSanitizer, allocating took 5% of a run).
struct CpAsyncCopy {
    void* dst;
    unsigned char bytes[16];
    unsigned long long group;
};
struct CpAsyncThread {
    std::vector<CpAsyncCopy> queue;
    size_t landed = 0;  // queue[..landed] have landed
    unsigned long long committed = 0;
};
inline CpAsyncThread cp_async_threads[1024];
// Whether a copy lands at once or at its group's wait: xorshift64, reseeded by the harness.
inline std::uint64_t cp_async_rng = 0x9e3779b97f4a7c15ull;
static inline void cp_async_seed(std::uint64_t seed) { cp_async_rng = seed | 1; }
static inline bool cp_async_lands_now() {
    return xorshift64(cp_async_rng) >> 63;
}
static inline CpAsyncThread& cp_async_thread() {
    return cp_async_threads[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
}

// The source is read at issue (no kernel writes what cp.async reads while it runs); the
// destination is written now or when the group is waited for.
static inline void cp_async16(void* smem, const void* gmem, int bytes, bool /* through L1 */) {
    require_aligned16(smem, "cp.async: shared address not 16-byte aligned");
    require_aligned16(gmem, "cp.async: global address not 16-byte aligned");
    CpAsyncThread& t = cp_async_thread();
    CpAsyncCopy c{smem, {}, t.committed};
    if (bytes == 16)
        std::memcpy(c.bytes, gmem, 16);
    else if (bytes != 0)
        emulation_abort("cp.async: source size other than 0 or 16 bytes");
    if (cp_async_lands_now())
        std::memcpy(smem, c.bytes, 16);
    else
        t.queue.push_back(c);
}
static inline void cp_async_commit() { ++cp_async_thread().committed; }
// cp.async.wait_group N: every committed group but the N most recent has landed.
template <int N> static inline void cp_async_wait() {
    CpAsyncThread& t = cp_async_thread();
    while (t.landed < t.queue.size() && t.queue[t.landed].group + N < t.committed) {
        const CpAsyncCopy& c = t.queue[t.landed++];
        std::memcpy(c.dst, c.bytes, 16);
    }
    if (t.landed == t.queue.size()) {
        t.queue.clear();
        t.landed = 0;
    }
}
// A thread that exits with copies in flight: they would land in a shared memory that no one
// reads any more; dropped, so that the next block starts with none.
static inline void cp_async_thread_exit() {
    CpAsyncThread& t = cp_async_thread();
    t.queue.clear();
    t.landed = 0;
    t.committed = 0;
}
inline const bool cp_async_exit_hooked = (thread_exit_hook = cp_async_thread_exit, true);

// Programmatic dependent launch: the emulated driver runs kernels one after another, so
// the wait has nothing to wait for; it records that the kernel waited, which the driver
// requires of a kernel launched with programmatic stream serialization.
inline bool grid_dependency_waited = false;
static inline void grid_dependency_wait() { grid_dependency_waited = true; }
static inline void grid_dependents_launch() {}

static inline uint16_t bits(const void* p, int i) {
    uint16_t v;
    std::memcpy(&v, (const char*)p + 2 * i, 2);
    return v;
}
static inline float half_of(unsigned reg, int hi) {
    uint16_t b = hi ? (uint16_t)(reg >> 16) : (uint16_t)(reg & 0xffff);
    _Float16 h;
    std::memcpy(&h, &b, 2);
    return (float)h;
}

// ldmatrix .x4: lanes 8q..8q+7 give the 8 row addresses of matrix q; lane l receives, of
// each matrix, row l/4, elements 2(l%4) and 2(l%4)+1.
static inline void ldmatrix_x4(unsigned (&r)[4], const void* smem,
                               const std::source_location at = std::source_location::current()) {
    require_aligned16(smem, "ldmatrix: row address not 16-byte aligned");
    Warp& w = warp();
    const int l = lane_id();
    w.row[l] = smem;
    w.out[l] = r;
    warp_collective(w, at, [&w] {
        for (int lane = 0; lane < 32; ++lane)
            for (int q = 0; q < 4; ++q) {
                const void* row = w.row[q * 8 + lane / 4];
                w.out[lane][q] = bits(row, 2 * (lane % 4)) | ((unsigned)bits(row, 2 * (lane % 4) + 1) << 16);
            }
    });
}

// cvt.rn.bf16x2.f32: lo and hi rounded to bf16 (the top 16 bits of an f32; to nearest,
// ties to even) and packed as the low and high halves.
static inline unsigned bf16_bits(float x) {
    unsigned b;
    std::memcpy(&b, &x, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u;  // NaN stays NaN (quiet)
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}
static inline unsigned bf16x2_bits(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }
static inline float bf16_of(unsigned reg, int hi) {
    const unsigned b = hi ? (reg & 0xffff0000u) : (reg << 16);
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

// mma.m16n8k16 .row.col with 16-bit inputs (Of reads the low or high one of a register)
// and f32 accumulators: the lanes' fragments exchanged through the warp, then d += A·B for
// each lane's four accumulators, k in order. A: register j of lane l holds row l/4 + 8(j%2),
// columns 2(l%4) + 8(j/2) + {0, 1}; B: register j holds rows (k) 2(l%4) + 8j + {0, 1},
// column l/4; C/D: element e is row l/4 + 8(e/2), column 2(l%4) + e%2. The inputs are
// widened to f32 once per instruction (exactly: both 16-bit types fit in an f32).
template <float (*Of)(unsigned, int)>
static inline void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                                const std::source_location& at) {
    Warp& w = warp();
    const int l = lane_id();
    for (int j = 0; j < 4; ++j) w.a[l][j] = a[j];
    w.b[l][0] = b0;
    w.b[l][1] = b1;
    w.d[l] = d;
    warp_collective(w, at, [&w] {
        float A[16][16], B[16][8];  // A[row][k], B[k][col]
        for (int lane = 0; lane < 32; ++lane)
            for (int half = 0; half < 2; ++half) {
                const int k = 2 * (lane % 4) + half;
                for (int j = 0; j < 4; ++j) A[lane / 4 + 8 * (j % 2)][k + 8 * (j / 2)] = Of(w.a[lane][j], half);
                for (int j = 0; j < 2; ++j) B[k + 8 * j][lane / 4] = Of(w.b[lane][j], half);
            }
        for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
                const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + e % 2;
                float s = w.d[lane][e];
                for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
                w.d[lane][e] = s;
            }
    });
}
static inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                             const std::source_location at = std::source_location::current()) {
    mma_m16n8k16<half_of>(d, a, b0, b1, at);
}
static inline void mma_16816_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                                  const std::source_location at = std::source_location::current()) {
    mma_m16n8k16<bf16_of>(d, a, b0, b1, at);
}
