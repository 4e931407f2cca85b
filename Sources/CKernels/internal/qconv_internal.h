// Shared by the int8 convolution paths (qconv.c, qconv_x86.c, qconv_arm.c); not public.
#ifndef SLIMSPLIT_QCONV_INTERNAL_H
#define SLIMSPLIT_QCONV_INTERNAL_H

#include "../include/SlimKernels.h"
#include <math.h>
#include <stddef.h>
#include <string.h>

#define SLIM_QCONV_MAX_CO 1024
#define SLIM_CONV_MAX_STEPS 4096  // taps × input-channel units of one convolution

/// What a kernel needs besides the arguments: the bias with the zero-point correction folded in
/// (bias − pad_zp·Σw for the dot4 paths, bias for the pairs paths), and the packed layout's strides.
typedef struct {
    int32_t badj[SLIM_QCONV_MAX_CO + 16];
    size_t blk_stride;  // packed weight elements per block of 16 output channels
    // The (tap, input-channel unit) steps of one output pixel, flattened: unit k reads the input
    // at the pixel's first tap + xo[k] and the block's weights at + wo[k]. A unit is what one
    // kernel step consumes: 4 channels (dot4), a pair, 8 (neon) or 16 (neon-dot) channels.
    int nk;
    int32_t xo[SLIM_CONV_MAX_STEPS], wo[SLIM_CONV_MAX_STEPS];
    // avx2 only: `flags` marks the padded pixels holding a byte above 127 (vpmaddubsw multiplies
    // exactly only up to 127), `tpo` the taps' pixel offsets.
    const uint8_t *flags;
    int ntaps;
    int32_t tpo[64];
} slim_qctx;

static inline int slim_round_up(int v, int m) { return (v + m - 1) / m * m; }

/// One output value, requantized as ONNX Runtime does; the float is clamped first so that the
/// conversion to int is defined (it only matters far outside [0, 255]).
static inline uint8_t slim_requant(int32_t acc, int32_t badj, float mult, int32_t y_zp) {
    float f = (float)(acc + badj) * mult;
    f = f < -512.0f ? -512.0f : f > 512.0f ? 512.0f : f;
    int32_t r = (int32_t)nearbyintf(f) + y_zp;
    return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
}

/// Float output (a->y_f32, see SlimKernels.h): 16 accumulators of one pixel from channel c0,
/// float(acc + badj) · mult, ReLU where y_f32 is 2, into the float storage at `dst`. The x86
/// paths do the same in vectors (the same conversion and product: the same bits).
static inline void slim_store_f32(const slim_qconv_args *a, const slim_qctx *c, const int32_t acc[16], int c0, uint8_t *dst) {
    const int n = a->co - c0 < 16 ? a->co - c0 : 16;
    float v[16];
    for (int o = 0; o < n; o++) {
        const float f = (float)(acc[o] + c->badj[c0 + o]) * a->mult[c0 + o];
        v[o] = a->y_f32 == 2 && !(f > 0.0f) ? 0.0f : f;
    }
    memcpy(dst + sizeof(float) * (size_t)c0, v, sizeof(float) * (size_t)n);
}

// The int8 drivers' output element and background (conv_driver.h): bytes, or floats.
#define CD_YSIZE(a) ((a)->y_f32 ? sizeof(float) : (size_t)1)
#define CD_BG(a) ((a)->y_f32 ? (const void *)(a)->background_f32 : (const void *)(a)->background)

int slim_qconv_run_portable(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y);
#if defined(__x86_64__)
int slim_qconv_run_avx2(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y);
int slim_qconv_run_avx2_pairs(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y);
int slim_qconv_run_avx_vnni(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y);
int slim_qconv_run_avx512(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y);
#endif
#if defined(__aarch64__)
int slim_qconv_run_neon(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y);
int slim_qconv_run_neon_dot(const slim_qconv_args *a, const slim_qctx *c, const int8_t *xs, int cpad, int padded_w, uint8_t *y);
#endif

#endif
