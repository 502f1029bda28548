// hepascope GPU preprocessing: the CUDA twin of stream/preprocess.py, bit for bit.
//
// Per view of a captured uint8 frame: crop, grey (OpenCV's fixed-point BGR2GRAY), AND the
// sector mask, Gaussian blur (OpenCV's bit-exact 8-bit path: Q8 kernel, 16-bit rows,
// round), CLAHE (per-tile histogram, clip, redistribute, LUT, bilinear between tile LUTs),
// mask again, INTER_AREA resize to the model's input, (x/255 - mean)/std written as float
// or half at (C, H, W) straight into the engine's input buffer.
//
// Exactness: every float operation OpenCV does in float32 is written here with the _rn
// intrinsics in OpenCV's order, so nvcc cannot contract a multiply-add into an FMA (which
// rounds once instead of twice); integer paths are exact by construction. Tables that
// OpenCV computes in double on the host (area weights, Gaussian taps, CLAHE clip limit)
// are computed on the host by engines/gpu_preprocess.py and passed in.
//
// Launch shapes (set by gpu_preprocess.py): 2-D kernels use 32x8 blocks over (x, y);
// hs_clahe_lut uses one 256-thread block per tile (it relies on blockDim.x == 256).

#include <cuda_fp16.h>
#include <stdint.h>

namespace {

// OpenCV borderInterpolate for BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), looping for
// offsets beyond one reflection as OpenCV does.
__device__ __forceinline__ int reflect101(int p, int n) {
    if (n == 1) return 0;
    while ((unsigned)p >= (unsigned)n) p = p < 0 ? -p : 2 * n - 2 - p;
    return p;
}

__device__ __forceinline__ int clamp_u8(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

// One grey level of the view at (x, y): crop offset, BGR(A) -> grey, AND mask.
struct FrameSrc {
    const uint8_t* frame;
    int pitch, cn, x0, y0;
    const uint8_t* mask;  // view-sized, pitch vw; null when there is no sector
    int vw, cb, cg, cr, shift;

    __device__ __forceinline__ int operator()(int x, int y) const {
        const uint8_t* p = frame + (size_t)(y0 + y) * pitch + (size_t)(x0 + x) * cn;
        int v = cn == 1 ? (int)p[0]
                        : (p[0] * cb + p[1] * cg + p[2] * cr + (1 << (shift - 1))) >> shift;
        if (mask) v &= mask[(size_t)y * vw + x];
        return v;
    }
};

// A view-sized uint8 plane (the blur/CLAHE scratch).
struct PlaneSrc {
    const uint8_t* plane;
    int vw;

    __device__ __forceinline__ int operator()(int x, int y) const {
        return plane[(size_t)y * vw + x];
    }
};

// cv::resize INTER_AREA for one output pixel, as uint8.
//   mode 0: OpenCV's resizeArea_ (non-integer scale): per output row, the source rows'
//           horizontal float sums (buf += src * alpha, in table order) are weighted by
//           beta and summed (sum += beta * buf), then rounded half-to-even.
//   mode 1: resizeAreaFast_ (integer scale sx x sy): integer block sum * (1.f / area).
//   mode 2: the 2x2 special case of mode 1: (sum + 2) >> 2.
// Tables: entries xofs[dx] .. xofs[dx + 1] of (xsi, xw) are dx's source columns and
// weights in ascending order; likewise y.
template <class Src>
__device__ __forceinline__ int area_pixel(const Src& src, int dx, int dy, int mode, int sx,
                                          int sy, float inv_area, const int* xofs,
                                          const int* xsi, const float* xw, const int* yofs,
                                          const int* ysi, const float* yw) {
    if (mode == 0) {
        float sum = 0.0f;
        const int x_begin = xofs[dx], x_end = xofs[dx + 1];
        for (int j = yofs[dy]; j < yofs[dy + 1]; ++j) {
            const int y = ysi[j];
            float buf = 0.0f;
            for (int k = x_begin; k < x_end; ++k)
                buf = __fadd_rn(buf, __fmul_rn((float)src(xsi[k], y), xw[k]));
            sum = __fadd_rn(sum, __fmul_rn(yw[j], buf));
        }
        return clamp_u8(__float2int_rn(sum));
    }
    int total = 0;
    for (int y = dy * sy; y < (dy + 1) * sy; ++y)
        for (int x = dx * sx; x < (dx + 1) * sx; ++x) total += src(x, y);
    if (mode == 2) return (total + 2) >> 2;
    return clamp_u8(__float2int_rn(__fmul_rn((float)total, inv_area)));
}

// (v * (1/255) - mean) * (1/std) in float32, as numpy does it, replicated to `channels`
// planes of oh x ow floats (or halves) at out.
__device__ __forceinline__ void store_normalised(void* out, int half, int channels, int ow,
                                                 int oh, int dx, int dy, int v, float k255,
                                                 float mean, float inv_std) {
    const float f = __fmul_rn(__fsub_rn(__fmul_rn((float)v, k255), mean), inv_std);
    const size_t plane = (size_t)ow * oh, i = (size_t)dy * ow + dx;
    if (half) {
        const __half h = __float2half_rn(f);
        for (int c = 0; c < channels; ++c) ((__half*)out)[c * plane + i] = h;
    } else {
        for (int c = 0; c < channels; ++c) ((float*)out)[c * plane + i] = f;
    }
}

}  // namespace

extern "C" {

// Fused one-pass path (no blur, no CLAHE): frame -> crop, grey, mask, area, normalise.
__global__ void hs_area_frame(const uint8_t* __restrict__ frame, int pitch, int cn, int x0,
                              int y0, const uint8_t* __restrict__ mask, int vw, int cb,
                              int cg, int cr, int shift, int mode, int sx, int sy,
                              float inv_area, const int* __restrict__ xofs,
                              const int* __restrict__ xsi, const float* __restrict__ xw,
                              const int* __restrict__ yofs, const int* __restrict__ ysi,
                              const float* __restrict__ yw, void* out, int ow, int oh,
                              int channels, int half, float k255, float mean, float inv_std) {
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= ow || dy >= oh) return;
    const FrameSrc src{frame, pitch, cn, x0, y0, mask, vw, cb, cg, cr, shift};
    const int v = area_pixel(src, dx, dy, mode, sx, sy, inv_area, xofs, xsi, xw, yofs, ysi, yw);
    store_normalised(out, half, channels, ow, oh, dx, dy, v, k255, mean, inv_std);
}

// Last step of the blur/CLAHE path: view-sized uint8 plane -> area, normalise.
__global__ void hs_area_plane(const uint8_t* __restrict__ plane, int vw, int mode, int sx,
                              int sy, float inv_area, const int* __restrict__ xofs,
                              const int* __restrict__ xsi, const float* __restrict__ xw,
                              const int* __restrict__ yofs, const int* __restrict__ ysi,
                              const float* __restrict__ yw, void* out, int ow, int oh,
                              int channels, int half, float k255, float mean, float inv_std) {
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= ow || dy >= oh) return;
    const PlaneSrc src{plane, vw};
    const int v = area_pixel(src, dx, dy, mode, sx, sy, inv_area, xofs, xsi, xw, yofs, ysi, yw);
    store_normalised(out, half, channels, ow, oh, dx, dy, v, k255, mean, inv_std);
}

