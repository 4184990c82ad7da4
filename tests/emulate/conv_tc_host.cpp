// conv_tc_host.cpp: runs kernels/conv_tc.cu on the CPU, every block as 128 fibers, with a
// 32-lane warp emulator standing in for the PTX instructions, and checks every output
// against a direct convolution in double. It tests what a GPU-less machine can: the
// kernel's indexing (implicit GEMM addressing, padding, sources, tiles, epilogue terms,
// strides) and its use of the ldmatrix and mma.sync fragment layouts, as the PTX ISA
// defines them (section "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "ldmatrix"), and the ordering of its cp.async pipeline: each copy lands at once or only
// at its wait, at random (warp.h), so reading a stage too early or refilling one too soon
// gives wrong outputs; each block's threads take their turns in an order drawn afresh
// (device.h), checked first on a block that lacks a barrier; each block finds its shared
// memory filled with NaN; and threads that wait at different barriers or warp-wide
// instructions at once stop the run (checked by `conv_tc_host divergent-barrier` and
// `divergent-warp`). Split K runs its blocks in a random order, twice: the result must not
// depend on which block of a tile came last, and the tile counters must be back at zero.
//
// Built and run by tests/conv_tc_emulated.rs:
// c++ -std=c++20 -O2 -pthread -I KERNELS -I tests/emulate, KERNELS being tests/common's
// marked copy of kernels/ (emulated_kernels), or kernels/ itself, without the poisoning.
// Prints one line per case; exits 1 on the first mismatch.

#include <sys/resource.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "device.h"
#include "warp.h"

#define HRNET_WARP_EMULATION
#include "common.cuh"
#include "conv_tc.cu"

// ---- the harness ----
template <typename E> struct Tile {
    typedef void (*Kernel)(const TcArgs<E>);
    int bm, bn, stages;
    Kernel k3s1, k3s2, k1s1;
};
static const Tile<__half> TILES_F16[] = {
    {128, 64, TC_STAGES, conv_tc_k3s1_128x64_f16, conv_tc_k3s2_128x64_f16, conv_tc_k1s1_128x64_f16},
    {64, 64, TC_STAGES, conv_tc_k3s1_64x64_f16, conv_tc_k3s2_64x64_f16, conv_tc_k1s1_64x64_f16},
    {128, 32, TC_STAGES, conv_tc_k3s1_128x32_f16, conv_tc_k3s2_128x32_f16, conv_tc_k1s1_128x32_f16},
    {64, 32, TC_STAGES, conv_tc_k3s1_64x32_f16, conv_tc_k3s2_64x32_f16, conv_tc_k1s1_64x32_f16},
    {32, 32, TC_STAGES, conv_tc_k3s1_32x32_f16, conv_tc_k3s2_32x32_f16, conv_tc_k1s1_32x32_f16},
    {32, 32, TC_DEEP_STAGES, conv_tc_k3s1_32x32_deep_f16, conv_tc_k3s2_32x32_deep_f16, conv_tc_k1s1_32x32_deep_f16},
};
static const Tile<float> TILES_F32[] = {
    {64, 32, TC_STAGES, conv_tc_k3s1_64x32_f32, conv_tc_k3s2_64x32_f32, conv_tc_k1s1_64x32_f32},
    {32, 32, TC_STAGES, conv_tc_k3s1_32x32_f32, conv_tc_k3s2_32x32_f32, conv_tc_k1s1_32x32_f32},
    {32, 32, TC_DEEP_STAGES, conv_tc_k3s1_32x32_deep_f32, conv_tc_k3s2_32x32_deep_f32, conv_tc_k1s1_32x32_deep_f32},
};

static std::mt19937_64 rng(std::random_device{}());

template <typename E>
static void run_grid(typename Tile<E>::Kernel kernel, const TcArgs<E>& a, int gx, int gy, int gz) {
    struct Call {
        typename Tile<E>::Kernel kernel;
        const TcArgs<E>* a;
    } call{kernel, &a};
    auto invoke = [](const void* c) {
        const Call& k = *static_cast<const Call*>(c);
        k.kernel(*k.a);
    };
    blockDim = Dim3{TC_THREADS, 1, 1};
    gridDim = Dim3{(unsigned)gx, (unsigned)gy, (unsigned)gz};
    std::vector<Dim3> order;
    for (int bz = 0; bz < gz; ++bz)
        for (int by = 0; by < gy; ++by)
            for (int bx = 0; bx < gx; ++bx) order.push_back(Dim3{(unsigned)bx, (unsigned)by, (unsigned)bz});
    std::shuffle(order.begin(), order.end(), rng);
    for (const Dim3& b : order) {
        blockIdx = b;
        run_block(blockDim, invoke, &call);
    }
}
template <typename E> static E rnd() { return store_as<E>(std::normal_distribution<float>(0.0f, 1.0f)(rng)); }
template <typename E> static double value(E v) { return load_f32(&v); }
template <typename E> static const char* type_name() { return sizeof(E) == 2 ? "f16" : "f32"; }

