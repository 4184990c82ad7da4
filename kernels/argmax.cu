// argmax.cu: keypoints from heatmaps, as the official get_max_preds + get_final_preds
// post-processing (lib/core/inference.py), in heatmap coordinates.
//
// For each map (n, k) of H × W values: idx = the first maximum (row-major), score = its
// value, (px, py) = (idx % W, idx / W). If score ≤ 0 the coordinates are (0, 0).
// Quarter-pixel refinement: if 1 < px < W−1 and 1 < py < H−1, x moves 0.25 toward the
// larger horizontal neighbour and y toward the larger vertical one (no move on a tie).
//
// Layout: heatmaps N × K × H × W in T (f32 or f16); out_xy f32 [N·K][2]; out_score f32
// [N·K]. Kernels: argmax_f32, argmax_f16. Launch: one block of 256 threads per map,
// grid N·K; a shared-memory tree reduction keeps the smallest index among equal maxima.

#define ARGMAX_THREADS 256

template <typename T>
__device__ void argmax(const T* hm, float* out_xy, float* out_score, int h, int w) {
    __shared__ float best_v[ARGMAX_THREADS];
    __shared__ int best_i[ARGMAX_THREADS];
    const int map = blockIdx.x, tid = threadIdx.x, len = h * w;
    const T* m = hm + (u64)map * len;
    float bv = __int_as_float(0xff800000);  // -inf
    int bi = len;  // "none yet"; any real index wins
    for (int i = tid; i < len; i += ARGMAX_THREADS) {
        const float v = load_f32(m + i);
        if (v > bv || bi == len) {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    for (int stride = ARGMAX_THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            const float ov = best_v[tid + stride];
            const int oi = best_i[tid + stride];
            const float mv = best_v[tid];
            const int mi = best_i[tid];
            const bool other_valid = oi < len, mine_valid = mi < len;
            if (other_valid && (!mine_valid || ov > mv || (ov == mv && oi < mi))) {
                best_v[tid] = ov;
                best_i[tid] = oi;
            }
        }
        __syncthreads();
    }
    if (tid != 0) return;
    const float score = best_v[0];
    const int idx = best_i[0];
    float x = 0.0f, y = 0.0f;
    if (score > 0.0f) {
        const int px = idx % w, py = idx / w;
        x = (float)px;
        y = (float)py;
        if (1 < px && px < w - 1 && 1 < py && py < h - 1) {
            const float r = load_f32(m + py * w + px + 1), l = load_f32(m + py * w + px - 1);
            const float d = load_f32(m + (py + 1) * w + px), u = load_f32(m + (py - 1) * w + px);
            x += 0.25f * (float)((r > l) - (r < l));
            y += 0.25f * (float)((d > u) - (d < u));
        }
    }
    out_xy[2 * map] = x;
    out_xy[2 * map + 1] = y;
    out_score[map] = score;
}

#define ARGMAX_PARAMS(T) (const T* __restrict__ hm, float* __restrict__ out_xy, float* __restrict__ out_score, int h, int w)
#define ARGMAX_ARGS (hm, out_xy, out_score, h, w)

HRNET_F32_F16(argmax, ARGMAX_THREADS, ARGMAX_PARAMS, ARGMAX_ARGS)