// First step of the blur/CLAHE path: frame -> crop, grey, mask into a vw x vh plane.
__global__ void hs_grey_mask(const uint8_t* __restrict__ frame, int pitch, int cn, int x0,
                             int y0, const uint8_t* __restrict__ mask, int vw, int vh, int cb,
                             int cg, int cr, int shift, uint8_t* __restrict__ dst) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= vw || y >= vh) return;
    const FrameSrc src{frame, pitch, cn, x0, y0, mask, vw, cb, cg, cr, shift};
    dst[(size_t)y * vw + x] = (uint8_t)src(x, y);
}

// Gaussian, horizontal pass: sum of Q8 taps * pixels (<= 255 * 256, fits 16 bits), as
// OpenCV's ufixedpoint16 row buffer; reflect101 at the view's left and right edges.
__global__ void hs_gauss_rows(const uint8_t* __restrict__ src, int vw, int vh,
                              const int* __restrict__ taps, int ksize,
                              uint16_t* __restrict__ dst) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= vw || y >= vh) return;
    const uint8_t* row = src + (size_t)y * vw;
    const int r = ksize / 2;
    unsigned acc = 0;
    for (int j = 0; j < ksize; ++j) acc += (unsigned)taps[j] * row[reflect101(x - r + j, vw)];
    dst[(size_t)y * vw + x] = (uint16_t)acc;
}

// Gaussian, vertical pass: sum of Q8 taps * Q8 rows (Q16), rounded half up to uint8 as
// OpenCV's ufixedpoint32 -> uint8 cast; reflect101 at the top and bottom.
__global__ void hs_gauss_cols(const uint16_t* __restrict__ src, int vw, int vh,
                              const int* __restrict__ taps, int ksize,
                              uint8_t* __restrict__ dst) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= vw || y >= vh) return;
    const int r = ksize / 2;
    unsigned acc = 0;
    for (int j = 0; j < ksize; ++j)
        acc += (unsigned)taps[j] * src[(size_t)reflect101(y - r + j, vh) * vw + x];
    dst[(size_t)y * vw + x] = (uint8_t)((acc + (1u << 15)) >> 16);
}

