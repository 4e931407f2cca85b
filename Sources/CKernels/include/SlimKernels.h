#ifndef SLIMSPLIT_KERNELS_H
#define SLIMSPLIT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Kernel paths. Each convolution call names the path it runs on; a path the CPU lacks is never
// entered (the call returns SLIM_EUNSUPPORTED instead of faulting on an illegal instruction).
//
//   portable   plain C written for the compiler's vectorizer (SSE2 on x86-64, NEON on aarch64)
//   avx2       x86-64-v3: AVX2 + FMA; int8 by vpmaddwd on 16-bit pairs (exact int32 sums)
//   avx-vnni   avx2, with int8 by 256-bit vpdpbusd (AVX-VNNI: Alder Lake, Sapphire Rapids, Zen 5)
//   avx512     AVX-512F/BW/VL + VNNI: int8 by 512-bit vpdpbusd, float by 16-lane FMA
//   neon       aarch64 ARMv8.0 (Cortex-A72, Raspberry Pi 4): int8 by smlal on 16-bit lanes
//   neon-dot   ARMv8.2 dot product (Cortex-A76/A78, Pi 5, Jetson Orin): int8 by sdot
// ---------------------------------------------------------------------------------------------
enum {
    SLIM_PATH_PORTABLE = 0,
    SLIM_PATH_AVX2 = 1,
    SLIM_PATH_AVX_VNNI = 2,
    SLIM_PATH_AVX512 = 3,
    SLIM_PATH_NEON = 4,
    SLIM_PATH_NEON_DOT = 5,
    SLIM_PATH_COUNT = 6,
};

#define SLIM_OK 0
#define SLIM_EUNSUPPORTED (-1)  // the CPU lacks the path's instructions, or the path is another architecture's
#define SLIM_ESCRATCH (-2)      // the scratch buffer is smaller than slim_qconv_scratch_bytes
#define SLIM_ESHAPE (-3)        // more taps or channels than the kernels take

/// 1 if this CPU (and OS) runs `path`. Checked once per process (CPUID / HWCAP).
int slim_path_supported(int path);
/// The fastest path this CPU runs.
int slim_path_best(void);
/// The CPUs this process may run on (its affinity mask), ascending, at most `max` of them into
/// `cpus`; returns how many (0 where unknown).
int slim_allowed_cpus(int *cpus, int max);
/// Restricts the calling thread to CPU `cpu`: 0, or -1 if refused (or not Linux).
int slim_pin_thread(int cpu);
/// The path's name as `SLIMSPLIT_KERNELS` spells it ("portable", "avx2", …); NULL if out of range.
const char *slim_path_name(int path);

// ---------------------------------------------------------------------------------------------
// Int8 convolution (uint8 activations, int8 weights, NHWC), requantized as ONNX Runtime's
// QLinearConv: y = sat(round_half_even(float(Σ(x−x_zp)·w + bias) · mult[c]) + y_zp). Zero
// padding is in the real domain (a padded tap reads x_zp). Every path computes the same
// integers: the sum is exact in int32 on every path (no saturating 16-bit intermediate).
// One call computes one group; the caller loops over groups.
// ---------------------------------------------------------------------------------------------

/// Packed weights of one group, in both layouts (sizes from slim_qconv_pack_sizes):
/// - dot4 (avx-vnni, avx512, neon-dot): [ceil(co/16)][taps][ci16/4][16][4] int8, ci16 = ci rounded up to 16
/// - pairs (portable, avx2, neon):      [ceil(co/16)][taps][ci8/2][16][2] int16, ci8 = ci rounded up to 8
/// plus `wsum[co]`, Σ of each output channel's weights (for the dot4 zero-point corrections).
void slim_qconv_pack_sizes(int co, int ci, int taps, size_t *dot4_bytes, size_t *pairs_elems);
void slim_qconv_pack(const int8_t *w /* [co][ci][taps] */, int co, int ci, int taps,
                     int8_t *dot4, int16_t *pairs, int32_t *wsum);