struct Case {
    int ks, stride, n, h, w, cout;
    std::vector<int> cin;      // per source (multiples of 8)
    std::vector<int> factors;  // per epilogue term
    bool relu, nchw;
};

// A case's random operands in element type E: sources, weights, bias, terms.
template <typename E> struct Operands {
    std::vector<std::vector<E>> x, terms;
    std::vector<E> w;
    std::vector<float> bias;
    std::vector<int> kbeg;
    int k = 0, ho = 0, wo = 0;
};

template <typename E> static Operands<E> operands(const Case& c) {
    Operands<E> o;
    const int p = c.ks / 2, kk = c.ks * c.ks;
    o.ho = (c.h + 2 * p - c.ks) / c.stride + 1;
    o.wo = (c.w + 2 * p - c.ks) / c.stride + 1;
    for (int ci : c.cin) {
        o.kbeg.push_back(o.k);
        o.k += kk * ci;
    }
    o.x.resize(c.cin.size());
    for (size_t s = 0; s < c.cin.size(); ++s) {
        o.x[s].resize((size_t)c.n * c.h * c.w * c.cin[s]);
        for (auto& v : o.x[s]) v = rnd<E>();
    }
    o.w.resize((size_t)c.cout * o.k);
    const float scale = 1.0f / std::sqrt((float)o.k);
    for (auto& v : o.w) v = store_as<E>((float)value(rnd<E>()) * scale);
    o.bias.resize(c.cout);
    for (auto& v : o.bias) v = (float)value(rnd<E>());
    o.terms.resize(c.factors.size());
    for (size_t t = 0; t < c.factors.size(); ++t) {
        o.terms[t].resize((size_t)c.n * (o.ho / c.factors[t]) * (o.wo / c.factors[t]) * c.cout);
        for (auto& v : o.terms[t]) v = rnd<E>();
    }
    return o;
}

