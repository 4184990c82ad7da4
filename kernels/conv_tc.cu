// conv_tc.cu: tensor-core convolution (implicit GEMM) on NHWC activations, with the
// exchange-unit epilogue: the fast path of the f16 engine (f16 operands) and of the f32
// engine (f32 operands split exactly into three bf16 parts). kernels/conv.cu stays the
// readable baseline.
//
// GEMM view: M = N·Ho·Wo output pixels, N = Cout, K = Σ_s K²·Cin_s over up to 4 sources
// that share one input resolution (several sources = several convs whose results are
// summed, e.g. the strided 3×3 steps of an exchange unit that land on one branch):
//
//   y[n, oy, ox, co] = act( bias[co] + Σ_s Σ_{ky, kx, ci} w[co, kbeg_s + (ky·K + kx)·Cin_s + ci]
//                                                        · x_s[n, oy·S + ky − P, ox·S + kx − P, ci]
//                           + Σ_t term_t[n, oy / f_t, ox / f_t, co] )
//
// Terms (up to 3) are the residual of a block (f = 1) or, in an exchange unit, the identity
// (f = 1) and the low-resolution 1×1 results of coarser branches (f = 2^(j−i)), upsampled
// on the fly. act = ReLU or none, applied once after the whole sum. A term of factor 1 may
// be y itself (the executor writes a block's sum over its input): the thread that stores
// y[n, oy, ox, co] is the only one to read that term element, and reads it first.
//
// Layout: sources and terms NHWC with Cin_s a multiple of 8 (the input image is padded to
// 8 channels); weights [Cout][K], K ordered (source, ky, kx, ci); all in the element type
// (f16 or f32); bias f32; y is written through strides (image, pixel, channel), so the
// head can store NCHW heatmaps.
//
// Tiles: a block computes BM pixels × BN channels with 4 warps (2 × 2, each warp
// (BM/2) × (BN/2); the 128 × 32 tile 4 × 1, each warp 32 × 32), fed by ldmatrix.x4. f16: mma.sync m16n8k16, f32 accumulators. f32: each
// operand split exactly into three bf16 parts, x = p0 + p1 + p2 (cvt.rn.bf16x2.f32: 8
// significant bits each, and a 24-bit f32 leaves nothing over), and mma.sync m16n8k16
// bf16 run six times, for every product of order 2⁻¹⁶ and above; what is left out (p1·q2,
// p2·q1, p2·q2) is below 2⁻²⁴ of the product, the f32 rounding of the operands themselves.
// Two parts would leave 2⁻¹⁶, and three TF32 parts (m16n8k8, half the K per instruction
// at the same issue cost) would take twice the tensor-core time for the same six products.
// Each K slice's f32 accumulators are added into f64 totals (as kernels/conv.cu adds each
// input channel's partial), which keeps the f32 engine within 1e-5 of the network in f64.
// An 8 × 4 block of f32 is an 8 × 8 block of b16, so ldmatrix serves both types with the
// same byte addresses: for f32 it gives each thread one float per matrix, column (lane % 4)
// of each 4-float block, and the bf16 fragment's pairs are formed from two such matrices,
// columns c and c + 4. The 16 floats of a slice thus enter the mma in another order than
// they lie in memory, the same order for both operands, which leaves the sum unchanged.
// K advances in slices of 64 bytes (32 halves or 16 floats) through a cp.async pipeline of
// 3 stages, 8 in the deep variant below (16-byte copies, zero fill for padding and out-of-range rows); shared rows are
// 80 bytes apart so that the 8 rows of each ldmatrix phase fall in distinct banks. Weights
// are copied through L2 only; the sources through L1 too when `l1_a` is set (a 3×3 conv
// reads each input pixel for 9 taps, mostly within one block: whether L1 serves the
// repeats better than L2 is for the device to say, so the host chooses).
// Programmatic dependent launch: each block starts copying its first weight slices, then
// waits (griddepcontrol.wait) before touching anything a kernel writes, and lets the next
// kernel launch once its K loop is done; so when the host launches it with programmatic
// stream serialization, the next kernel's launch, prologue and weight fetch overlap this
// one's end.
// Split K: when a layer gives too few tiles to fill the GPU (the deep branches at small
// batch), blockIdx.z splits its K slices into `splits` contiguous ranges. Each block stores
// its partial sums (f32, `part`), and the last block of a tile to arrive, counted by an
// atomic per tile (`count`, zero before the launch and left zero after it), adds all the
// partial sums in split order (in f64 for f32) and applies the epilogue: one launch, and
// a result that does not depend on which block came last.
// Deep pipeline: at batch 1 every conv of W32 runs in 32×32 tiles, about one block per SM,
// each block's K loop 4 to 9 slices long (split K sees to that). With 3 stages a block has
// one slice's copies in flight while it multiplies the one before, so it waits on L2 and
// memory latency slice after slice. The `_deep` 32×32 kernels have 8 stages (40 KB of
// shared memory, 5 blocks an SM where the 3-stage one fits 9): 7 slices in flight, about
// a whole split at once. Same arithmetic, bitwise the same results; the host takes them
// when told to (`TcTuning::deep_pipeline`).
// Grouped launches: at batch 1 each branch's convolution gives a few dozen tiles, and
// the four branches of a module run the same kernel at the same depth of the network.
// The `_group` kernels take up to 4 such convolutions (TcGroup) and run all their blocks
// in one launch, each block computing exactly what it computes in its own launch: one
// launch instead of four, with the same results bit for bit.
// Kernels: conv_tc_k{3s1,3s2,1s1}_{128x64,64x64,128x32,64x32,32x32,32x32_deep}_f16 and
// conv_tc_k{3s1,3s2,1s1}_{64x32,32x32,32x32_deep}_f32 (K, S, BM × BN; the f64 totals leave
// no registers for the larger f32 tiles), and conv_tc_k{3s1,3s2,1s1}_32x32{,_deep}_group_
// {f16,f32}. Launch: 128 threads, grid (ceil(M / BM), ceil(Cout / BN), splits), or for a
// group (Σ_j blocks of member j, 1, 1); the host picks the tile, the variant, the splits
// and the groups.