typedef struct {
    int32_t path;                        // SLIM_PATH_*
    int32_t in_h, in_w, in_cs, in_c0;    // input size, channel stride of a pixel, first channel used
    int32_t ci;                          // input channels used
    int32_t out_h, out_w, out_cs, out_c0;
    int32_t co;                          // output channels computed
    int32_t kh, kw, sh, sw, ph, pw, dh, dw;
    const int8_t *dot4;                  // slim_qconv_pack's dot4 layout
    const int16_t *pairs;                // slim_qconv_pack's pairs layout
    const int32_t *wsum;                 // [co]
    const int32_t *bias;                 // [co]
    const float *mult;                   // [co]: x_scale · w_scale[c] / y_scale
    int32_t x_zp, y_zp;
    const uint8_t *active;               // [out_h*out_w]: 0 = write `background`, NULL = all active
    const uint8_t *background;           // [co]
    void *scratch;                       // the zero-padded input in the path's format
    size_t scratch_bytes;
    // Float output instead of requantized bytes: 0 = bytes (above); 1 = `y` is float storage and
    // each output is float(Σ(x−x_zp)·w + bias) · mult[c] (mult = x_scale · w_scale[c], y_zp unused);
    // 2 = the same, then ReLU. The sum is the same exact int32 on every path, and the conversion
    // and product round the same everywhere, so the floats are bit-identical across paths. Inactive
    // outputs get `background_f32` ([co]). Out strides still count elements (floats here).
    int32_t y_f32;
    const float *background_f32;
} slim_qconv_args;

/// Bytes of scratch `slim_qconv` needs for these arguments (path, input size, padding, ci).
size_t slim_qconv_scratch_bytes(const slim_qconv_args *a);

/// Runs one group on `a->path`. Returns SLIM_OK, or a negative SLIM_E* and writes nothing.
/// `y` is uint8_t storage, or float storage where `a->y_f32` is set (passed as bytes).
int slim_qconv(const slim_qconv_args *a, const uint8_t *x, uint8_t *y);

// ---------------------------------------------------------------------------------------------
// Float convolution (NHWC) on an input the caller has zero-padded (so every tap is inside).
// Weights of one group packed per tap and input channel in chunks of 16 output channels:
// wpack[((tap · ci) + i) · chunks · 16 + o], bias padded the same way.
// act: 0 none, 1 relu, 2 relu6. Outputs whose `active` flag is 0 get `background`.
// ---------------------------------------------------------------------------------------------
void slim_fconv_pack(const float *w /* [co][ci][taps] */, int co, int ci, int taps, float *wpack);

typedef struct {
    int32_t path;
    int32_t in_h, in_w, in_cs, in_c0, ci;  // the padded input
    int32_t out_h, out_w, out_cs, out_c0, co;
    int32_t kh, kw, sh, sw, dh, dw;
    const float *wpack;
    const float *bias;
    int32_t act;
    const uint8_t *active;
    const float *background;
} slim_fconv_args;

/// Runs one group on `a->path`. Returns SLIM_OK or SLIM_EUNSUPPORTED / SLIM_ESHAPE.
int slim_fconv(const slim_fconv_args *a, const float *x, float *y);

// ---------------------------------------------------------------------------------------------
// Sparse BEV grids: which cells hold anything, and which outputs a convolution must compute.
// ---------------------------------------------------------------------------------------------

/// active[i] = 1 if any of cell i's c floats is nonzero (−0 counts as zero), else 0.
void slim_mark_active_f32(const float *x, int cells, int c, uint8_t *active);
/// active[i] = 1 if any of cell i's c bytes differs from `background`, else 0.
void slim_mark_active_u8(const uint8_t *x, int cells, int c, uint8_t background, uint8_t *active);

/// Quantizes cells as ONNX QuantizeLinear does (x / scale, round half to even, + zp, saturate)
/// and marks their activity; an empty cell (all channels zero) is written as zp without
/// quantizing.
void slim_quantize_cells(const float *x, int cells, int c, float scale, int32_t zp, uint8_t *q, uint8_t *active);

/// The outputs of a convolution whose receptive field holds an active input, or reaches the
/// padding (there the input is 0, not the background): a separable dilation of `in` (in_h ×
/// in_w) into `out` (out_h × out_w), through `rows` (in_h × out_w bytes of scratch).
void slim_dilate_activity(const uint8_t *in, int in_h, int in_w, uint8_t *out, int out_h, int out_w, int kh, int kw,
                          int sh, int sw, int ph, int pw, int dh, int dw, uint8_t *rows);

#endif
