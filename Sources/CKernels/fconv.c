// Float convolution with AVX-512 FMA; the portable path is FloatConv2d's Swift SIMD code.
#include "SlimQConv.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f"), always_inline)) static inline
#define AVX512_FN __attribute__((target("avx512f")))

AVX512 __m512 activate(__m512 v, int act) {
    if (act >= 1) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == 2) v = _mm512_min_ps(v, _mm512_set1_ps(6.0f));
    return v;
}

#define DEFINE_FPIXEL(NB)                                                                               \
    AVX512 void fpixel_##NB(const slim_fconv_args *a, const float *x, int c, int chunks, int iy0, int ix0, \
                            int k0y, int k1y, int k0x, int k1x, float *dst) {                           \
        __m512 acc[NB];                                                                                 \
        for (int b = 0; b < NB; b++) acc[b] = _mm512_loadu_ps(a->bias + (size_t)(c + b) * 16);         \
        for (int ky = k0y; ky < k1y; ky++) {                                                            \
            for (int kx = k0x; kx < k1x; kx++) {                                                        \
                const float *xp = x + ((size_t)(iy0 + ky * a->dh) * a->in_w + (ix0 + kx * a->dw)) * a->in_cs + a->in_c0; \
                const float *wp = a->wpack + ((size_t)(ky * a->kw + kx) * a->ci * chunks + c) * 16;     \
                for (int i = 0; i < a->ci; i++) {                                                       \
                    __m512 xv = _mm512_set1_ps(xp[i]);                                                  \
                    for (int b = 0; b < NB; b++) acc[b] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(wp + b * 16), acc[b]); \
                    wp += (size_t)chunks * 16;                                                          \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        for (int b = 0; b < NB; b++) {                                                                  \
            int o = (c + b) * 16, n = a->co - o < 16 ? a->co - o : 16;                                  \
            _mm512_mask_storeu_ps(dst + o, (__mmask16)((1u << n) - 1u), activate(acc[b], a->act));      \
        }                                                                                               \
    }
// Four horizontally adjacent interior pixels × NB chunks: each weight vector serves four pixels.
#define DEFINE_FQUAD(NB)                                                                                \
    AVX512 void fquad_##NB(const slim_fconv_args *a, const float *x, int c, int chunks, int iy0, int ix0, float *dst) { \
        __m512 acc[4][NB];                                                                              \
        const size_t pstep = (size_t)a->sw * a->in_cs;                                                  \
        for (int p = 0; p < 4; p++)                                                                     \
            for (int b = 0; b < NB; b++) acc[p][b] = _mm512_loadu_ps(a->bias + (size_t)(c + b) * 16);  \
        for (int ky = 0; ky < a->kh; ky++) {                                                            \
            for (int kx = 0; kx < a->kw; kx++) {                                                        \
                const float *xp = x + ((size_t)(iy0 + ky * a->dh) * a->in_w + (ix0 + kx * a->dw)) * a->in_cs + a->in_c0; \
                const float *wp = a->wpack + ((size_t)(ky * a->kw + kx) * a->ci * chunks + c) * 16;     \
                for (int i = 0; i < a->ci; i++) {                                                       \
                    __m512 w[NB];                                                                       \
                    for (int b = 0; b < NB; b++) w[b] = _mm512_loadu_ps(wp + b * 16);                   \
                    for (int p = 0; p < 4; p++) {                                                       \
                        __m512 xv = _mm512_set1_ps(xp[p * pstep + i]);                                  \
                        for (int b = 0; b < NB; b++) acc[p][b] = _mm512_fmadd_ps(xv, w[b], acc[p][b]);  \
                    }                                                                                   \
                    wp += (size_t)chunks * 16;                                                          \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        for (int p = 0; p < 4; p++)                                                                     \
            for (int b = 0; b < NB; b++) {                                                              \
                int o = (c + b) * 16, n = a->co - o < 16 ? a->co - o : 16;                              \
                _mm512_mask_storeu_ps(dst + (size_t)p * a->out_cs + o, (__mmask16)((1u << n) - 1u), activate(acc[p][b], a->act)); \
            }                                                                                           \
    }
DEFINE_FQUAD(1)
DEFINE_FQUAD(2)
DEFINE_FQUAD(3)
DEFINE_FQUAD(4)

DEFINE_FPIXEL(1)
DEFINE_FPIXEL(2)
DEFINE_FPIXEL(3)
DEFINE_FPIXEL(4)

int slim_fconv_available(void) {
    static int ok = -1;
    if (ok < 0) { __builtin_cpu_init(); ok = __builtin_cpu_supports("avx512f"); }
    return ok;
}

AVX512_FN int slim_fconv_avx512(const slim_fconv_args *a, const float *x, float *y) {
    if (!slim_fconv_available()) return 0;
    const int chunks = (a->co + 15) / 16;
    for (int oy = 0; oy < a->out_h; oy++) {
        const int iy0 = oy * a->sh - a->ph;
        int k0y = 0, k1y = a->kh;
        while (k0y < k1y && iy0 + k0y * a->dh < 0) k0y++;
        while (k1y > k0y && iy0 + (k1y - 1) * a->dh >= a->in_h) k1y--;
        int oxa = 0, oxb = a->out_w;
        while (oxa < oxb && oxa * a->sw - a->pw < 0) oxa++;
        while (oxb > oxa && (oxb - 1) * a->sw - a->pw + (a->kw - 1) * a->dw >= a->in_w) oxb--;
        const int rowInterior = k0y == 0 && k1y == a->kh;
        for (int ox = 0; ox < a->out_w; ox++) {
            float *dst = y + ((size_t)oy * a->out_w + ox) * a->out_cs + a->out_c0;
            const uint8_t *act = a->active ? a->active + (size_t)oy * a->out_w + ox : NULL;
            if (act && !act[0]) {
                memcpy(dst, a->background, sizeof(float) * (size_t)a->co);
                continue;
            }
            const int ix0 = ox * a->sw - a->pw;
            if (rowInterior && ox >= oxa && ox + 4 <= oxb && (!act || (act[1] && act[2] && act[3]))) {
                for (int c = 0; c < chunks; c += 4) {
                    switch (chunks - c < 4 ? chunks - c : 4) {
                    case 4: fquad_4(a, x, c, chunks, iy0, ix0, dst); break;
                    case 3: fquad_3(a, x, c, chunks, iy0, ix0, dst); break;
                    case 2: fquad_2(a, x, c, chunks, iy0, ix0, dst); break;
                    default: fquad_1(a, x, c, chunks, iy0, ix0, dst); break;
                    }
                }
                ox += 3;
                continue;
            }
            int k0x = 0, k1x = a->kw;
            while (k0x < k1x && ix0 + k0x * a->dw < 0) k0x++;
            while (k1x > k0x && ix0 + (k1x - 1) * a->dw >= a->in_w) k1x--;
            for (int c = 0; c < chunks; c += 4) {
                switch (chunks - c < 4 ? chunks - c : 4) {
                case 4: fpixel_4(a, x, c, chunks, iy0, ix0, k0y, k1y, k0x, k1x, dst); break;
                case 3: fpixel_3(a, x, c, chunks, iy0, ix0, k0y, k1y, k0x, k1x, dst); break;
                case 2: fpixel_2(a, x, c, chunks, iy0, ix0, k0y, k1y, k0x, k1x, dst); break;
                default: fpixel_1(a, x, c, chunks, iy0, ix0, k0y, k1y, k0x, k1x, dst); break;
                }
            }
        }
    }
    return 1;
}
#else
int slim_fconv_available(void) { return 0; }
int slim_fconv_avx512(const slim_fconv_args *a, const float *x, float *y) { (void)a; (void)x; (void)y; return 0; }
#endif