#define TC_THREADS 128
#define TC_ROW_BYTES 64   // one K slice of a row: 32 halves or 16 floats
#define TC_PAD_BYTES 16   // shared rows 80 bytes apart
#define TC_STAGES 3        // the pipeline's depth, but for the deep variant
#define TC_DEEP_STAGES 8   // the deep 32×32 variant's (40 KB of shared memory)
#define TC_MAX_SRC 4
#define TC_MAX_TERMS 3
#define TC_GROUP 4         // the most convolutions a grouped launch runs

// Field order and sizes match `TcArgs` in src/cuda/tc.rs (208 bytes, no implicit padding);
// E is the element type (__half or float): the pointers are 8 bytes either way.
template <typename E> struct TcArgs {
    const E* src[TC_MAX_SRC];
    const E* w;
    const float* bias;
    const E* term[TC_MAX_TERMS];
    E* y;
    float* part;      // split K: [tile][split][BM·BN / 128][128] partial sums
    unsigned* count;  // split K: arrivals per tile
    long long ys_n, ys_p, ys_c;
    int cin[TC_MAX_SRC];
    int kbeg[TC_MAX_SRC];
    int factor[TC_MAX_TERMS];
    int nsrc, n, hi, wi, ho, wo, cout, k, relu, splits;
    int l1_a;  // copy the sources through L1: a 3×3 conv reads each input pixel for 9 taps
};
static_assert(sizeof(TcArgs<__half>) == 208 && sizeof(TcArgs<float>) == 208, "TcArgs must match src/cuda/tc.rs");

// What differs between the element types: the f32 path keeps f64 totals (`total`).
template <typename E> struct TcElem;
template <> struct TcElem<__half> {
    static constexpr bool split = false;
    typedef float total;
};
template <> struct TcElem<float> {
    static constexpr bool split = true;
    typedef double total;
};

