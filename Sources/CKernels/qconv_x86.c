// Int8 convolution kernels for x86-64: AVX2 (int16 pairs, vpmaddwd), AVX-VNNI (256-bit vpdpbusd)
// and AVX-512 VNNI (512-bit vpdpbusd). Each is compiled with its own target attribute, so the
// default build runs on any x86-64 and a path is entered only where cpu.c found its instructions.
#include "internal/qconv_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline
#define AVX2_FN __attribute__((target("avx2,fma")))
#define AVXVNNI __attribute__((target("avx2,fma,avxvnni"), always_inline)) static inline
#define AVXVNNI_FN __attribute__((target("avx2,fma,avxvnni")))
#define A512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline
#define A512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static inline int32_t load32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// ---- requantization of 16 channels held in two 8-lane vectors (AVX2 and AVX-VNNI) ----
AVX2 __m256i requant8(__m256i acc, const int32_t *badj, const float *mult, int n) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i v = _mm256_add_epi32(acc, _mm256_maskload_epi32(badj, m));
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_maskload_ps(mult, m));
    f = _mm256_min_ps(_mm256_max_ps(f, _mm256_set1_ps(-512.0f)), _mm256_set1_ps(512.0f));
    return _mm256_cvtps_epi32(f);  // round half to even (MXCSR default), as ONNX Runtime
}

/// Float output (a->y_f32): float(acc + badj) · mult, ReLU where y_f32 is 2, as slim_store_f32.
AVX2 void store8f(const slim_qconv_args *a, const slim_qctx *c, __m256i acc, int c0, int n, uint8_t *dst) {
    if (n <= 0) return;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, _mm256_maskload_epi32(c->badj + c0, m))),
                             _mm256_maskload_ps(a->mult + c0, m));
    if (a->y_f32 == 2) f = _mm256_max_ps(f, _mm256_setzero_ps());  // −0 and NaN become +0, as the scalar
    _mm256_maskstore_ps((float *)(void *)(dst + sizeof(float) * (size_t)c0), m, f);
}

AVX2 void store16(const slim_qconv_args *a, const slim_qctx *c, __m256i lo, __m256i hi, int c0, uint8_t *dst) {
    const int n = a->co - c0 < 16 ? a->co - c0 : 16;
    if (a->y_f32) {
        store8f(a, c, lo, c0, n, dst);
        store8f(a, c, hi, c0 + 8, n - 8, dst);
        return;
    }
    const __m256i zp = _mm256_set1_epi32(a->y_zp);
    __m256i r0 = _mm256_add_epi32(requant8(lo, c->badj + c0, a->mult + c0, n), zp);
    __m256i r1 = _mm256_add_epi32(requant8(hi, c->badj + c0 + 8, a->mult + c0 + 8, n - 8), zp);
    __m128i s0 = _mm_packs_epi32(_mm256_castsi256_si128(r0), _mm256_extracti128_si256(r0, 1));
    __m128i s1 = _mm_packs_epi32(_mm256_castsi256_si128(r1), _mm256_extracti128_si256(r1, 1));
    __m128i u = _mm_packus_epi16(s0, s1);  // saturates to [0, 255]
    if (n == 16) {
        _mm_storeu_si128((__m128i *)(dst + c0), u);
    } else {
        uint8_t tmp[16];
        _mm_storeu_si128((__m128i *)tmp, u);
        memcpy(dst + c0, tmp, (size_t)n);
    }
}

// ---- The 256-bit tile shared by avx2, its pairs mode and avx-vnni: 4 pixels × 16 output channels
// in eight 8-lane int32 accumulators; STEP(ACC0, ACC1, XPTR) adds one unit of one pixel's input
// channels against the block's two weight halves w0 and w1 (HALF elements apart). ----
#define YMM_TILE(XT, WT, WSRC, HALF, STEP)                                                              \
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00; \
    const WT *wb = a->WSRC + (size_t)blk * c->blk_stride;                                             \
    const XT *x0 = xq[0], *x1 = xq[1], *x2 = xq[2], *x3 = xq[3];                                      \
    for (int k = 0; k < c->nk; k++) {                                                                 \
        const WT *w = wb + c->wo[k];                                                                  \
        const int xo = c->xo[k];                                                                      \
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w), w1 = _mm256_loadu_si256((const __m256i *)(w + (HALF))); \
        STEP(a00, a01, x0 + xo);                                                                      \
        STEP(a10, a11, x1 + xo);                                                                      \
        STEP(a20, a21, x2 + xo);                                                                      \
        STEP(a30, a31, x3 + xo);                                                                      \
    }                                                                                                 \
    store16(a, c, a00, a01, blk * 16, dq[0]);                                                         \
    store16(a, c, a10, a11, blk * 16, dq[1]);                                                         \
    store16(a, c, a20, a21, blk * 16, dq[2]);                                                         \
    store16(a, c, a30, a31, blk * 16, dq[3])

