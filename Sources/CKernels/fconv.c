// Float convolution on every path from one source: the kernel is written with the compiler's
// 16-lane vector type and compiled once per path with that path's target attribute, so the same
// lines become 4 × SSE2 (portable x86-64), 4 × NEON fmla (aarch64), 2 × AVX2 FMA or 1 × AVX-512
// FMA per vector. Paths differ only in how many blocks of 16 output channels they keep in
// registers at once (CD_NBMAX).
#include "SlimKernels.h"
#include <string.h>

typedef float v16f __attribute__((vector_size(64), aligned(4)));

#define AI __attribute__((always_inline)) static inline

typedef int32_t v16i __attribute__((vector_size(64)));

/// One block's results: activation (vector compares and masks, as GCC and clang both take them),
/// then only the channels that exist.
AI void fstore(const slim_fconv_args *a, const v16f *acc, int c0, float *dst) {
    const int n = a->co - c0 < 16 ? a->co - c0 : 16;
    v16i v = (v16i)*acc;
    if (a->act >= 1) v &= (v16i)(*acc > 0);
    if (a->act == 2) {
        const v16f six = {6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6};
        const v16i over = (v16i)((v16f)v > six);
        v = (v & ~over) | ((v16i)six & over);
    }
    if (n == 16) {
        *(v16f *)(dst + c0) = (v16f)v;
    } else {
        memcpy(dst + c0, &v, sizeof(float) * (size_t)n);
    }
}

/// The (tap, input channel) steps of one output pixel, flattened: step k reads the input at the
/// pixel's first tap + xo[k] and the weights at + wo[k].
#define SLIM_FCONV_MAX_STEPS 4096
typedef struct {
    int nk;
    int32_t xo[SLIM_FCONV_MAX_STEPS], wo[SLIM_FCONV_MAX_STEPS];
} slim_fctx;

/// NPIX output pixels × NB blocks of 16 channels in registers; per step each weight vector is
/// loaded once and serves NPIX pixels.
#define DEFINE_FKERNEL(NAME, ATTR, NPIX)                                                                   \
    ATTR AI void NAME(const slim_fconv_args *a, const slim_fctx *c, const float *const xq[NPIX], int blk, const int NB, \
                      float *const dq[NPIX]) {                                                             \
        v16f acc[NPIX][4];                                                                                 \
        for (int p = 0; p < NPIX; p++)                                                                     \
            for (int b = 0; b < NB; b++) acc[p][b] = *(const v16f *)(a->bias + (size_t)(blk + b) * 16);    \
        const float *wb = a->wpack + (size_t)blk * 16;                                                     \
        for (int k = 0; k < c->nk; k++) {                                                                  \
            const float *w = wb + c->wo[k];                                                                \
            const int xo = c->xo[k];                                                                       \
            for (int b = 0; b < NB; b++) {                                                                 \
                const v16f wv = *(const v16f *)(w + b * 16);                                               \
                _Pragma("GCC unroll 8") for (int p = 0; p < NPIX; p++) acc[p][b] += xq[p][xo] * wv;        \
            }                                                                                              \
        }                                                                                                  \
        for (int p = 0; p < NPIX; p++)                                                                     \
            for (int b = 0; b < NB; b++) fstore(a, &acc[p][b], (blk + b) * 16, dq[p]);                     \
    }

#define CD_ARGS slim_fconv_args
#define CD_CTX slim_fctx
#define CD_YT float
#define CD_XT float

// x86-64's baseline has 16 xmm registers: 2 pixels × 4 vectors of accumulators leave room for the
// weights and the broadcast input (4 pixels spill); aarch64's 32 NEON registers hold 4 pixels.
#if defined(__x86_64__)
#define FPORT_NPIX 2
#else
#define FPORT_NPIX 4
#endif
DEFINE_FKERNEL(fkernel_portable, , FPORT_NPIX)
#define CD_FN fdrive_portable
#define CD_ATTR
#define CD_KERNEL fkernel_portable
#define CD_NBMAX 1
#define CD_NPIX FPORT_NPIX
#include "internal/conv_driver.h"

#if defined(__x86_64__)
#define FAVX2 __attribute__((target("avx2,fma")))
#define FAVX512 __attribute__((target("avx512f")))
#ifndef FAVX2_NPIX
#define FAVX2_NPIX 6
#endif
DEFINE_FKERNEL(fkernel_avx2, FAVX2, FAVX2_NPIX)
#define CD_FN fdrive_avx2
#define CD_ATTR FAVX2
#define CD_KERNEL fkernel_avx2
#define CD_NBMAX 1
#define CD_NPIX FAVX2_NPIX
#define CD_XT float
#include "internal/conv_driver.h"

DEFINE_FKERNEL(fkernel_avx512, FAVX512, 4)
#define CD_FN fdrive_avx512
#define CD_ATTR FAVX512
#define CD_KERNEL fkernel_avx512
#define CD_NBMAX 4
#define CD_XT float
#include "internal/conv_driver.h"
#endif

void slim_fconv_pack(const float *w, int co, int ci, int taps, float *wpack) {
    const size_t chunks = (size_t)(co + 15) / 16;
    memset(wpack, 0, sizeof(float) * (size_t)taps * ci * chunks * 16);
    for (int o = 0; o < co; o++)
        for (int i = 0; i < ci; i++)
            for (int t = 0; t < taps; t++)
                wpack[((size_t)t * ci + i) * chunks * 16 + o] = w[((size_t)o * ci + i) * taps + t];
}

int slim_fconv(const slim_fconv_args *a, const float *x, float *y) {
    if (!slim_path_supported(a->path)) return SLIM_EUNSUPPORTED;
    const int taps = a->kh * a->kw;
    if (taps < 1 || taps > 64 || a->co < 1 || a->ci < 1 || a->out_h < 1 || a->out_w < 1 || a->sh < 1 || a->sw < 1 ||
        a->dh < 1 || a->dw < 1 || (a->out_h - 1) * a->sh + (a->kh - 1) * a->dh >= a->in_h ||
        (a->out_w - 1) * a->sw + (a->kw - 1) * a->dw >= a->in_w)
        return SLIM_ESHAPE;
    const int chunks = (a->co + 15) / 16;
    if (taps * a->ci > SLIM_FCONV_MAX_STEPS) return SLIM_ESHAPE;
    slim_fctx c;
    c.nk = 0;
    for (int ky = 0; ky < a->kh; ky++)
        for (int kx = 0; kx < a->kw; kx++)
            for (int i = 0; i < a->ci; i++, c.nk++) {
                c.xo[c.nk] = (ky * a->dh * a->in_w + kx * a->dw) * a->in_cs + i;
                c.wo[c.nk] = ((ky * a->kw + kx) * a->ci + i) * chunks * 16;
            }
    // The kernels read the input through in_cs-strided pixels starting at in_c0.
    const float *xs = x + a->in_c0;
    switch (a->path) {
#if defined(__x86_64__)
    case SLIM_PATH_AVX2:
    case SLIM_PATH_AVX_VNNI: fdrive_avx2(a, &c, xs, a->in_cs, a->in_w, y); return SLIM_OK;
    case SLIM_PATH_AVX512: fdrive_avx512(a, &c, xs, a->in_cs, a->in_w, y); return SLIM_OK;
#endif
    default: fdrive_portable(a, &c, xs, a->in_cs, a->in_w, y); return SLIM_OK;
    }
}
