#ifndef SLIMSPLIT_QCONV_H
#define SLIMSPLIT_QCONV_H

#include <stddef.h>
#include <stdint.h>

/// One int8 convolution (uint8 activations, int8 weights, NHWC), requantized as ONNX
/// QLinearConv is by ONNX Runtime: y = sat(round_half_even(float(Σ(x−x_zp)·w + bias) · mult[c]) + y_zp).
/// Out-of-bounds taps contribute nothing (zero padding in the real domain).
typedef struct {
    int32_t in_h, in_w, in_cs, in_c0;    // input size, channel stride of a pixel, first channel used
    int32_t ci;                          // input channels used
    int32_t out_h, out_w, out_cs, out_c0;
    int32_t co;                          // output channels computed
    int32_t kh, kw, sh, sw, ph, pw, dh, dw;
    const int8_t *wpack;                 // [ceil(co/16)][kh][kw][ceil(ci/4)][16][4], zero-padded
    const int32_t *wsum_tap;             // [kh*kw][co]: Σ over ci of w, per tap
    const int32_t *zp_prefix;            // [(kh+1)*(kw+1)][co]: x_zp · Σ of wsum_tap over taps ky < r, kx < c
    const int32_t *bias;                 // [co]
    const float *mult;                   // [co]: x_scale · w_scale[c] / y_scale
    int32_t x_zp, y_zp;
    const uint8_t *active;               // [out_h*out_w]: 0 = write `background`, NULL = all active
    const uint8_t *background;           // [co]
} slim_qconv_args;

/// Runs with AVX-512 VNNI when the CPU has it; returns 0 (and does nothing) otherwise, so the
/// caller runs its portable path. Reads up to 3 bytes past a pixel's last used channel: input
/// buffers need 4 bytes of slack at their end.
int slim_qconv_u8s8_vnni(const slim_qconv_args *a, const uint8_t *x, uint8_t *y);

/// 1 if `slim_qconv_u8s8_vnni` runs on this CPU.
int slim_qconv_vnni_available(void);

#endif

/// One float convolution (NHWC), weights packed per tap and input channel in chunks of 16
/// output channels (`wpack[((tap · ci) + i) · chunks · 16 + o]`), bias padded the same way.
/// act: 0 none, 1 relu, 2 relu6. Outputs whose `active` flag is 0 get `background`.
typedef struct {
    int32_t in_h, in_w, in_cs, in_c0, ci;
    int32_t out_h, out_w, out_cs, out_c0, co;
    int32_t kh, kw, sh, sw, ph, pw, dh, dw;
    const float *wpack;
    const float *bias;
    int32_t act;
    const uint8_t *active;
    const float *background;
} slim_fconv_args;

/// Runs with AVX-512 (FMA, 16 lanes) when the CPU has it; returns 0 otherwise.
int slim_fconv_avx512(const slim_fconv_args *a, const float *x, float *y);

/// 1 if `slim_fconv_avx512` runs on this CPU.
int slim_fconv_available(void);
