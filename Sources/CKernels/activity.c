// Activity of sparse BEV grids (see SlimKernels.h). They run once per layer and frame, so they must
// cost little next to the convolution they save: 4-lane vectors (GCC/Clang vector extensions: SSE2
// on any x86-64, NEON on aarch64) where a loop would not vectorize by itself, plain loops elsewhere.
#include "SlimKernels.h"
#include <string.h>

typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));

static inline uint32_t bits(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b << 1;  // drops the sign: −0 is empty too
}

static inline u32x4 load_u32x4(const float *p) {
    u32x4 v;
    memcpy(&v, p, 16);
    return v;
}

/// Whether any of a cell's c floats (c a multiple of 4) is nonzero (−0 counts as zero).
static inline int any_nonzero4(const float *x, int c) {
    u32x4 m = load_u32x4(x);
    for (int ch = 4; ch < c; ch += 4) m |= load_u32x4(x + ch);
    m <<= 1;
    return (m[0] | m[1] | m[2] | m[3]) != 0;
}

#if defined(__SSE2__)
#include <emmintrin.h>

/// The BEV grid's 8 channels, four cells per step: each cell's two halves OR'd, compared with zero,
/// packed to bytes, and one movemask gives the 4 × 4 lanes.
static int mark_active8_sse2(const float *x, int cells, uint8_t *active) {
    const __m128i zero = _mm_setzero_si128();
    int i = 0;
    for (; i + 4 <= cells; i += 4, x += 32) {
        __m128i v[4];
        for (int k = 0; k < 4; k++) {
            const __m128i a = _mm_or_si128(_mm_loadu_si128((const __m128i *)(x + 8 * k)), _mm_loadu_si128((const __m128i *)(x + 8 * k + 4)));
            v[k] = _mm_cmpeq_epi32(_mm_slli_epi32(a, 1), zero);  // all ones where a lane is ±0
        }
        const int m = _mm_movemask_epi8(_mm_packs_epi16(_mm_packs_epi32(v[0], v[1]), _mm_packs_epi32(v[2], v[3])));
        for (int k = 0; k < 4; k++) active[i + k] = ((m >> (4 * k)) & 0xf) != 0xf;
    }
    return i;
}
#endif

void slim_mark_active_f32(const float *x, int cells, int c, uint8_t *active) {
#if defined(__SSE2__)
    if (c == 8) {
        const int done = mark_active8_sse2(x, cells, active);
        x += (size_t)done * 8;
        active += done;
        cells -= done;
    }
#endif
    if (c % 4 == 0) {
        for (int i = 0; i < cells; i++, x += c) active[i] = (uint8_t)any_nonzero4(x, c);
        return;
    }
    for (int i = 0; i < cells; i++, x += c) {
        uint32_t any = 0;
        for (int ch = 0; ch < c; ch++) any |= bits(x[ch]);
        active[i] = any != 0;
    }
}

void slim_mark_active_u8(const uint8_t *x, int cells, int c, uint8_t background, uint8_t *active) {
    for (int i = 0; i < cells; i++, x += c) {
        uint8_t any = 0;
        for (int ch = 0; ch < c; ch++) any |= x[ch] ^ background;
        active[i] = any != 0;
    }
}

// QuantizeLinear of one value: x / scale, clamped to [lo, hi] (NaN becomes lo: never an undefined
// conversion), rounded half to even by adding and subtracting 1.5·2^23 (as MLAS does), plus zp.
#define QMAGIC 12582912.0f

static inline void quantize_cell(const float *x, int c, float scale, float lo, float hi, float zp, uint8_t *q) {
    for (int ch = 0; ch < c; ch++) {
        float v = x[ch] / scale;
        v = v > lo ? v : lo;
        v = v < hi ? v : hi;
        q[ch] = (uint8_t)((v + QMAGIC) - QMAGIC + zp);
    }
}

/// quantize_cell on four lanes, the same operations in the same order (bit-identical results).
static inline void quantize4(const float *x, f32x4 scale, f32x4 lo, f32x4 hi, f32x4 zp, uint8_t *q) {
    f32x4 v;
    memcpy(&v, x, 16);
    v = v / scale;
    i32x4 m = v > lo;  // false for NaN: lo
    v = (f32x4)((m & (i32x4)v) | (~m & (i32x4)lo));
    m = v < hi;
    v = (f32x4)((m & (i32x4)v) | (~m & (i32x4)hi));
    const f32x4 magic = {QMAGIC, QMAGIC, QMAGIC, QMAGIC};
    v = (v + magic) - magic + zp;
    const i32x4 r = __builtin_convertvector(v, i32x4);  // integral, in [0, 255]
    for (int k = 0; k < 4; k++) q[k] = (uint8_t)r[k];
}