// ---- AVX2: vpmaddubsw on bytes ≤ 127 (a pair of products then stays within int16: 127·128·2 <
// 2^15), vpmaddwd by ones to int32 lanes of four channels, as vpdpbusd would. Pixels whose taps
// hold a byte above 127 (flagged, rare after calibration) take the excess kernel: each byte as
// min(x, 127) + (x − min(x, 127)), both parts ≤ 128, so both products stay exact. ----
#define MADDUBS(ACC0, ACC1, XB)                                                                         \
    do {                                                                                              \
        ACC0 = _mm256_add_epi32(ACC0, _mm256_madd_epi16(_mm256_maddubs_epi16(XB, w0), ones));          \
        ACC1 = _mm256_add_epi32(ACC1, _mm256_madd_epi16(_mm256_maddubs_epi16(XB, w1), ones));          \
    } while (0)
#define MADDUBS_STEP(ACC0, ACC1, XPTR)                                                                  \
    do {                                                                                              \
        const int32_t xv = load32(XPTR);                                                              \
        const __m256i xb = _mm256_set1_epi32(xv);                                                     \
        if (with_excess) {                                                                            \
            const __m256i lo = _mm256_min_epu8(xb, _mm256_set1_epi8(127));                             \
            MADDUBS(ACC0, ACC1, lo);                                                                  \
            if (xv & (int32_t)0x80808080u) MADDUBS(ACC0, ACC1, _mm256_sub_epi8(xb, lo));               \
        } else {                                                                                      \
            MADDUBS(ACC0, ACC1, xb);                                                                  \
        }                                                                                             \
    } while (0)

AVX2 void kernel_avx2_any(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *const xq[4], int blk,
                          uint8_t *const dq[4], const int with_excess) {
    const __m256i ones = _mm256_set1_epi16(1);
    YMM_TILE(uint8_t, int8_t, dot4, 32, MADDUBS_STEP);
}

AVX2 void kernel_avx2(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *const xq[4], int blk, const int NB,
                      uint8_t *const dq[4]) {
    (void)NB;
    kernel_avx2_any(a, c, xq, blk, dq, 0);
}

AVX2 void kernel_avx2_excess(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *const xq[4], int blk, const int NB,
                             uint8_t *const dq[4]) {
    (void)NB;
    kernel_avx2_any(a, c, xq, blk, dq, 1);
}