// The PTX wrappers. tests/emulate compiles this file on the CPU with host versions of them
// (a 32-lane warp emulator) to check the kernel's indexing and fragment layouts without a
// GPU; it defines HRNET_WARP_EMULATION.
#ifndef HRNET_WARP_EMULATION
// Programmatic dependent launch (sm_90): a launch with programmatic stream serialization
// may start before the previous kernel of its stream has finished; it must wait for it
// before touching memory. Without that launch attribute the wait returns at once.
__device__ __forceinline__ void grid_dependency_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets the next kernel of the stream start launching once every block got here or exited.
__device__ __forceinline__ void grid_dependents_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Copies 16 bytes (bytes = 16) or zero-fills them (bytes = 0); through L1 (.ca) when `l1`,
// else L2 only (.cg).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes, bool l1) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    if (l1)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// d = a · b + d for one 16×8 tile: a 16×16 (row), b 16×8 (col), f16 in, f32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with bf16 operands.
__device__ __forceinline__ void mma_16816_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// lo and hi rounded to bf16 (nearest, ties to even), packed as the low and high halves.
__device__ __forceinline__ unsigned bf16x2_bits(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

// The two f32 values of a packed bf16 pair: a bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_low(unsigned p) { return __uint_as_float(p << 16); }
__device__ __forceinline__ float bf16_high(unsigned p) { return __uint_as_float(p & 0xffff0000u); }

// Two f32 values (their bits lo, hi) each exactly as p0 + p1 + p2, three packed bf16
// pairs: p0 takes the top 8 significant bits (rounded), the remainder has at most 16, p1
// takes 8 of them and p2 the rest. Each subtraction is exact.
__device__ __forceinline__ void bf16_split(unsigned lo, unsigned hi, unsigned& p0, unsigned& p1, unsigned& p2) {
    float l = __uint_as_float(lo), h = __uint_as_float(hi);
    p0 = bf16x2_bits(l, h);
    l -= bf16_low(p0);
    h -= bf16_high(p0);
    p1 = bf16x2_bits(l, h);
    l -= bf16_low(p1);
    h -= bf16_high(p1);
    p2 = bf16x2_bits(l, h);
}

// One block of a launch of `a`: output tile (bx, by), split bz.
template <typename E, int KS, int S, int BM, int BN, int ST>
__device__ __forceinline__ void conv_tc_body(const TcArgs<E>& a, int bx, int by, int bz) {
    constexpr bool SPLIT = TcElem<E>::split;
    typedef typename TcElem<E>::total total_t;
    constexpr int PER = 16 / (int)sizeof(E);             // elements per 16-byte copy
    constexpr int BK = TC_ROW_BYTES / (int)sizeof(E);    // elements per K slice
    constexpr int LDS = BK + TC_PAD_BYTES / (int)sizeof(E);
    constexpr int KSTEP = 16;                            // one f16 mma's K (f32: the slice is one bf16 step)
    constexpr int P = KS / 2;
    // Warps 2 × 2, but 4 × 1 for the 128 × 32 tile: each warp then takes all 32 channels
    // (4 ldmatrix.x4 for 8 mma a K step, where 64 × 16 warp tiles need 5).
    constexpr int WGN = (BM == 128 && BN == 32) ? 1 : 2, WGM = 4 / WGN;
    constexpr int WTM = BM / WGM, WTN = BN / WGN;  // warp tile
    constexpr int MT = WTM / 16, NT = WTN / 8;
    constexpr int AROWS = BM / 32, BROWS = BN / 32;  // rows each thread copies per stage
    static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0 && AROWS >= 1 && BROWS >= 1, "tile shape");
    static_assert(ST >= 3, "the loop refills the stage read one iteration before");
    __shared__ __align__(16) E As[ST][BM][LDS];
    __shared__ __align__(16) E Bs[ST][BN][LDS];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WGN, wn = warp % WGN;
    const int hw = a.ho * a.wo, M = a.n * hw;
    const int m0 = bx * BM, n0 = by * BN;
    const int chunk = tid & 3, row = tid >> 2;  // the 16-byte chunk of a 64-byte row this thread copies

    // Each A row this thread copies: the image's first pixel and the window's top-left corner.
    int a_pix[AROWS], a_iy[AROWS], a_ix[AROWS];
#pragma unroll
    for (int i = 0; i < AROWS; ++i) {
        const int m = m0 + row + 32 * i;
        a_pix[i] = -1;
        a_iy[i] = a_ix[i] = 0;
        if (m < M) {
            const int n = m / hw, r = m - n * hw, oy = r / a.wo, ox = r - oy * a.wo;
            a_pix[i] = n * a.hi * a.wi;
            a_iy[i] = oy * S - P;
            a_ix[i] = ox * S - P;
        }
    }

    auto load_a = [&](int stage, int kt) {
        const int kk = kt * BK + chunk * PER;
        const bool kvalid = kk < a.k;
        // The source this K chunk belongs to (constant indices only: no local memory).
        const E* src = a.src[0];
        int cin = a.cin[0], kb = 0;
#pragma unroll
        for (int r = 1; r < TC_MAX_SRC; ++r) {
            if (r < a.nsrc && kk >= a.kbeg[r]) {
                src = a.src[r];
                cin = a.cin[r];
                kb = a.kbeg[r];
            }
        }
        const int kl = kk - kb, tap = kl / cin, ci = kl - tap * cin;
        const int ky = tap / KS, kx = tap - ky * KS;
#pragma unroll
        for (int i = 0; i < AROWS; ++i) {
            const int iy = a_iy[i] + ky, ix = a_ix[i] + kx;
            const bool ok = kvalid && a_pix[i] >= 0 && iy >= 0 && iy < a.hi && ix >= 0 && ix < a.wi;
            const E* g = ok ? src + (u64)(a_pix[i] + iy * a.wi + ix) * cin + ci : a.w;
            cp_async16(&As[stage][row + 32 * i][chunk * PER], g, ok ? 16 : 0, a.l1_a);
        }
    };
    auto load_b = [&](int stage, int kt) {
        const int kk = kt * BK + chunk * PER;
        const bool kvalid = kk < a.k;
#pragma unroll
        for (int i = 0; i < BROWS; ++i) {
            const int co = n0 + row + 32 * i;
            const bool ok = kvalid && co < a.cout;
            const E* g = ok ? a.w + (u64)co * a.k + kk : a.w;
            cp_async16(&Bs[stage][row + 32 * i][chunk * PER], g, ok ? 16 : 0, false);
        }
    };

    float acc[MT][NT][4];
    // The f32 path's running totals, and its slice's sums of the small products, kept
    // apart from the large ones so that they are not rounded at the large sums' scale
    // (one element each, unused, for f16).
    total_t tot[SPLIT ? MT : 1][SPLIT ? NT : 1][4];
    float small[SPLIT ? MT : 1][SPLIT ? NT : 1][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                acc[i][j][e] = 0.0f;
                if constexpr (SPLIT) {
                    tot[i][j][e] = 0.0;
                    small[i][j][e] = 0.0f;
                }
            }

    // This block's K slices: [kt0, kt1) of ceil(K / BK), the split bz of a.splits.
    const int slices = (a.k + BK - 1) / BK;
    const int kt0 = (int)((long long)slices * bz / a.splits);
    const int KT = (int)((long long)slices * (bz + 1) / a.splits) - kt0;
    // No kernel writes the weights: their first slices are on their way before this block
    // waits for the previous kernel of the stream (programmatic launch), which every read
    // of activations, every write and the split-K scratch must follow. (The weight copies
    // join the first commit group, so slice 0 still waits for them.)
#pragma unroll
    for (int s = 0; s < ST - 1; ++s)
        if (s < KT) load_b(s, kt0 + s);
    grid_dependency_wait();
#pragma unroll
    for (int s = 0; s < ST - 1; ++s) {
        if (s < KT) load_a(s, kt0 + s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        // Slice kt has landed (at most ST − 2 younger groups pending) for every thread.
        cp_async_wait<ST - 2>();
        __syncthreads();
        // Refill the stage every warp finished reading in the previous iteration.
        const int next = kt + ST - 1;
        if (next < KT) {
            load_a(next % ST, kt0 + next);
            load_b(next % ST, kt0 + next);
        }
        cp_async_commit();

        const int st = kt % ST;
        // The A and B fragments at K offset ks of stage st: for f16 one m16n8k16 step's, for
        // f32 (ldmatrix reading 8 × 4 floats as 8 × 8 b16) one float per register.
        auto fragments = [&](int ks, unsigned (&af)[MT][4], unsigned (&bf)[NT][2]) {
#pragma unroll
            for (int i = 0; i < MT; ++i)
                ldmatrix_x4(af[i], &As[st][wm * WTM + i * 16 + (lane & 15)][ks + (lane >> 4) * PER]);
#pragma unroll
            for (int j = 0; j < NT / 2; ++j) {
                unsigned r[4];
                ldmatrix_x4(r, &Bs[st][wn * WTN + j * 16 + (lane & 7) + ((lane >> 4) << 3)][ks + ((lane >> 3) & 1) * PER]);
                bf[2 * j][0] = r[0];
                bf[2 * j][1] = r[1];
                bf[2 * j + 1][0] = r[2];
                bf[2 * j + 1][1] = r[3];
            }
        };
        if constexpr (SPLIT) {
            // The slice's 16 floats are one bf16 m16n8k16 step. With g = lane / 4 and
            // t = lane % 4, ldmatrix gave A row g (af[.][.][0], [2]) and row g + 8 ([1], [3])
            // at columns t and t + 4 of floats 0–7 (h = 0) and 8–15 (h = 1), and B column g at
            // the same columns ([.][0], [.][1]). Pairing columns t and t + 4 as the fragment's
            // K pair (2t, 2t + 1), and 8 + t, 12 + t as (2t + 8, 2t + 9), orders K the same
            // way for both operands.
            unsigned af[2][MT][4], bf[2][NT][2];
            fragments(0, af[0], bf[0]);
            fragments(8, af[1], bf[1]);
            unsigned a0[MT][4], a1[MT][4], a2[MT][4], b0[NT][2], b1[NT][2], b2[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int h = q >> 1, r = q & 1;  // fragment register q: K half h, row g + 8r
                    bf16_split(af[h][i][r], af[h][i][r + 2], a0[i][q], a1[i][q], a2[i][q]);
                }
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) bf16_split(bf[h][j][0], bf[h][j][1], b0[j][h], b1[j][h], b2[j][h]);
            // Smallest first: the products of order 2⁻¹⁶ (p1·q1, p0·q2, p2·q0), those of order
            // 2⁻⁸, then p0·q0. p1·q2, p2·q1 and p2·q2 (2⁻²⁴ and below) are left out.
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    mma_16816_bf16(small[i][j], a1[i], b1[j][0], b1[j][1]);
                    mma_16816_bf16(small[i][j], a0[i], b2[j][0], b2[j][1]);
                    mma_16816_bf16(small[i][j], a2[i], b0[j][0], b0[j][1]);
                    mma_16816_bf16(small[i][j], a1[i], b0[j][0], b0[j][1]);
                    mma_16816_bf16(small[i][j], a0[i], b1[j][0], b1[j][1]);
                    mma_16816_bf16(acc[i][j], a0[i], b0[j][0], b0[j][1]);
                }
        } else {
#pragma unroll
            for (int ks = 0; ks < BK; ks += KSTEP) {
                unsigned af[MT][4], bf[NT][2];
                fragments(ks, af, bf);
#pragma unroll
                for (int i = 0; i < MT; ++i)
#pragma unroll
                    for (int j = 0; j < NT; ++j) mma_16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
            }
        }
        if constexpr (SPLIT) {
            // This slice's f32 sums into the f64 totals.
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        tot[i][j][e] += (double)(acc[i][j][e] + small[i][j][e]);
                        acc[i][j][e] = small[i][j][e] = 0.0f;
                    }
        }
    }
    cp_async_wait<0>();
    // What is left (the split-K reduction, the epilogue) is short: the next kernel may
    // start launching.
    grid_dependents_launch();

    // The sum so far of output element (i, j, e): the f32 accumulator, or the f64 total.
    auto total = [&](int i, int j, int e) -> total_t {
        if constexpr (SPLIT)
            return tot[i][j][e];
        else
            return acc[i][j][e];
    };
    auto set_total = [&](int i, int j, int e, total_t v) {
        if constexpr (SPLIT)
            tot[i][j][e] = v;
        else
            acc[i][j][e] = v;
    };

    if (a.splits > 1) {
        // Every thread stores its sums, coalesced across the block. The barrier orders them
        // before thread 0's fence, which makes them visible device-wide before its atomic
        // says they are there (the pattern of a cooperative grid sync).
        constexpr int PARTS = MT * NT * 4;
        const unsigned tile = by * ((M + BM - 1) / BM) + bx;
        float* const tile_part = a.part + (u64)tile * a.splits * PARTS * TC_THREADS + tid;
        float* const mine = tile_part + (u64)bz * PARTS * TC_THREADS;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) mine[((i * NT + j) * 4 + e) * TC_THREADS] = (float)total(i, j, e);
        __shared__ unsigned arrived;
        __syncthreads();
        if (tid == 0) {
            __threadfence();
            arrived = atomicAdd(&a.count[tile], 1u);
            __threadfence();  // and, for the last block, every other block's stores before the reads
        }
        __syncthreads();
        if (arrived != (unsigned)a.splits - 1) return;
        // The last block: every split's partial sums, read from L2 (__ldcg: not through a
        // stale L1 line), added in split order so the result is the same whoever is last.
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) set_total(i, j, e, 0);
        for (int z = 0; z < a.splits; ++z) {
            const float* p = tile_part + (u64)z * PARTS * TC_THREADS;
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        set_total(i, j, e, total(i, j, e) + (total_t)__ldcg(p + ((i * NT + j) * 4 + e) * TC_THREADS));
        }
        if (tid == 0) a.count[tile] = 0;  // ready for the next launch on this stream
    }

    // Epilogue: accumulator (i, j, e) is pixel row (lane / 4) + 8·(e / 2), channel 2·(lane % 4) + e % 2.
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + wm * WTM + i * 16 + (lane >> 2) + h * 8;
            if (m >= M) continue;
            const int n = m / hw, r = m - n * hw, oy = r / a.wo, ox = r - oy * a.wo;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int co = n0 + wn * WTN + j * 8 + (lane & 3) * 2 + e;
                    if (co >= a.cout) continue;
                    total_t v = total(i, j, h * 2 + e) + (total_t)a.bias[co];
