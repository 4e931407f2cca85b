// Activity of sparse BEV grids (see SlimKernels.h). Plain loops the compiler vectorizes; they run
// once per layer and frame, so they must cost little next to the convolution they save.
#include "SlimKernels.h"
#include <string.h>

static inline uint32_t bits(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b << 1;  // drops the sign: −0 is empty too
}

void slim_mark_active_f32(const float *x, int cells, int c, uint8_t *active) {
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

static inline void quantize_cell(const float *x, int c, float scale, float lo, float hi, float zp, uint8_t *q) {
    const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds half to even, as MLAS does
    for (int ch = 0; ch < c; ch++) {
        float v = x[ch] / scale;
        v = v > lo ? v : lo;  // NaN becomes lo: never an undefined conversion
        v = v < hi ? v : hi;
        q[ch] = (uint8_t)((v + magic) - magic + zp);
    }
}

static inline void quantize_cells_n(const float *x, int cells, const int c, float scale, int32_t zp, uint8_t *q, uint8_t *active) {
    const float fzp = (float)zp, lo = -fzp, hi = 255.0f - fzp;
    for (int i = 0; i < cells; i++, x += c, q += c) {
        uint32_t any = 0;
        for (int ch = 0; ch < c; ch++) any |= bits(x[ch]);
        active[i] = any != 0;
        if (!any) {
            for (int ch = 0; ch < c; ch++) q[ch] = (uint8_t)zp;
        } else {
            quantize_cell(x, c, scale, lo, hi, fzp, q);
        }
    }
}

void slim_quantize_cells(const float *x, int cells, int c, float scale, int32_t zp, uint8_t *q, uint8_t *active) {
    if (c == 8) quantize_cells_n(x, cells, 8, scale, zp, q, active);  // the BEV grid's width, unrolled
    else quantize_cells_n(x, cells, c, scale, zp, q, active);
}

void slim_dilate_activity(const uint8_t *in, int in_h, int in_w, uint8_t *out, int out_h, int out_w, int kh, int kw,
                          int sh, int sw, int ph, int pw, int dh, int dw, uint8_t *rows) {
    for (int iy = 0; iy < in_h; iy++) {
        const uint8_t *src = in + (size_t)iy * in_w;
        uint8_t *dst = rows + (size_t)iy * out_w;
        for (int ox = 0; ox < out_w; ox++) {
            const int ix0 = ox * sw - pw;
            if (ix0 < 0 || ix0 + (kw - 1) * dw >= in_w) { dst[ox] = 1; continue; }
            uint8_t a = 0;
            for (int kx = 0; kx < kw; kx++) a |= src[ix0 + kx * dw];
            dst[ox] = a;
        }
    }
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