// CLAHE, one 256-thread block per tile (blockIdx = tile x, y): histogram of the tile of
// the image padded to tile multiples (reflect101 at the bottom and right, as OpenCV's
// copyMakeBorder), clipped at clip_limit (0: no clipping), the clipped count spread as
// OpenCV does (clipped / 256 to every bin, the remainder to every step-th bin from 0),
// then LUT = round(cumulative count * lut_scale). Thread t owns bin t.
__global__ void hs_clahe_lut(const uint8_t* __restrict__ src, int vw, int vh, int tiles_x,
                             int tile_w, int tile_h, int clip_limit, float lut_scale,
                             uint8_t* __restrict__ lut) {
    __shared__ int hist[256];
    __shared__ int warp_total[8];
    __shared__ int warp_prefix[8];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    hist[t] = 0;
    __syncthreads();
    const int x0 = blockIdx.x * tile_w, y0 = blockIdx.y * tile_h, n = tile_w * tile_h;
    for (int i = t; i < n; i += 256) {
        const int x = reflect101(x0 + i % tile_w, vw), y = reflect101(y0 + i / tile_w, vh);
        atomicAdd(&hist[src[(size_t)y * vw + x]], 1);
    }
    __syncthreads();
    int h = hist[t];
    if (clip_limit > 0) {
        int excess = h > clip_limit ? h - clip_limit : 0;
        h -= excess;
        for (int off = 16; off > 0; off >>= 1) excess += __shfl_xor_sync(0xffffffffu, excess, off);
        if (lane == 0) warp_total[warp] = excess;
        __syncthreads();
        int clipped = 0;
        for (int w = 0; w < 8; ++w) clipped += warp_total[w];
        const int batch = clipped / 256, residual = clipped - batch * 256;
        h += batch;
        if (residual > 0) {
            const int step = max(256 / residual, 1);
            if (t % step == 0 && t / step < residual) h += 1;
        }
    }
    // inclusive prefix sum over the 256 bins: within warps, then warp totals
    int cum = h;
    for (int off = 1; off < 32; off <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, cum, off);
        if (lane >= off) cum += up;
    }
    if (lane == 31) warp_prefix[warp] = cum;
    __syncthreads();
    for (int w = 0; w < warp; ++w) cum += warp_prefix[w];
    const int tile = blockIdx.y * tiles_x + blockIdx.x;
    lut[(size_t)tile * 256 + t] = (uint8_t)clamp_u8(__float2int_rn(__fmul_rn((float)cum, lut_scale)));
}

// CLAHE, apply in place: bilinear interpolation between the four nearest tiles' LUTs in
// OpenCV's float order, then AND the mask (null: none).
__global__ void hs_clahe_apply(uint8_t* __restrict__ plane, int vw, int vh,
                               const uint8_t* __restrict__ lut, int tiles_x, int tiles_y,
                               float inv_tw, float inv_th, const uint8_t* __restrict__ mask) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= vw || y >= vh) return;
    const float txf = __fsub_rn(__fmul_rn((float)x, inv_tw), 0.5f);
    int tx1 = (int)floorf(txf);
    const float xa = __fsub_rn(txf, (float)tx1), xa1 = __fsub_rn(1.0f, xa);
    int tx2 = min(tx1 + 1, tiles_x - 1);
    tx1 = max(tx1, 0);
    const float tyf = __fsub_rn(__fmul_rn((float)y, inv_th), 0.5f);
    int ty1 = (int)floorf(tyf);
    const float ya = __fsub_rn(tyf, (float)ty1), ya1 = __fsub_rn(1.0f, ya);
    int ty2 = min(ty1 + 1, tiles_y - 1);
    ty1 = max(ty1, 0);
    const size_t i = (size_t)y * vw + x;
    const int v = plane[i];
    const uint8_t* l1 = lut + (size_t)ty1 * tiles_x * 256;
    const uint8_t* l2 = lut + (size_t)ty2 * tiles_x * 256;
    const float top = __fadd_rn(__fmul_rn((float)l1[tx1 * 256 + v], xa1),
                                __fmul_rn((float)l1[tx2 * 256 + v], xa));
    const float bottom = __fadd_rn(__fmul_rn((float)l2[tx1 * 256 + v], xa1),
                                   __fmul_rn((float)l2[tx2 * 256 + v], xa));
    int out = clamp_u8(__float2int_rn(__fadd_rn(__fmul_rn(top, ya1), __fmul_rn(bottom, ya))));
    if (mask) out &= mask[i];
    plane[i] = (uint8_t)out;
}

}  // extern "C"
