// Int8 convolution with AVX-512 VNNI (vpdpbusd: four u8×s8 products summed into each int32
// lane, exactly). Compiled with per-function target attributes: the default build runs on any
// x86-64 and takes the portable Swift path where VNNI is missing.
#include "SlimQConv.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline
#define VNNI_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

VNNI void requant_store(const slim_qconv_args *a, __m512i acc, int c, const int32_t *corr, uint8_t *dst) {
    int n = a->co - c < 16 ? a->co - c : 16;
    __mmask16 m = (__mmask16)((1u << n) - 1u);
    __m512i bias = _mm512_maskz_loadu_epi32(m, a->bias + c);
    __m512i cz = _mm512_maskz_loadu_epi32(m, corr);
    __m512i v = _mm512_sub_epi32(_mm512_add_epi32(acc, bias), cz);
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_maskz_loadu_ps(m, a->mult + c));
    __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(a->y_zp));  // round half even
    r = _mm512_max_epi32(r, _mm512_setzero_si512());
    _mm_mask_storeu_epi8(dst, m, _mm512_cvtusepi32_epi8(r));
}

// NB output-channel blocks of 16 for one output pixel, taps kh in [k0y,k1y), kw in [k0x,k1x).
// With few blocks, U partial sums per block (taken in turn) hide vpdpbusd's latency.
#define DEFINE_PIXEL(NB, U)                                                                           \
    VNNI void pixel_##NB(const slim_qconv_args *a, const uint8_t *x, int cb, int iy0, int ix0,         \
                         int k0y, int k1y, int k0x, int k1x, __m512i *out) {                           \
        const int ci4 = (a->ci + 3) / 4;                                                               \
        const size_t bstride = (size_t)a->kh * a->kw * ci4 * 64;                                       \
        __m512i acc[NB][U];                                                                            \
        for (int b = 0; b < NB; b++)                                                                   \
            for (int u = 0; u < U; u++) acc[b][u] = _mm512_setzero_si512();                            \
        int k = 0;                                                                                     \
        for (int ky = k0y; ky < k1y; ky++) {                                                           \
            for (int kx = k0x; kx < k1x; kx++) {                                                       \
                const uint8_t *xp = x + ((size_t)(iy0 + ky * a->dh) * a->in_w + (ix0 + kx * a->dw)) * a->in_cs + a->in_c0; \
                const int8_t *wp = a->wpack + (size_t)cb * bstride + ((size_t)ky * a->kw + kx) * ci4 * 64; \
                int c4 = 0;                                                                            \
                for (; c4 + U <= ci4; c4 += U) {                                                       \
                    for (int u = 0; u < U; u++) {                                                      \
                        int32_t xv4;                                                                   \
                        memcpy(&xv4, xp + 4 * (c4 + u), 4);                                            \
                        __m512i xv = _mm512_set1_epi32(xv4);                                           \
                        for (int b = 0; b < NB; b++)                                                   \
                            acc[b][u] = _mm512_dpbusd_epi32(acc[b][u], xv, _mm512_loadu_si512(wp + b * bstride + (c4 + u) * 64)); \
                    }                                                                                  \
                }                                                                                      \
                for (; c4 < ci4; c4++, k++) {                                                          \
                    int32_t xv4;                                                                       \
                    memcpy(&xv4, xp + 4 * c4, 4);                                                      \
                    __m512i xv = _mm512_set1_epi32(xv4);                                               \
                    for (int b = 0; b < NB; b++)                                                       \
                        acc[b][k % U] = _mm512_dpbusd_epi32(acc[b][k % U], xv, _mm512_loadu_si512(wp + b * bstride + c4 * 64)); \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int b = 0; b < NB; b++) {                                                                 \
            __m512i s = acc[b][0];                                                                     \
            for (int u = 1; u < U; u++) s = _mm512_add_epi32(s, acc[b][u]);                            \
            out[b] = s;                                                                                \
        }                                                                                              \
    }
// Four horizontally adjacent interior output pixels × NB blocks: each weight vector loaded once
// serves four pixels (a 4×NB register tile), so the loop is bound by vpdpbusd, not by loads.
#define DEFINE_QUAD(NB)                                                                               \
    VNNI void quad_##NB(const slim_qconv_args *a, const uint8_t *x, int cb, int iy0, int ix0, __m512i out[4][4]) { \
        const int ci4 = (a->ci + 3) / 4;                                                               \
        const size_t bstride = (size_t)a->kh * a->kw * ci4 * 64;                                       \
        const size_t pstep = (size_t)a->sw * a->in_cs;                                                 \
        __m512i acc[4][NB];                                                                            \
        for (int p = 0; p < 4; p++)                                                                    \
            for (int b = 0; b < NB; b++) acc[p][b] = _mm512_setzero_si512();                           \
        for (int ky = 0; ky < a->kh; ky++) {                                                           \
            for (int kx = 0; kx < a->kw; kx++) {                                                       \
                const uint8_t *xp = x + ((size_t)(iy0 + ky * a->dh) * a->in_w + (ix0 + kx * a->dw)) * a->in_cs + a->in_c0; \
                const int8_t *wp = a->wpack + (size_t)cb * bstride + ((size_t)ky * a->kw + kx) * ci4 * 64; \
                for (int c4 = 0; c4 < ci4; c4++) {                                                     \
                    __m512i w[NB];                                                                     \
                    for (int b = 0; b < NB; b++) w[b] = _mm512_loadu_si512(wp + b * bstride + c4 * 64); \
                    for (int p = 0; p < 4; p++) {                                                      \
                        int32_t xv4;                                                                   \
                        memcpy(&xv4, xp + p * pstep + 4 * c4, 4);                                      \
                        __m512i xv = _mm512_set1_epi32(xv4);                                           \
                        for (int b = 0; b < NB; b++) acc[p][b] = _mm512_dpbusd_epi32(acc[p][b], xv, w[b]); \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int p = 0; p < 4; p++)                                                                    \
            for (int b = 0; b < NB; b++) out[p][b] = acc[p][b];                                        \
    }
DEFINE_QUAD(1)
DEFINE_QUAD(2)
DEFINE_QUAD(3)
DEFINE_QUAD(4)

DEFINE_PIXEL(1, 4)
DEFINE_PIXEL(2, 2)
DEFINE_PIXEL(3, 1)
DEFINE_PIXEL(4, 1)

VNNI_FN int slim_qconv_u8s8_vnni(const slim_qconv_args *a, const uint8_t *x, uint8_t *y) {
    if (!slim_qconv_vnni_available()) return 0;
    const int nblocks = (a->co + 15) / 16;
    const int taps = a->kh * a->kw;
    int32_t corr_full[1024 + 16];
    int32_t corr[1024 + 16];
    if (a->co > 1024) return 0;
    (void)taps;
    memcpy(corr_full, a->zp_prefix + (size_t)(a->kh * (a->kw + 1) + a->kw) * a->co, sizeof(int32_t) * (size_t)a->co);
    for (int oy = 0; oy < a->out_h; oy++) {
        const int iy0 = oy * a->sh - a->ph;
        int k0y = 0, k1y = a->kh;
        while (k0y < k1y && iy0 + k0y * a->dh < 0) k0y++;
        while (k1y > k0y && iy0 + (k1y - 1) * a->dh >= a->in_h) k1y--;
        // Columns whose taps all fall inside the input: [oxa, oxb).
        int oxa = 0, oxb = a->out_w;
        while (oxa < oxb && oxa * a->sw - a->pw < 0) oxa++;
        while (oxb > oxa && (oxb - 1) * a->sw - a->pw + (a->kw - 1) * a->dw >= a->in_w) oxb--;
        const int rowInterior = k0y == 0 && k1y == a->kh;
        for (int ox = 0; ox < a->out_w; ox++) {
            uint8_t *dst = y + ((size_t)oy * a->out_w + ox) * a->out_cs + a->out_c0;
            const uint8_t *act = a->active ? a->active + (size_t)oy * a->out_w + ox : NULL;
            if (act && !act[0]) {
                memcpy(dst, a->background, (size_t)a->co);
                continue;
            }
            const int ix0 = ox * a->sw - a->pw;
            if (rowInterior && ox >= oxa && ox + 4 <= oxb && (!act || (act[1] && act[2] && act[3]))) {
                __m512i q[4][4];
                for (int cb = 0; cb < nblocks; cb += 4) {
                    int nb = nblocks - cb < 4 ? nblocks - cb : 4;
                    switch (nb) {
                    case 4: quad_4(a, x, cb, iy0, ix0, q); break;
                    case 3: quad_3(a, x, cb, iy0, ix0, q); break;
                    case 2: quad_2(a, x, cb, iy0, ix0, q); break;
                    default: quad_1(a, x, cb, iy0, ix0, q); break;
                    }
                    for (int p = 0; p < 4; p++)
                        for (int b = 0; b < nb; b++) {
                            int c = (cb + b) * 16;
                            requant_store(a, q[p][b], c, corr_full + c, dst + (size_t)p * a->out_cs + c);
                        }
                }
                ox += 3;
                continue;
            }
            int k0x = 0, k1x = a->kw;
            while (k0x < k1x && ix0 + k0x * a->dw < 0) k0x++;
            while (k1x > k0x && ix0 + (k1x - 1) * a->dw >= a->in_w) k1x--;
            const int32_t *cz = corr_full;
            if (k0y != 0 || k1y != a->kh || k0x != 0 || k1x != a->kw) {
                // Rectangle [k0y,k1y)×[k0x,k1x) of the tap sums, from the prefix table.
                const int pw1 = a->kw + 1;
                const int32_t *p11 = a->zp_prefix + (size_t)(k1y * pw1 + k1x) * a->co;
                const int32_t *p01 = a->zp_prefix + (size_t)(k0y * pw1 + k1x) * a->co;
                const int32_t *p10 = a->zp_prefix + (size_t)(k1y * pw1 + k0x) * a->co;
                const int32_t *p00 = a->zp_prefix + (size_t)(k0y * pw1 + k0x) * a->co;
                for (int c = 0; c < a->co; c++) corr[c] = p11[c] - p01[c] - p10[c] + p00[c];
                cz = corr;
            }
            __m512i acc[4];
            for (int cb = 0; cb < nblocks; cb += 4) {
                int nb = nblocks - cb < 4 ? nblocks - cb : 4;
                switch (nb) {
                case 4: pixel_4(a, x, cb, iy0, ix0, k0y, k1y, k0x, k1x, acc); break;
                case 3: pixel_3(a, x, cb, iy0, ix0, k0y, k1y, k0x, k1x, acc); break;
                case 2: pixel_2(a, x, cb, iy0, ix0, k0y, k1y, k0x, k1x, acc); break;
                default: pixel_1(a, x, cb, iy0, ix0, k0y, k1y, k0x, k1x, acc); break;
                }
                for (int b = 0; b < nb; b++) {
                    int c = (cb + b) * 16;
                    requant_store(a, acc[b], c, cz + c, dst + c);
                }
            }
        }
    }
    return 1;
}

int slim_qconv_vnni_available(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return cached;
}
#else
int slim_qconv_u8s8_vnni(const slim_qconv_args *a, const uint8_t *x, uint8_t *y) { (void)a; (void)x; (void)y; return 0; }
int slim_qconv_vnni_available(void) { return 0; }
#endif
