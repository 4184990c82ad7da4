// flip_merge.cu: the official flip test's merge of heatmaps, on the GPU.
//
// The network ran on a batch of 2N crops: N plain, then the same N mirrored left to right.
// For image n, joint j, row y, column x (maps of H × W):
//
//   out[n, j, y, x] = (hm[n, j, y, x] + hm[N + n, partner[j], y, W − 1 − max(x − 1, 0)]) × 0.5
//
// i.e. the mirrored maps are flipped back (flip_back), left and right joints swapped
// (partner[j], an int per joint), shifted one column right with column 0 kept
// (SHIFT_HEATMAP), and averaged, in f32, as the CPU's merge_flipped.
//
// Layout: hm 2N × K × H × W in T (f32 or f16); partner int [K]; out N × K × H × W f32.
// Kernels: flip_merge_f32, flip_merge_f16. Launch: 256 threads per block, one output
// element per thread, grid ceil(N·K·H·W / 256).

#define FLIP_THREADS 256

template <typename T>
__device__ void flip_merge(const T* hm, const int* partner, float* out, int n, int k, int h, int w) {
    const u64 i = (u64)blockIdx.x * FLIP_THREADS + threadIdx.x;
    const u64 map = (u64)h * w, total = (u64)n * k * map;
    if (i >= total) return;
    const int x = (int)(i % w), y = (int)((i / w) % h), j = (int)((i / map) % k);
    const u64 img = i / (map * k);
    const int from = x > 0 ? x - 1 : 0;
    const u64 mirrored = (((u64)n + img) * k + partner[j]) * map + (u64)y * w + (w - 1 - from);
    out[i] = (load_f32(hm + i) + load_f32(hm + mirrored)) * 0.5f;
}

#define FLIP_PARAMS(T) \
    (const T* __restrict__ hm, const int* __restrict__ partner, float* __restrict__ out, int n, int k, int h, int w)
#define FLIP_ARGS (hm, partner, out, n, k, h, w)

HRNET_F32_F16(flip_merge, FLIP_THREADS, FLIP_PARAMS, FLIP_ARGS)
