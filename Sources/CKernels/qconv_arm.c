// Int8 convolution kernels for aarch64: ARMv8.0 NEON (int16 pairs, smlal by lane; Cortex-A72,
// Raspberry Pi 4) and ARMv8.2 dot product (sdot by lane on bytes flipped to int8; Cortex-A76/A78,
// Raspberry Pi 5, Jetson Orin). The dot-product kernel has its own target attribute, so one
// binary runs on both and enters it only where HWCAP has ASIMDDP.
#include "internal/qconv_internal.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define AI __attribute__((always_inline)) static inline
#define DOT_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))

/// 16 channels in four int32x4 vectors → requantized bytes (vcvtnq: round half to even).
AI void store16(const slim_qconv_args *a, const slim_qctx *c, const int32x4_t acc[4], int c0, uint8_t *dst) {
    const int n = a->co - c0 < 16 ? a->co - c0 : 16;
    if (a->y_f32) {
        int32_t t[16];
        for (int k = 0; k < 4; k++) vst1q_s32(t + 4 * k, acc[k]);
        slim_store_f32(a, c, t, c0, dst);
        return;
    }
    int32_t badj[16];
    float mult[16];
    memcpy(badj, c->badj + c0, sizeof(int32_t) * (size_t)n);
    memcpy(mult, a->mult + c0, sizeof(float) * (size_t)n);
    for (int i = n; i < 16; i++) { badj[i] = 0; mult[i] = 0; }
    int16x4_t h[4];
    for (int k = 0; k < 4; k++) {
        float32x4_t f = vmulq_f32(vcvtq_f32_s32(vaddq_s32(acc[k], vld1q_s32(badj + 4 * k))), vld1q_f32(mult + 4 * k));
        f = vminq_f32(vmaxq_f32(f, vdupq_n_f32(-512.0f)), vdupq_n_f32(512.0f));
        h[k] = vqmovn_s32(vaddq_s32(vcvtnq_s32_f32(f), vdupq_n_s32(a->y_zp)));
    }
    const uint8x16_t u = vcombine_u8(vqmovun_s16(vcombine_s16(h[0], h[1])), vqmovun_s16(vcombine_s16(h[2], h[3])));
    if (n == 16) {
        vst1q_u8(dst + c0, u);
    } else {
        uint8_t tmp[16];
        vst1q_u8(tmp, u);
        memcpy(dst + c0, tmp, (size_t)n);
    }
}

// ---- ARMv8.0: int16 pairs, 8 input channels per load, smlal by lane into 4 × int32x4 ----
#define SMLAL_PAIR(J)                                                                                 \
    do {                                                                                              \
        const int16x8x2_t lo = vld2q_s16(w + (J) * 32), hi = vld2q_s16(w + (J) * 32 + 16);            \
        for (int p = 0; p < 4; p++) {                                                                \
            acc[p][0] = vmlal_laneq_s16(acc[p][0], vget_low_s16(lo.val[0]), xv[p], 2 * (J));          \
            acc[p][0] = vmlal_laneq_s16(acc[p][0], vget_low_s16(lo.val[1]), xv[p], 2 * (J) + 1);      \
            acc[p][1] = vmlal_high_laneq_s16(acc[p][1], lo.val[0], xv[p], 2 * (J));                   \
            acc[p][1] = vmlal_high_laneq_s16(acc[p][1], lo.val[1], xv[p], 2 * (J) + 1);               \
            acc[p][2] = vmlal_laneq_s16(acc[p][2], vget_low_s16(hi.val[0]), xv[p], 2 * (J));          \
            acc[p][2] = vmlal_laneq_s16(acc[p][2], vget_low_s16(hi.val[1]), xv[p], 2 * (J) + 1);      \
            acc[p][3] = vmlal_high_laneq_s16(acc[p][3], hi.val[0], xv[p], 2 * (J));                   \
            acc[p][3] = vmlal_high_laneq_s16(acc[p][3], hi.val[1], xv[p], 2 * (J) + 1);               \
        }                                                                                             \
    } while (0)

AI void kernel_neon(const slim_qconv_args *a, const slim_qctx *c, const int16_t *const xq[4], int blk, const int NB,
                    uint8_t *const dq[4]) {
    (void)NB;
    int32x4_t acc[4][4];
    for (int p = 0; p < 4; p++)
        for (int k = 0; k < 4; k++) acc[p][k] = vdupq_n_s32(0);
    const int16_t *wb = a->pairs + (size_t)blk * c->blk_stride;
    for (int k = 0; k < c->nk; k++) {
        const int16_t *w = wb + c->wo[k];
        int16x8_t xv[4];
        for (int p = 0; p < 4; p++) xv[p] = vld1q_s16(xq[p] + c->xo[k]);
        SMLAL_PAIR(0);
        SMLAL_PAIR(1);
        SMLAL_PAIR(2);
        SMLAL_PAIR(3);
    }
    for (int p = 0; p < 4; p++) store16(a, c, acc[p], blk * 16, dq[p]);
}

#define CD_ARGS slim_qconv_args
#define CD_CTX slim_qctx
#define CD_YT uint8_t
#define CD_FN drive_neon
#define CD_ATTR
#define CD_XT int16_t
#define CD_KERNEL kernel_neon
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_neon(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_neon(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}

// ---- ARMv8.2 dot product: 16 input bytes per load, sdot by lane (4 channels) into 4 × int32x4 ----
#define SDOT_GROUP(G)                                                                                 \
    do {                                                                                              \
        const int8x16_t w0 = vld1q_s8(w + (G) * 64), w1 = vld1q_s8(w + (G) * 64 + 16);                \
        const int8x16_t w2 = vld1q_s8(w + (G) * 64 + 32), w3 = vld1q_s8(w + (G) * 64 + 48);           \
        for (int p = 0; p < 4; p++) {                                                                 \
            acc[p][0] = vdotq_laneq_s32(acc[p][0], w0, xv[p], (G));                                   \
            acc[p][1] = vdotq_laneq_s32(acc[p][1], w1, xv[p], (G));                                   \
            acc[p][2] = vdotq_laneq_s32(acc[p][2], w2, xv[p], (G));                                   \
            acc[p][3] = vdotq_laneq_s32(acc[p][3], w3, xv[p], (G));                                   \
        }                                                                                             \
    } while (0)

DOT_TARGET AI void kernel_neon_dot(const slim_qconv_args *a, const slim_qctx *c, const int8_t *const xq[4], int blk,
                                   const int NB, uint8_t *const dq[4]) {
    (void)NB;
    int32x4_t acc[4][4];
    for (int p = 0; p < 4; p++)
        for (int k = 0; k < 4; k++) acc[p][k] = vdupq_n_s32(0);
    const int8_t *wb = a->dot4 + (size_t)blk * c->blk_stride;
    for (int k = 0; k < c->nk; k++) {
        const int8_t *w = wb + c->wo[k];
        int8x16_t xv[4];
        for (int p = 0; p < 4; p++) xv[p] = vld1q_s8(xq[p] + c->xo[k]);
        SDOT_GROUP(0);
        SDOT_GROUP(1);
        SDOT_GROUP(2);
        SDOT_GROUP(3);
    }
    for (int p = 0; p < 4; p++) store16(a, c, acc[p], blk * 16, dq[p]);
}

#define CD_FN drive_neon_dot
#define CD_ATTR DOT_TARGET
#define CD_XT int8_t
#define CD_KERNEL kernel_neon_dot
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_neon_dot(const slim_qconv_args *a, const slim_qctx *c, const int8_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_neon_dot(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}
#endif