void slim_quantize_cells(const float *x, int cells, int c, float scale, int32_t zp, uint8_t *q, uint8_t *active) {
    const float fzp = (float)zp, lo = -fzp, hi = 255.0f - fzp;
    // Most cells of a BEV grid are empty: mark them all, write the zero point everywhere, then
    // quantize the occupied cells alone.
    slim_mark_active_f32(x, cells, c, active);
    memset(q, (uint8_t)zp, (size_t)cells * (size_t)c);
    if (c % 4 == 0) {
        const f32x4 vs = {scale, scale, scale, scale}, vlo = {lo, lo, lo, lo}, vhi = {hi, hi, hi, hi},
                    vzp = {fzp, fzp, fzp, fzp};
        for (int i = 0; i < cells; i++) {
            if (!active[i]) continue;
            for (int ch = 0; ch < c; ch += 4)
                quantize4(x + (size_t)i * c + ch, vs, vlo, vhi, vzp, q + (size_t)i * c + ch);
        }
        return;
    }
    for (int i = 0; i < cells; i++)
        if (active[i]) quantize_cell(x + (size_t)i * c, c, scale, lo, hi, fzp, q + (size_t)i * c);
}

/// One row of the dilation's first pass: dst[ox] = OR of the kw taps of output column ox, 1 where
/// a tap reaches the padding.
static void dilate_row(const uint8_t *src, int in_w, uint8_t *dst, int out_w, int kw, int sw, int pw, int dw) {
    // Interior columns [lo, hi): every tap inside the row.
    int lo = (pw + sw - 1) / sw;
    int hi = (in_w - 1 - (kw - 1) * dw + pw) / sw + 1;
    if (in_w - 1 - (kw - 1) * dw + pw < 0) hi = 0;
    if (lo > out_w) lo = out_w;
    if (hi > out_w) hi = out_w;
    if (hi < lo) hi = lo;
    memset(dst, 1, (size_t)lo);
    memset(dst + hi, 1, (size_t)(out_w - hi));
    uint8_t any = 0;
    for (int i = 0; i < in_w; i++) any |= src[i];
    if (!any) {  // an empty row (most of a sparse grid): nothing to OR
        memset(dst + lo, 0, (size_t)(hi - lo));
        return;
    }
    if (sw == 1 && dw == 1) {
        const uint8_t *s = src - pw;
        memcpy(dst + lo, s + lo, (size_t)(hi - lo));
        for (int kx = 1; kx < kw; kx++)
            for (int ox = lo; ox < hi; ox++) dst[ox] |= s[ox + kx];
        return;
    }
    if (kw == 3 && sw == 2 && dw == 1) {  // the usual downsampling layer, in constant strides
        const uint8_t *s = src - pw;
        for (int ox = lo; ox < hi; ox++) dst[ox] = s[2 * ox] | s[2 * ox + 1] | s[2 * ox + 2];
        return;
    }
    for (int ox = lo; ox < hi; ox++) {
        const uint8_t *s = src + ox * sw - pw;
        uint8_t a = 0;
        for (int kx = 0; kx < kw; kx++) a |= s[kx * dw];
        dst[ox] = a;
    }
}

void slim_dilate_activity(const uint8_t *in, int in_h, int in_w, uint8_t *out, int out_h, int out_w, int kh, int kw,
                          int sh, int sw, int ph, int pw, int dh, int dw, uint8_t *rows) {
    for (int iy = 0; iy < in_h; iy++) dilate_row(in + (size_t)iy * in_w, in_w, rows + (size_t)iy * out_w, out_w, kw, sw, pw, dw);
    for (int oy = 0; oy < out_h; oy++) {
        uint8_t *dst = out + (size_t)oy * out_w;
        const int iy0 = oy * sh - ph;
        if (iy0 < 0 || iy0 + (kh - 1) * dh >= in_h) { memset(dst, 1, (size_t)out_w); continue; }
        memcpy(dst, rows + (size_t)iy0 * out_w, (size_t)out_w);
        for (int ky = 1; ky < kh; ky++) {
            const uint8_t *r = rows + (size_t)(iy0 + ky * dh) * out_w;
            for (int ox = 0; ox < out_w; ox++) dst[ox] |= r[ox];
        }
    }
}