#pragma unroll
                    for (int t = 0; t < TC_MAX_TERMS; ++t) {
                        if (a.term[t]) {
                            const int f = a.factor[t], hs = a.ho / f, ws = a.wo / f;
                            v += (total_t)load_f32(&a.term[t][(u64)((n * hs + oy / f) * ws + ox / f) * a.cout + co]);
                        }
                    }
                    if (a.relu && v < 0) v = 0;  // keeps NaN, like relu_keep_nan
                    a.y[n * a.ys_n + (long long)r * a.ys_p + co * a.ys_c] = store_as<E>((float)v);
                }
            }
        }
    }
}

// A grouped launch: the blocks of up to TC_GROUP convolutions of one kernel shape and
// tile, side by side in grid x (member j's blocks end at end[j]), each member's blocks
// ordered as its own launch's grid (x fastest, then y, then z).
template <typename E> struct TcGroup {
    TcArgs<E> g[TC_GROUP];
    int end[TC_GROUP];
    int members;
    int pad;
};
static_assert(sizeof(TcGroup<__half>) == TC_GROUP * 208 + 4 * TC_GROUP + 8, "TcGroup must match src/cuda/tc.rs");

// The member this block belongs to, and the block within the member's own grid.
template <typename E, int KS, int S, int BM, int BN, int ST>
__device__ __forceinline__ void conv_tc_group_body(const TcGroup<E>& g) {
    const int b = blockIdx.x;
    int j = 0;
#pragma unroll
    for (int i = 0; i + 1 < TC_GROUP; ++i)
        if (i + 1 < g.members && b >= g.end[i]) j = i + 1;
    // The member's arguments stay in parameter space (__grid_constant__): no local copy.
    const TcArgs<E>& a = g.g[j];
    const int local = b - (j > 0 ? g.end[j - 1] : 0);
    const int tx = (a.n * a.ho * a.wo + BM - 1) / BM, ty = (a.cout + BN - 1) / BN;
    const int bz = local / (tx * ty), r = local - bz * tx * ty;
    conv_tc_body<E, KS, S, BM, BN, ST>(a, r % tx, r / tx, bz);
}