// Runs one case with one tile on operands `o`, its K split `splits` ways, leaving the
// output in `y`; returns false on a mismatch beyond `bound` (relative L2 against the
// convolution in double of the same operands).
template <typename E>
static bool check(const Case& c, const Operands<E>& o, const Tile<E>& tile, int splits, double bound,
                  std::vector<E>& y) {
    const int p = c.ks / 2;
    const int ho = o.ho, wo = o.wo, k = o.k;
    const int nsrc = (int)c.cin.size();
    const auto &x = o.x, &terms = o.terms;
    const auto &w = o.w, &kbeg = o.kbeg;
    const auto& bias = o.bias;
    y.assign((size_t)c.n * ho * wo * c.cout, store_as<E>(NAN));

    TcArgs<E> a{};
    for (int s = 0; s < nsrc; ++s) {
        a.src[s] = x[s].data();
        a.cin[s] = c.cin[s];
        a.kbeg[s] = kbeg[s];
    }
    for (size_t t = 0; t < c.factors.size(); ++t) {
        a.term[t] = terms[t].data();
        a.factor[t] = c.factors[t];
    }
    a.w = w.data();
    a.bias = bias.data();
    a.y = y.data();
    const long long plane = (long long)ho * wo;
    a.ys_n = plane * c.cout;
    a.ys_p = c.nchw ? 1 : c.cout;
    a.ys_c = c.nchw ? plane : 1;
    a.nsrc = nsrc;
    a.n = c.n;
    a.hi = c.h;
    a.wi = c.w;
    a.ho = ho;
    a.wo = wo;
    a.cout = c.cout;
    a.k = k;
    a.relu = c.relu;
    typename Tile<E>::Kernel kernel = c.ks == 1 ? tile.k1s1 : (c.stride == 1 ? tile.k3s1 : tile.k3s2);
    const int m = c.n * ho * wo;
    const int gx = (m + tile.bm - 1) / tile.bm, gy = (c.cout + tile.bn - 1) / tile.bn;
    std::vector<float> part((size_t)gx * gy * splits * tile.bm * tile.bn, NAN);
    std::vector<unsigned> count((size_t)gx * gy, 0);
    a.splits = splits;
    if (splits > 1) {
        a.part = part.data();
        a.count = count.data();
    }
    run_grid<E>(kernel, a, gx, gy, splits);
    const char* label = "";
    if (splits > 1) {
        for (unsigned v : count)
            if (v != 0) {
                std::printf("FAIL split K left a tile counter at %u\n", v);
                return false;
            }
        // Again, the blocks in another order: the same bits.
        const std::vector<E> first = y;
        std::fill(y.begin(), y.end(), store_as<E>(NAN));
        run_grid<E>(kernel, a, gx, gy, splits);
        if (std::memcmp(first.data(), y.data(), y.size() * sizeof(E)) != 0) {
            std::printf("FAIL split K: the result depends on the order of the blocks\n");
            return false;
        }
        label = " (same bits in another block order)";
    }

    double err2 = 0, ref2 = 0;
    for (int n = 0; n < c.n; ++n)
        for (int oy = 0; oy < ho; ++oy)
            for (int ox = 0; ox < wo; ++ox)
                for (int co = 0; co < c.cout; ++co) {
                    double s = bias[co];
                    for (int src = 0; src < nsrc; ++src)
                        for (int ky = 0; ky < c.ks; ++ky)
                            for (int kx = 0; kx < c.ks; ++kx) {
                                const int iy = oy * c.stride + ky - p, ix = ox * c.stride + kx - p;
                                if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                                for (int ci = 0; ci < c.cin[src]; ++ci) {
                                    const double xv =
                                        value(x[src][(((size_t)n * c.h + iy) * c.w + ix) * c.cin[src] + ci]);
                                    const double wv =
                                        value(w[(size_t)co * k + kbeg[src] + (ky * c.ks + kx) * c.cin[src] + ci]);
                                    s += xv * wv;
                                }
                            }
                    for (size_t t = 0; t < c.factors.size(); ++t) {
                        const int f = c.factors[t], hs = ho / f, ws = wo / f;
                        s += value(terms[t][(((size_t)n * hs + oy / f) * ws + ox / f) * c.cout + co]);
                    }
                    if (c.relu && s < 0) s = 0;
                    const size_t at = n * a.ys_n + (long long)(oy * wo + ox) * a.ys_p + co * a.ys_c;
                    const double got = value(y[at]);
                    if (!std::isfinite(got)) {
                        std::printf("FAIL k%ds%d tile %dx%d: output (%d,%d,%d,%d) is %g (unwritten)\n", c.ks,
                                    c.stride, tile.bm, tile.bn, n, oy, ox, co, got);
                        return false;
                    }
                    err2 += (got - s) * (got - s);
                    ref2 += s * s;
                }
    const double rel = std::sqrt(err2 / ref2);
    const bool ok = rel < bound;
    std::printf("%s %s k%ds%d tile %3dx%-2d %d stages split %d n=%d %2dx%-2d sources=%d terms=%d cout=%-3d %s: rel L2 %.2e%s\n",
                ok ? "ok  " : "FAIL", type_name<E>(), c.ks, c.stride, tile.bm, tile.bn, tile.stages, splits, c.n, c.h, c.w,
                nsrc, (int)c.factors.size(), c.cout, c.nchw ? "NCHW" : "NHWC", rel, label);
    return ok;
}

// The scheduler's own check: thread 0 of a block publishes a value in shared memory that
// every thread reads with no barrier between, a race on a GPU. The emulator must let some
// reader go first (device.h draws each block's thread order afresh), or a missing barrier
// of this shape would pass here unseen. Returns in how many of `blocks` blocks some thread
// read the value before it was written.
static int canary_published, canary_early;
static void canary_thread(const void*) {
    if (threadIdx.x == 0) canary_published = 1;
    canary_early += canary_published == 0;
}
static int blocks_racing_ahead(unsigned blocks) {
    blockDim = Dim3{TC_THREADS, 1, 1};
    gridDim = Dim3{blocks, 1, 1};
    int racing = 0;
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = Dim3{b, 0, 0};
        canary_published = canary_early = 0;
        run_block(blockDim, canary_thread, nullptr);
        racing += canary_early > 0;
    }
    return racing;
}