#define CD_ARGS slim_qconv_args
#define CD_CTX slim_qctx
#define CD_YT uint8_t
#define CD_FN drive_avx2
#define CD_ATTR AVX2_FN
#define CD_XT uint8_t
#define CD_KERNEL kernel_avx2
#define CD_KERNEL_EXCESS kernel_avx2_excess
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_avx2(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_avx2(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}

// ---- AVX2 on int16 pairs (x − x_zp): each vpmaddwd multiplies a broadcast pair of input channels
// by 8 channels' weight pairs, exact for any byte; for layers where many bytes exceed 127. ----
#define PAIRS_STEP(ACC0, ACC1, XPTR)                                                                    \
    do {                                                                                              \
        const __m256i xb = _mm256_set1_epi32(load32(XPTR));                                            \
        ACC0 = _mm256_add_epi32(ACC0, _mm256_madd_epi16(xb, w0));                                      \
        ACC1 = _mm256_add_epi32(ACC1, _mm256_madd_epi16(xb, w1));                                      \
    } while (0)

AVX2 void kernel_avx2_pairs(const slim_qconv_args *a, const slim_qctx *c, const int16_t *const xq[4], int blk, const int NB,
                            uint8_t *const dq[4]) {
    (void)NB;
    YMM_TILE(int16_t, int16_t, pairs, 16, PAIRS_STEP);
}

#define CD_FN drive_avx2_pairs
#define CD_ATTR AVX2_FN
#define CD_XT int16_t
#define CD_KERNEL kernel_avx2_pairs
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_avx2_pairs(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_avx2_pairs(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}

// ---- AVX-VNNI: 256-bit vpdpbusd, four uint8×int8 products per lane; 16 channels = 2 vectors ----
#define VNNI_STEP(ACC0, ACC1, XPTR)                                                                     \
    do {                                                                                              \
        const __m256i xb = _mm256_set1_epi32(load32(XPTR));                                            \
        ACC0 = _mm256_dpbusd_avx_epi32(ACC0, xb, w0);                                                  \
        ACC1 = _mm256_dpbusd_avx_epi32(ACC1, xb, w1);                                                  \
    } while (0)

AVXVNNI void kernel_avx_vnni(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *const xq[4], int blk, const int NB,
                             uint8_t *const dq[4]) {
    (void)NB;
    YMM_TILE(uint8_t, int8_t, dot4, 32, VNNI_STEP);
}

#define CD_FN drive_avx_vnni
#define CD_ATTR AVXVNNI_FN
#define CD_XT uint8_t
#define CD_KERNEL kernel_avx_vnni
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_avx_vnni(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_avx_vnni(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}

// ---- AVX-512 VNNI: one 512-bit vector = 16 channels; 4 pixels × up to 4 blocks in registers ----
A512 void store512(const slim_qconv_args *a, const slim_qctx *c, __m512i acc, int c0, uint8_t *dst) {
    const int n = a->co - c0 < 16 ? a->co - c0 : 16;
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    __m512i v = _mm512_add_epi32(acc, _mm512_maskz_loadu_epi32(m, c->badj + c0));
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_maskz_loadu_ps(m, a->mult + c0));
    if (a->y_f32) {  // float output, as slim_store_f32 (max with +0 turns −0 and NaN into +0)
        if (a->y_f32 == 2) f = _mm512_max_ps(f, _mm512_setzero_ps());
        _mm512_mask_storeu_ps((float *)(void *)(dst + sizeof(float) * (size_t)c0), m, f);
        return;
    }
    f = _mm512_min_ps(_mm512_max_ps(f, _mm512_set1_ps(-512.0f)), _mm512_set1_ps(512.0f));
    __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(a->y_zp));
    r = _mm512_max_epi32(r, _mm512_setzero_si512());
    _mm_mask_storeu_epi8(dst + c0, m, _mm512_cvtusepi32_epi8(r));
}

A512 void kernel_avx512(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *const xq[4], int blk, const int NB,
                        uint8_t *const dq[4]) {
    __m512i acc[4][4];
    for (int p = 0; p < 4; p++)
        for (int b = 0; b < 4; b++) acc[p][b] = _mm512_setzero_si512();
    const int8_t *wb = a->dot4 + (size_t)blk * c->blk_stride;
    for (int k = 0; k < c->nk; k++) {
        const int8_t *w = wb + c->wo[k];
        const int xo = c->xo[k];
        __m512i wv[4];
        for (int b = 0; b < NB; b++) wv[b] = _mm512_loadu_si512(w + b * c->blk_stride);
        for (int p = 0; p < 4; p++) {
            const __m512i xb = _mm512_set1_epi32(load32(xq[p] + xo));
            for (int b = 0; b < NB; b++) acc[p][b] = _mm512_dpbusd_epi32(acc[p][b], xb, wv[b]);
        }
    }
    for (int p = 0; p < 4; p++)
        for (int b = 0; b < NB; b++) store512(a, c, acc[p][b], (blk + b) * 16, dq[p]);
}

#define CD_FN drive_avx512
#define CD_ATTR A512_FN
#define CD_XT uint8_t
#define CD_KERNEL kernel_avx512
#define CD_NBMAX 4
#include "internal/conv_driver.h"

int slim_qconv_run_avx512(const slim_qconv_args *a, const slim_qctx *c, const uint8_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_avx512(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}
#endif