#define CONV_TC(E, SUFFIX, KS, S, BM, BN, ST, DEEP)                                                       \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)                                         \
        conv_tc_k##KS##s##S##_##BM##x##BN##DEEP##_##SUFFIX(const TcArgs<E> a) {                          \
        conv_tc_body<E, KS, S, BM, BN, ST>(a, blockIdx.x, blockIdx.y, blockIdx.z);                      \
    }
#define CONV_TC_GROUP(E, SUFFIX, KS, S, BM, BN, ST, DEEP)                                                 \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)                                         \
        conv_tc_k##KS##s##S##_##BM##x##BN##DEEP##_group_##SUFFIX(const __grid_constant__ TcGroup<E> g) { \
        conv_tc_group_body<E, KS, S, BM, BN, ST>(g);                                                    \
    }
#define CONV_TC_F16(KS, S)                                           \
    CONV_TC(__half, f16, KS, S, 128, 64, TC_STAGES, )                \
    CONV_TC(__half, f16, KS, S, 64, 64, TC_STAGES, )                 \
    CONV_TC(__half, f16, KS, S, 128, 32, TC_STAGES, )                \
    CONV_TC(__half, f16, KS, S, 64, 32, TC_STAGES, )                 \
    CONV_TC(__half, f16, KS, S, 32, 32, TC_STAGES, )                 \
    CONV_TC(__half, f16, KS, S, 32, 32, TC_DEEP_STAGES, _deep)       \
    CONV_TC_GROUP(__half, f16, KS, S, 32, 32, TC_STAGES, )           \
    CONV_TC_GROUP(__half, f16, KS, S, 32, 32, TC_DEEP_STAGES, _deep)