// Synccheck's kind of error, which must stop the emulation: half a block's threads (or a
// warp's lanes) wait at one barrier (or warp-wide instruction) while the others wait at
// another. Run as `conv_tc_host divergent-barrier` (or `divergent-warp`) by the test, which
// expects the process to abort with the two places.
static void divergent_barrier_thread(const void*) {
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
}
static void divergent_warp_thread(const void*) {
    const unsigned a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
    float d[4] = {};
    if (threadIdx.x % 2)
        mma_16816(d, a, a[0], a[1]);
    else
        mma_16816(d, a, a[2], a[3]);
}
static int divergent(const char* check) {
    const rlimit no_core{0, 0};  // the abort is the expected outcome: no core file
    setrlimit(RLIMIT_CORE, &no_core);
    blockDim = Dim3{64, 1, 1};
    gridDim = Dim3{1, 1, 1};
    blockIdx = Dim3{0, 0, 0};
    if (std::strcmp(check, "divergent-barrier") == 0)
        run_block(blockDim, divergent_barrier_thread, nullptr);
    else if (std::strcmp(check, "divergent-warp") == 0)
        run_block(blockDim, divergent_warp_thread, nullptr);
    else {
        std::fprintf(stderr, "unknown check %s (divergent-barrier, divergent-warp)\n", check);
        return 2;
    }
    std::printf("FAIL %s: the block ran to its end\n", check);
    return 1;
}

int main(int argc, char** argv) {
    if (argc == 2) return divergent(argv[1]);
    cp_async_seed(rng());
    thread_order_seed(rng());
    const int racing = blocks_racing_ahead(8);
    std::printf("%s scheduler: a missing barrier shows, readers ahead of the writer in %d of 8 blocks\n",
                racing ? "ok  " : "FAIL", racing);
    if (!racing) return 1;
    const Case cases[] = {
        // the stem's first conv: 3 channels padded to 8, stride 2, K = 72 (not a multiple of 32)
        {3, 2, 1, 16, 12, 64, {8}, {}, true, false},
        // a BasicBlock's second conv: the residual as a term
        {3, 1, 2, 8, 6, 32, {32}, {1}, true, false},
        // an exchange unit's fused branch: two strided sources of different widths, the
        // identity and an upsampled 1×1 result as terms
        {3, 2, 1, 8, 8, 64, {16, 32}, {1, 2}, true, false},
        // three sources, three terms (identity, ×2, ×4)
        {3, 2, 1, 16, 16, 32, {8, 16, 24}, {1, 2, 4}, true, false},
        // a 1×1 conv at low resolution, no ReLU; 48 channels in (K = 48)
        {1, 1, 3, 4, 6, 96, {48}, {}, false, false},
        // the head: 17 heatmaps written NCHW
        {1, 1, 2, 8, 6, 17, {32}, {}, false, true},
        // a deep branch's conv: K = 1152, 36 f16 or 72 f32 slices, so that even split 5 ways
        // the 8-stage pipeline refills stages (and the 3-stage one many times)
        {3, 1, 1, 8, 6, 32, {128}, {1}, true, false},
    };
    // Unsplit; split in 2 and 5 (the stem's K has 3 f16 slices: two of its 5 splits are
    // empty). f16 output rounds at 2⁻¹¹; the f32 path (three bf16 parts, f64 totals) must stay
    // near f32 output rounding (2⁻²⁴ a value, some 6e-8 in relative L2): two parts would
    // land near 1e-5, one near 3e-3.
    // Every tile of a type, on the same operands split the same way, adds the same products
    // in the same order: the same bits.
    const int splits[] = {1, 2, 5};
    int failed = 0, run = 0;
    auto all_tiles = [&](const Case& c, int s, const auto& tiles, double bound, auto elem) {
        typedef decltype(elem) E;
        const Operands<E> o = operands<E>(c);
        std::vector<E> first, y;
        for (const Tile<E>& t : tiles) {
            bool ok = check(c, o, t, s, bound, y);
            if (ok && first.empty()) first = y;
            else if (ok && std::memcmp(first.data(), y.data(), y.size() * sizeof(E)) != 0) {
                std::printf("FAIL tile %dx%d, %d stages: other bits than the first tile's\n", t.bm, t.bn, t.stages);
                ok = false;
            }
            failed += !ok;
            ++run;
        }
    };
    for (const Case& c : cases)
        for (int s : splits) {
            all_tiles(c, s, TILES_F16, 2e-3, __half{});
            all_tiles(c, s, TILES_F32, 2e-7, float{});
        }
    // Built from tests/common's copy of kernels/, each block found its shared memory
    // filled with 0xff bytes (device.h); built from kernels/ itself, with zeros.
    std::printf("shared memory: %u __shared__ arrays filled with 0xff bytes as each block began\n",
                shared_arrays_poisoned);
    std::printf("%s: %d of %d cases failed\n", failed ? "FAIL" : "PASS", failed, run);
    return failed ? 1 : 0;
}