#define CONV_TC_F32(KS, S)                                          \
    CONV_TC(float, f32, KS, S, 64, 32, TC_STAGES, )                 \
    CONV_TC(float, f32, KS, S, 32, 32, TC_STAGES, )                 \
    CONV_TC(float, f32, KS, S, 32, 32, TC_DEEP_STAGES, _deep)       \
    CONV_TC_GROUP(float, f32, KS, S, 32, 32, TC_STAGES, )           \
    CONV_TC_GROUP(float, f32, KS, S, 32, 32, TC_DEEP_STAGES, _deep)

// NVRTC takes tens of seconds for all of these in one program, so src/cuda/compile.rs
// compiles this file as HRNET_PARTS programs side by side, HRNET_PART = 0..5 in each: one
// shape in one element type. Without HRNET_PART (the CPU emulation), all of them.
#define HRNET_PARTS 6
#if !defined(HRNET_PART) || HRNET_PART == 0
CONV_TC_F16(3, 1)
#endif
#if !defined(HRNET_PART) || HRNET_PART == 1
CONV_TC_F32(3, 1)
#endif
#if !defined(HRNET_PART) || HRNET_PART == 2
CONV_TC_F16(3, 2)
#endif
#if !defined(HRNET_PART) || HRNET_PART == 3
CONV_TC_F32(3, 2)
#endif
#if !defined(HRNET_PART) || HRNET_PART == 4
CONV_TC_F16(1, 1)
#endif
#if !defined(HRNET_PART) || HRNET_PART == 5
CONV_TC_F32(1, 1)
#endif
